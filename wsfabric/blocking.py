"""
:func:`connect` for synchronous code (a Django or Flask view, a script): the
cluster's IFabric with blocking methods.

It runs Twisted's reactor in a daemon thread of its own and calls into it
with :func:`twisted.internet.threads.blockingCallFromThread`; each method
blocks the calling thread until its answer (or error) comes. Caveats:

- one reactor per process: do not use it in a process that runs Twisted
  itself (use :func:`wsfabric.remote.connect` there), and connect once per
  process (e.g. at import of your settings or in ``AppConfig.ready``), not
  per request: the connection is shared, and thread-safe;
- with a pre-forking server (gunicorn, uWSGI) connect in each worker
  *after* the fork (threads do not survive ``fork``): lazily, on first use;
- the reactor thread is a daemon: it ends with the process; call
  :meth:`BlockingFabric.close` for a clean disconnect.
"""

from __future__ import annotations

import threading
from typing import Any

from wsfabric.errors import ConfigurationError


class BlockingFabric:
    """
    Every :class:`~wsfabric.interfaces.IFabric` method of a
    :class:`~wsfabric.remote.RemoteFabric`, blocking; plus :meth:`close`.

    :ivar fabric: the Twisted fabric underneath (use it only from the
        reactor thread).
    """

    def __init__(self, fabric: Any, reactor: Any) -> None:
        self.fabric = fabric
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        from twisted.internet.threads import blockingCallFromThread

        method = getattr(self.fabric, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return blockingCallFromThread(self._reactor, method, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call

    def close(self) -> None:
        """
        Disconnect from Redis (the reactor thread keeps running).
        """
        from twisted.internet.threads import blockingCallFromThread

        blockingCallFromThread(self._reactor, self.fabric.close)


_lock = threading.Lock()


def _start_reactor() -> Any:
    from twisted.internet import reactor

    with _lock:
        if not reactor.running:
            if threading.current_thread() is threading.main_thread() and getattr(
                reactor, "_started", False
            ):
                raise ConfigurationError("the Twisted reactor of this process has stopped")
            started = threading.Event()
            reactor.callWhenRunning(started.set)
            thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="wsfabric-reactor",
                daemon=True,
            )
            thread.start()
            if not started.wait(10):
                raise ConfigurationError("the Twisted reactor thread did not start")
    return reactor


def connect(
    redis_url: str,
    namespace: str = "wsfabric",
    cluster_secret: str | bytes | None = None,
    ready_timeout: float = 10.0,
    **options: Any,
) -> BlockingFabric:
    """
    Connect to the cluster (see :func:`wsfabric.remote.connect` for the
    arguments), starting the reactor thread if needed, and wait until ready.

    :return: the fabric, with blocking methods.
    :raises wsfabric.errors.ClusterUnavailable: if Redis cannot be reached
        within ``ready_timeout`` seconds.
    """
    from twisted.internet.threads import blockingCallFromThread

    from wsfabric.remote import connect as remote_connect

    reactor = _start_reactor()

    def start() -> Any:
        fabric = remote_connect(redis_url, namespace, cluster_secret, reactor=reactor, **options)
        return fabric.when_ready(timeout=ready_timeout)

    return BlockingFabric(blockingCallFromThread(reactor, start), reactor)


__all__ = ["BlockingFabric", "connect"]
