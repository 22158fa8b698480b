"""
wsfabric: real-time WebSocket systems on Twisted, from one process to a
cluster of gates and backends.

Applications implement :class:`wsfabric.interfaces.IApplication` and call the
cluster API :class:`wsfabric.interfaces.IFabric`; see the docs/ directory.
"""

__version__ = "0.1.0"


def connect(redis_url: str, namespace: str = "wsfabric", cluster_secret: str | bytes | None = None,
            **options: object) -> object:
    """
    The :class:`~wsfabric.interfaces.IFabric` of a cluster for any Python
    process: see :func:`wsfabric.remote.connect` (asyncio:
    :func:`wsfabric.aio.connect`; blocking code: :func:`wsfabric.blocking.connect`).
    """
    from wsfabric.remote import connect as remote_connect

    return remote_connect(redis_url, namespace, cluster_secret, **options)  # type: ignore[arg-type]
