# -*- test-case-name: tests.unit.test_client -*-
"""
What both fronts of :mod:`wsfabric.client` make of their arguments: the
target of the connection (from the URL) and the handshake the client sends
(subprotocol, query parameters, headers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from wsfabric.client._codec import ClientCodec
from wsfabric.errors import InvalidArgument

_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_SCHEMES = ("ws", "wss", "tcp", "tls")


@dataclass
class Target:
    """
    Where and how to connect.

    :ivar scheme: ``ws``, ``wss``, ``tcp`` or ``tls``.
    :ivar host: the server's host name or address.
    :ivar port: the server's port.
    :ivar path: the WebSocket path (``/ws`` by default).
    :ivar params: the query parameters (WebSocket) or hello params (TCP).
    :ivar headers: the handshake headers (WebSocket) or hello headers (TCP).
    :ivar subprotocol: the subprotocol asked for, or ``None``.
    """

    scheme: str
    host: str
    port: int
    path: str = "/ws"
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    subprotocol: str | None = None

    @property
    def secure(self) -> bool:
        """
        Whether the connection uses TLS.
        """
        return self.scheme in ("wss", "tls")

    @property
    def websocket(self) -> bool:
        """
        Whether this is a WebSocket (else the raw TCP transport).
        """
        return self.scheme in ("ws", "wss")

    @property
    def url(self) -> str:
        """
        The WebSocket URL with its query string.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?{urlencode(self.params)}" if self.params else ""
        return f"{self.scheme}://{host}:{self.port}{self.path}{query}"

    def hello(self) -> dict[str, object]:
        """
        The hello frame of the raw TCP transport.
        """
        return {
            "subprotocol": self.subprotocol,
            "path": self.path,
            "params": self.params,
            "headers": {name.lower(): value for name, value in self.headers.items()},
        }


def parse_target(
    url: str,
    codec: ClientCodec | None,
    compress_routes: bool = False,
    token: str | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Target:
    """
    :param url: ``ws://host:port/ws``, ``wss://...``, ``tcp://host:port`` or
        ``tls://host:port``.
    :param codec: the codec, whose subprotocol is asked for.
    :param compress_routes: ask for route compression (``routes=1``).
    :param token: a token sent as ``Authorization: Bearer <token>``.
    :param params: more query parameters (hello params on TCP).
    :param headers: more handshake headers (hello headers on TCP).
    :raises InvalidArgument: for a URL that is not one of those forms.
    """
    if not isinstance(url, str):
        raise InvalidArgument(f"the URL must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise InvalidArgument(
            f"unsupported URL {url!r}: use ws://, wss://, tcp:// or tls://"
        )
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        raise InvalidArgument(f"bad port in URL {url!r}") from None
    if not parts.hostname or port is None:
        raise InvalidArgument(f"the URL {url!r} needs a host and a port")
    merged = dict(parse_qsl(parts.query))
    merged.update(params or {})
    if compress_routes:
        merged["routes"] = "1"
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    return Target(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        path=parts.path or "/ws",
        params=merged,
        headers=all_headers,
        subprotocol=codec.subprotocol if codec is not None else None,
    )
