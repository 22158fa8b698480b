# -*- test-case-name: tests.unit.test_client -*-
"""
The part of a :mod:`wsfabric.client` client that both fronts share: the
options, the :class:`~wsfabric.client._core.Session` and the
:class:`~wsfabric.client._core.Connector`. A front adds the transports of its
event loop and the shape of its results (Deferreds or coroutines).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wsfabric.client._codec import codec_named
from wsfabric.client._core import (
    Attempt,
    Backoff,
    Clock,
    Connector,
    Handler,
    Session,
    call_handler,
)
from wsfabric.client._options import Target, parse_target
from wsfabric.errors import InvalidArgument

#: The largest message accepted from the server by default (16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class BaseClient:
    """
    A client of a wsfabric server, without its event loop.

    :param url: ``ws://host:port/ws``, ``wss://...``, ``tcp://host:port`` or
        ``tls://host:port``.
    :param codec: ``"json"`` (the default), ``"proto"``, or ``None`` for raw
        messages only.
    :param compress_routes: ask the server for its route table and send
        route codes instead of names.
    :param token: an authentication token, sent as ``Authorization: Bearer``.
    :param params: more query parameters (TCP: hello params).
    :param headers: more handshake headers (TCP: hello headers).
    :param reconnect: reconnect after the connection is lost, and retry a
        failed first connection.
    :param backoff: the retry delays and the retry limit.
    :param connect_timeout: seconds the first connection may take in all
        (attempts and retries) before connecting fails; ``None``: no bound.
    :param attempt_timeout: seconds one attempt (TCP connect and handshake)
        may take.
    :param max_message_size: the largest message accepted from the server.
    :param ping_interval: seconds between keep-alive pings (``None``: no
        pings); a server that does not answer within ``ping_interval`` is
        considered gone and the connection is dropped.
    :param on_connect: called as ``on_connect(client)`` after each
        connection opens (the first one and every reconnection).
    :param on_disconnect: called as ``on_disconnect(client, code, reason)``
        after each connection is lost.
    """

    def __init__(
        self,
        url: str,
        *,
        codec: str | None = "json",
        compress_routes: bool = False,
        token: str | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        connect_timeout: float | None = 30.0,
        attempt_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ping_interval: float | None = 20.0,
        on_connect: Callable[[Any], Any] | None = None,
        on_disconnect: Callable[[Any, int | None, str], Any] | None = None,
    ) -> None:
        self._codec = codec_named(codec)
        if compress_routes and self._codec is None:
            raise InvalidArgument("compress_routes needs a codec")
        if not max_message_size > 0:
            raise InvalidArgument("max_message_size must be > 0")
        self.target: Target = parse_target(
            url, self._codec, compress_routes, token, params, headers
        )
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self._user_on_connect = on_connect
        self._user_on_disconnect = on_disconnect
        self._session = Session(
            self._codec, self._clock(), compress_routes, invoke=self._invoke, log=self._logger()
        )
        self._connector = Connector(
            self._clock(),
            self._dial,
            self._session,
            backoff=backoff,
            reconnect=reconnect,
            connect_timeout=connect_timeout,
            attempt_timeout=attempt_timeout,
            on_connect=self._on_connect if on_connect else None,
            on_disconnect=self._on_disconnect if on_disconnect else None,
            log=self._logger(),
        )

    # -- what a front provides --------------------------------------------------------

    def _clock(self) -> Clock:
        raise NotImplementedError

    def _dial(self, attempt: Attempt) -> Callable[[], None]:
        raise NotImplementedError

    def _invoke(self, handler: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return call_handler(handler, *args)

    def _logger(self) -> Logger:
        return Logger(namespace="wsfabric.client")

    # -- shared API -------------------------------------------------------------------

    def _on_connect(self) -> Any:
        assert self._user_on_connect is not None
        return self._user_on_connect(self)

    def _on_disconnect(self, code: int | None, reason: str) -> Any:
        assert self._user_on_disconnect is not None
        return self._user_on_disconnect(self, code, reason)

    @property
    def connected(self) -> bool:
        """
        Whether the client is connected now.
        """
        return self._session.connected

    @property
    def state(self) -> str:
        """
        ``idle``, ``connecting``, ``open``, ``waiting`` (to reconnect),
        ``closing`` or ``closed``.
        """
        return self._connector.state

    @property
    def subprotocol(self) -> str | None:
        """
        The subprotocol the client asks for (``wsfabric.json``,
        ``wsfabric.proto`` or ``None``).
        """
        return self.target.subprotocol

    @property
    def route_table(self) -> dict[str, int]:
        """
        The route table of the current connection (empty without route
        compression, or before it arrived).
        """
        return self._session.route_table

    def on(self, route: str, handler: Handler, message_type: Any = None) -> Callable[[], None]:
        """
        Call ``handler(data)`` for each push on ``route``. Handlers may be
        plain functions, return Deferreds, or be ``async def``; an exception
        in one is logged.

        :param message_type: a protobuf message class the push's data is
            read with.
        :return: a function that removes the handler.
        """
        return self._session.on(route, handler, message_type)

    def on_raw(self, handler: Handler) -> Callable[[], None]:
        """
        Call ``handler(message)`` for each message that is not an envelope
        (every message with ``codec=None``): ``str`` for text, ``bytes`` for
        binary.

        :return: a function that removes the handler.
        """
        return self._session.on_raw(handler)

    def on_error(self, handler: Handler) -> Callable[[], None]:
        """
        Call ``handler(error)`` with a :class:`~wsfabric.errors.RemoteError`
        for each error the server reports outside a response (for a notify).
        Without a handler they are logged.

        :return: a function that removes the handler.
        """
        return self._session.on_error(handler)

    def _refresh(self, token: str, timeout: float | None) -> Deferred[Any]:
        if not isinstance(token, str) or not token:
            raise InvalidArgument("a token is a non-empty string")
        self.target.headers["Authorization"] = f"Bearer {token}"
        # The gate answers wsfabric.refresh itself, in JSON text frames only.
        return self._session.request(
            "wsfabric.refresh", {"token": token}, timeout, codec=codec_named("json")
        )

    def notify(self, route: str, data: Any = None) -> None:
        """
        Send a notify: no response comes (an error goes to :meth:`on_error`).

        :raises wsfabric.errors.NotConnected: while not connected.
        :raises wsfabric.errors.InvalidArgument: for a bad route or data.
        """
        self._session.notify(route, data)

    def send_raw(self, message: str | bytes) -> None:
        """
        Send ``message`` as it is, outside the envelope protocol: ``str`` as
        a text frame, ``bytes`` as a binary frame.

        :raises wsfabric.errors.NotConnected: while not connected.
        """
        self._session.send_raw(message)
