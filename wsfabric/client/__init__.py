"""
The Python client of wsfabric: request/response with timeouts, notifies,
push handlers per route and raw messages, over a WebSocket (``ws://``,
``wss://``) or the raw TCP transport (``tcp://``, ``tls://``), in the JSON or
the protobuf codec, with reconnection and jittered backoff.

- :mod:`wsfabric.client.twisted` (also :class:`Client` and :func:`connect`
  here): the Twisted front, returning Deferreds.
- :mod:`wsfabric.client.aio`: the asyncio front, with coroutines.

See docs/clients.md.
"""

from wsfabric.client._core import Backoff
from wsfabric.client.twisted import Client, connect
from wsfabric.errors import ConnectFailed, NotConnected, RemoteError, RequestTimeout

__all__ = [
    "Backoff",
    "Client",
    "ConnectFailed",
    "NotConnected",
    "RemoteError",
    "RequestTimeout",
    "connect",
]
