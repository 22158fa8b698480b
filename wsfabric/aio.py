"""
:func:`connect` for asyncio programs: the cluster's IFabric with coroutine
methods.

wsfabric runs on Twisted; from asyncio it runs on Twisted's asyncio reactor
(``AsyncioSelectorReactor``), which drives Twisted on the running asyncio
loop, so no thread is needed. :func:`connect` installs that reactor on the
running loop if no reactor is installed yet; if another reactor is
installed already, it refuses (install ``AsyncioSelectorReactor`` before
anything imports ``twisted.internet.reactor``)::

    import asyncio, wsfabric.aio

    async def main():
        fabric = await wsfabric.aio.connect("redis://127.0.0.1:6379/0",
                                            cluster_secret="...")
        await fabric.send_to_group("lobby", "hello")
        print(await fabric.get_client_count_by_group("lobby"))
        await fabric.close()

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from wsfabric.errors import ConfigurationError


def _reactor(loop: asyncio.AbstractEventLoop) -> Any:
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        asyncioreactor.install(loop)
    from twisted.internet import reactor

    if type(reactor).__name__ != "AsyncioSelectorReactor":
        raise ConfigurationError(
            f"wsfabric.aio needs Twisted's asyncio reactor, but {type(reactor).__name__} "
            "is installed; install twisted.internet.asyncioreactor before importing the reactor"
        )
    if getattr(reactor, "_asyncioEventloop", loop) is not loop:
        raise ConfigurationError("Twisted's asyncio reactor runs on another event loop")
    if not reactor.running:
        # The asyncio loop is already running: mark the reactor running
        # (startup triggers fire) without entering its own loop.
        reactor.startRunning(installSignalHandlers=False)
    return reactor


class AioFabric:
    """
    Every :class:`~wsfabric.interfaces.IFabric` method of a
    :class:`~wsfabric.remote.RemoteFabric`, as a coroutine function; plus
    :meth:`close`.

    :ivar fabric: the Twisted fabric underneath.
    """

    def __init__(self, fabric: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.fabric = fabric
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.fabric, name)
        if not callable(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await method(*args, **kwargs).asFuture(self._loop)

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call

    async def close(self) -> None:
        """
        Disconnect from Redis.
        """
        await self.fabric.close().asFuture(self._loop)


async def connect(
    redis_url: str,
    namespace: str = "wsfabric",
    cluster_secret: str | bytes | None = None,
    **options: Any,
) -> AioFabric:
    """
    Connect to the cluster (see :func:`wsfabric.remote.connect` for the
    arguments) and wait until ready.

    :return: the fabric, with coroutine methods.
    :raises wsfabric.errors.ClusterUnavailable: if Redis cannot be reached.
    """
    from wsfabric.remote import connect as remote_connect

    loop = asyncio.get_running_loop()
    reactor = _reactor(loop)
    fabric = remote_connect(redis_url, namespace, cluster_secret, reactor=reactor, **options)
    try:
        await fabric.when_ready().asFuture(loop)
    except BaseException:
        await fabric.close().asFuture(loop)
        raise
    return AioFabric(fabric, loop)


__all__ = ["AioFabric", "connect"]
