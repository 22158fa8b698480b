# -*- test-case-name: tests.unit.test_client,tests.integration.test_client -*-
"""
The Twisted front of :mod:`wsfabric.client`: every call returns a Deferred.

::

    from wsfabric.client.twisted import connect

    client = await connect("ws://127.0.0.1:8080/ws")
    reply = await client.request("chat.send", {"text": "hi"})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure

from wsfabric.client._base import BaseClient
from wsfabric.client._core import Attempt, Clock
from wsfabric.client._framing import TcpClientConnection
from wsfabric.client._websocket import AttemptReporter


class _WebSocketProtocol(AttemptReporter, WebSocketClientProtocol):
    pass


class _WebSocketFactory(WebSocketClientFactory):
    protocol = _WebSocketProtocol
    attempt: Attempt
    # One factory per attempt: "Starting factory" lines would flood the log
    # while the client retries.
    noisy = False


class _TcpProtocol(Protocol):
    def __init__(self, attempt: Attempt, hello: dict[str, Any], max_size: int,
                 clock: Any = None, ping_interval: float | None = None) -> None:
        self._attempt = attempt
        self._hello = hello
        self._max_size = max_size
        self._clock = clock
        self._ping_interval = ping_interval
        self.connection: TcpClientConnection | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.connection = TcpClientConnection(
            self._attempt, self.transport.write, self._lose, self._hello, self._max_size,
            self._clock, self._ping_interval,
        )
        self.connection.connected()

    def _lose(self, abort: bool) -> None:
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        assert self.connection is not None
        self.connection.data_received(data)

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        if self.connection is not None:
            self.connection.connection_lost(reason.getErrorMessage() if reason else "")


class _TcpFactory(Factory):
    noisy = False

    def __init__(self, attempt: Attempt, hello: dict[str, Any], max_size: int,
                 clock: Any = None, ping_interval: float | None = None) -> None:
        self._args = (attempt, hello, max_size, clock, ping_interval)

    def buildProtocol(self, addr: Any) -> _TcpProtocol:  # noqa: N802
        return _TcpProtocol(*self._args)


class Client(BaseClient):
    """
    A client of a wsfabric server for Twisted code: request/response with
    timeouts, notifies, push handlers and raw messages over a WebSocket or
    the raw TCP transport, with reconnection. See :class:`BaseClient
    <wsfabric.client._base.BaseClient>` for the options, and
    docs/clients.md.

    :param reactor: the reactor (the global one by default).
    :param tls_options: client TLS options for ``wss://`` and ``tls://``
        (by default :func:`~twisted.internet.ssl.optionsForClientTLS` of the
        host, which verifies its certificate against the system's CAs).
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Any = None,
        tls_options: Any = None,
        **options: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self._tls_options = tls_options
        super().__init__(url, **options)

    def _clock(self) -> Clock:
        clock: IReactorTime = self._reactor
        return clock

    def _endpoint(self) -> Any:
        target = self.target
        reactor: IReactorTCP = self._reactor
        endpoint = HostnameEndpoint(
            reactor, target.host, target.port, timeout=self._connector.attempt_timeout
        )
        if target.secure:
            options = self._tls_options or optionsForClientTLS(target.host)
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def _dial(self, attempt: Attempt) -> Callable[[], None]:
        target = self.target
        factory: Any
        if target.websocket:
            factory = _WebSocketFactory(
                target.url,
                protocols=[target.subprotocol] if target.subprotocol else None,
                headers=target.headers or None,
                reactor=self._reactor,
            )
            factory.attempt = attempt
            factory.setProtocolOptions(
                maxMessagePayloadSize=self.max_message_size,
                maxFramePayloadSize=self.max_message_size,
                openHandshakeTimeout=self._connector.attempt_timeout,
                closeHandshakeTimeout=5,
                autoPingInterval=self.ping_interval or 0,
                autoPingTimeout=self.ping_interval or 0,
            )
        else:
            factory = _TcpFactory(attempt, target.hello(), self.max_message_size,
                                  self._reactor, self.ping_interval)
        connecting = self._endpoint().connect(factory)
        protocols: list[Any] = []

        def connect_failed(failure: Failure) -> None:
            attempt.failed(
                f"could not connect to {target.host}:{target.port}: {failure.getErrorMessage()}"
            )

        connecting.addCallbacks(protocols.append, connect_failed)

        def cancel() -> None:
            connecting.cancel()
            for protocol in protocols:
                protocol.transport.abortConnection()

        return cancel

    # -- the API ----------------------------------------------------------------------

    def connect(self) -> Deferred[Client]:
        """
        Start connecting; the client keeps reconnecting until :meth:`close`.

        :return: a Deferred that fires with this client once the first
            connection is open, or fails with
            :class:`~wsfabric.errors.ConnectFailed`.
        """
        d = self._connector.start()
        d.addCallback(lambda _: self)
        return d

    def request(
        self, route: str, data: Any = None, timeout: float | None = 10.0,
        response_type: Any = None,
    ) -> Deferred[Any]:
        """
        Send a request on ``route`` and wait for its response.

        :param data: a JSON value (JSON codec), or a protobuf message or
            bytes (protobuf codec; JSON codec: sent as its JSON mapping).
        :param timeout: seconds to wait (``None``: no bound).
        :param response_type: a protobuf message class to read the
            response with.
        :return: a Deferred of the response's data; it fails with
            :class:`~wsfabric.errors.RemoteError` (the server answered with
            an error), :class:`~wsfabric.errors.RequestTimeout`,
            :class:`~wsfabric.errors.NotConnected` (not connected now, or
            the connection was lost before the response) or
            :class:`~wsfabric.errors.InvalidArgument`. Cancelling it forgets
            the request.
        """
        return self._session.request(route, data, timeout, response_type)

    def refresh_token(self, token: str, timeout: float | None = 10.0) -> Deferred[Any]:
        """
        Present a new token before the current one expires (the server
        closes the connection with 4401 when it does): it is sent to the
        server (route ``wsfabric.refresh``) and used for every later
        reconnection.

        :return: a Deferred of the server's answer (``{"exp": ...}``); it
            fails with :class:`~wsfabric.errors.RemoteError` (code
            ``unauthorized``) if the server refuses the token.
        """
        return self._refresh(token, timeout)

    def close(self, code: int = 1000, reason: str = "") -> Deferred[None]:
        """
        Stop reconnecting and close the connection.

        :return: a Deferred that fires once it is closed.
        """
        return self._connector.close(code, reason)

    def when_closed(self) -> Deferred[None]:
        """
        :return: a Deferred that fires once the client has stopped for good:
            with ``None`` after :meth:`close`, or with the
            :class:`~wsfabric.errors.ConnectFailed` that ended it (retries
            exhausted, or the server refused the client).
        """
        return self._connector.when_closed()


def connect(url: str, **options: Any) -> Deferred[Client]:
    """
    Create a :class:`Client` and connect it.

    :param url: ``ws://host:port/ws``, ``wss://...``, ``tcp://host:port`` or
        ``tls://host:port``.
    :param options: the options of :class:`Client`.
    :return: a Deferred that fires with the client once it is connected.
    """
    return Client(url, **options).connect()
