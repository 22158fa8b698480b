"""
The root service of every wsfabric role, and how a role reports a fatal
start-up problem.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, NoReturn

from twisted.application.service import MultiService


def fatal(message: str) -> NoReturn:
    """
    End the process with a one-line error on standard error and exit status 1.

    Once twistd has started logging, ``sys.stderr`` is redirected into the log;
    the message goes to the original standard error so that the person who
    ran the command sees it as one line, on its own.

    :param message: what is wrong, naming the option or resource.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"wsfabric: error: {message}\n")
    stream.flush()
    raise SystemExit(1)


class NodeService(MultiService):
    """
    The root of a role's service tree.

    A node asked to stop with SIGTERM drains (closes its clients with 1001,
    removes its index entries) and then exits with status 0: that is the
    normal way to stop it, and process supervisors read a non-zero status as a
    crash. twistd would otherwise re-raise SIGTERM after shutting down.

    :param reactor: the reactor the node runs on.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor

    def stopService(self) -> Any:
        """
        Stop the children (in reverse order), and report a SIGTERM stop as a
        clean exit.
        """
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None
        return super().stopService()
