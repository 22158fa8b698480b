"""
The root service of every wsfabric role, and how a role reports a fatal
start-up problem.
"""

from __future__ import annotations

import gc
import signal
import sys
from typing import Any, NoReturn

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import ILogObserver, Logger


class StartupError(Exception):
    """
    A daemonized node cannot start. twistd reports an ``Exception`` raised
    while starting to the command that launched the daemon, which then exits
    with status 1; ``SystemExit`` would leave it waiting.
    """


def fatal(message: str, daemon: bool = False) -> NoReturn:
    """
    End the process with a one-line error on standard error and exit status 1.

    Once twistd has started logging, ``sys.stderr`` is redirected into the log;
    the message goes to the original standard error so that the person who
    ran the command sees it as one line, on its own.

    :param message: what is wrong, naming the option or resource.
    :param daemon: whether twistd has daemonized (then the message travels
        to the launching command as a :class:`StartupError`).
    :raises StartupError: when ``daemon``.
    """
    if daemon:
        raise StartupError(message)
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"wsfabric: error: {message}\n")
    stream.flush()
    raise SystemExit(1)


def daemonized(options: Any) -> bool:
    """
    :param options: a role's parsed options (a twistd subcommand's).
    :return: whether twistd will daemonize (no ``-n``).
    """
    parent = getattr(options, "parent", None)
    return parent is not None and not parent.get("nodaemon")


class NodeService(MultiService):
    """
    The root of a role's service tree.

    Children stop one after another, in the reverse of the order they were
    added, each once the previous one has finished stopping: a gate's last
    client events reach the backends before the backend links close, and the
    links close before the Redis connections do.

    A node asked to stop with SIGTERM drains (closes its clients with 1001,
    removes its index entries) and then exits with status 0: that is the
    normal way to stop it, and process supervisors read a non-zero status as a
    crash. twistd would otherwise re-raise SIGTERM after shutting down.

    :param reactor: the reactor the node runs on.
    """

    _log = Logger()

    #: Makes the log observer twistd should use instead of its text one
    #: (``--log-format json``), or ``None``.
    log_observer_factory: Any = None

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor

    def setServiceParent(self, parent: Any) -> None:  # noqa: N802 (Twisted's name)
        """
        Join ``parent``. When it is twistd's application and a log format was
        chosen, give it the observer: twistd starts logging with it.
        """
        if self.log_observer_factory is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer_factory())
        super().setServiceParent(parent)

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in reverse order, one at a time, and report a
        SIGTERM stop as a clean exit.
        """
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None
        # The process is about to exit: cyclic garbage collection only costs
        # time now. With 10,000 clients it took half of a gate's shutdown
        # (full collections over a million live objects). It is switched
        # back on once stopped, for whoever embeds the service.
        collecting = gc.isenabled()
        gc.disable()
        self.running = 0
        children = list(self)
        children.reverse()
        done: Deferred[None] = Deferred()

        def stop_next(_: object = None) -> None:
            if not children:
                done.callback(None)
                return
            child = children.pop(0)
            stopping = maybeDeferred(child.stopService)
            stopping.addErrback(
                lambda failure: self._log.failure(
                    "{service} failed to stop", failure, service=child
                )
            )
            stopping.addCallback(stop_next)

        stop_next()
        if collecting:
            done.addBoth(_collect_again)
        return done


def _collect_again(result: object) -> object:
    gc.enable()
    return result
