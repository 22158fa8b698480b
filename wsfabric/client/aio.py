# -*- test-case-name: tests.unit.test_client,tests.integration.test_client -*-
"""
The asyncio front of :mod:`wsfabric.client`: the same client as
:mod:`wsfabric.client.twisted`, with coroutines instead of Deferreds and no
Twisted reactor::

    from wsfabric.client import aio

    client = await aio.connect("ws://127.0.0.1:8080/ws")
    reply = await client.request("chat.send", {"text": "hi"})

Its WebSocket transport is the ``websockets`` package rather than
Autobahn: Autobahn chooses its event loop framework once per process
(``txaio``), and a process that has loaded Twisted's Autobahn (wsfabric
itself, or a test suite) could then not load the asyncio one. The raw TCP
transport and everything above the transport is shared with the Twisted
front.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger, STDLibLogObserver
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from wsfabric.client._base import BaseClient
from wsfabric.client._core import Attempt, Clock
from wsfabric.client._framing import TcpClientConnection
from wsfabric.errors import NotConnected


class _Call:
    """
    A call scheduled on the loop, shaped like Twisted's ``IDelayedCall``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float,
                 f: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._done = False
        self._f = f
        self._args = args
        self._handle = loop.call_later(delay, self._run)

    def _run(self) -> None:
        self._done = True
        self._f(*self._args)

    def active(self) -> bool:
        """
        Whether it is still to run.
        """
        return not self._done

    def cancel(self) -> None:
        """
        Do not run it.
        """
        self._done = True
        self._handle.cancel()


class LoopClock:
    """
    A :class:`~wsfabric.client._core.Clock` on an asyncio loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> _Call:  # noqa: N802
        """
        Call ``f(*args)`` in ``delay`` seconds.
        """
        return _Call(self._loop, delay, f, args)


def _consume(task: asyncio.Task[Any]) -> None:
    # A send that fails because the connection closed is reported by the
    # reader as the close; nothing else to do here.
    if not task.cancelled():
        task.exception()


class _WebSocketLink:
    """
    A :class:`~wsfabric.client._core.Link` over a ``websockets`` connection.
    """

    def __init__(self, connection: ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._connection = connection
        self._loop = loop
        self.subprotocol: str | None = connection.subprotocol

    def send(self, message: str | bytes) -> None:
        """
        Send a text (``str``) or binary (``bytes``) message. ``websockets``
        writes it at once (in call order) and then waits for the socket to
        drain, so the wait runs as a task.

        :raises NotConnected: if the connection is closing.
        """
        if self._connection.state is not State.OPEN:
            raise NotConnected("the connection is closing")
        self._loop.create_task(self._connection.send(message)).add_done_callback(_consume)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Start the closing handshake.
        """
        self._loop.create_task(self._connection.close(code, reason)).add_done_callback(_consume)

    def abort(self) -> None:
        """
        Drop the connection at once.
        """
        self._connection.transport.abort()


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, attempt: Attempt, hello: dict[str, Any], max_size: int,
                 clock: Clock, ping_interval: float | None) -> None:
        self._attempt = attempt
        self._hello = hello
        self._max_size = max_size
        self._clock = clock
        self._ping_interval = ping_interval
        self.transport: asyncio.Transport | None = None
        self.connection: TcpClientConnection | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.connection = TcpClientConnection(
            self._attempt, transport.write, self._lose, self._hello, self._max_size,
            self._clock, self._ping_interval,
        )
        self.connection.connected()

    def _lose(self, abort: bool) -> None:
        assert self.transport is not None
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.connection is not None
        self.connection.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is not None:
            self.connection.connection_lost(str(exc) if exc else "")


class Client(BaseClient):
    """
    A client of a wsfabric server for asyncio code: request/response with
    timeouts, notifies, push handlers and raw messages over a WebSocket or
    the raw TCP transport, with reconnection. See :class:`BaseClient
    <wsfabric.client._base.BaseClient>` for the options, and
    docs/clients.md. Problems are logged to the standard :mod:`logging`
    logger ``wsfabric.client``.

    :param loop: the event loop (the running one by default).
    :param ssl_context: the TLS context for ``wss://`` and ``tls://`` (by
        default :func:`ssl.create_default_context`, which verifies the
        server's certificate).
    """

    def __init__(
        self,
        url: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._ssl_context = ssl_context
        super().__init__(url, **options)

    def _clock(self) -> Clock:
        return LoopClock(self._loop)

    def _logger(self) -> Logger:
        return Logger(
            namespace="wsfabric.client", observer=STDLibLogObserver(name="wsfabric.client")
        )

    def _invoke(self, handler: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            result = handler(*args)
        except Exception:
            return fail()
        if inspect.isawaitable(result):
            return Deferred.fromFuture(asyncio.ensure_future(result, loop=self._loop))
        return succeed(result)

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.target.secure:
            return None
        return self._ssl_context or ssl.create_default_context()

    async def _websocket(self, attempt: Attempt) -> None:
        target = self.target
        try:
            connection = await websocket_connect(
                target.url,
                subprotocols=[target.subprotocol] if target.subprotocol else None,  # type: ignore[list-item]
                additional_headers=target.headers or None,
                compression=None,
                proxy=None,
                # The connector bounds the attempt.
                open_timeout=None,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_interval,
                close_timeout=5,
                max_size=self.max_message_size,
                max_queue=None,
                ssl=self._ssl(),
            )
        except InvalidStatus as e:
            status = e.response.status_code
            body = e.response.body.decode("utf-8", "replace")[:200] if e.response.body else ""
            attempt.failed(f"WebSocket upgrade refused with HTTP {status} {body}".strip(), status)
            return
        except (OSError, InvalidHandshake, TimeoutError) as e:
            attempt.failed(f"could not connect to {target.url}: {e}")
            return
        attempt.opened(_WebSocketLink(connection, self._loop))
        if not attempt.current:
            return
        try:
            async for message in connection:
                attempt.message(message)
        except ConnectionClosed:
            pass
        attempt.closed(connection.close_code or 1006, connection.close_reason or "")

    def _dial(self, attempt: Attempt) -> Callable[[], None]:
        target = self.target
        if target.websocket:
            task = self._loop.create_task(self._websocket(attempt))
            task.add_done_callback(_consume)
            return task.cancel
        hello = target.hello()
        context = self._ssl()

        def factory() -> asyncio.BaseProtocol:
            return _TcpProtocol(attempt, hello, self.max_message_size, self._clock(),
                                self.ping_interval)

        connecting = asyncio.ensure_future(
            self._loop.create_connection(
                factory, target.host, target.port, ssl=context,
                server_hostname=target.host if context else None,
            ),
            loop=self._loop,
        )

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                attempt.failed(f"could not connect to {target.host}:{target.port}: {error}")

        connecting.add_done_callback(done)

        def cancel() -> None:
            if not connecting.done():
                connecting.cancel()
            elif not connecting.cancelled() and connecting.exception() is None:
                transport, _ = connecting.result()
                transport.abort()

        return cancel

    # -- the API ----------------------------------------------------------------------

    async def connect(self) -> Client:
        """
        Connect; the client keeps reconnecting until :meth:`close`.

        :return: this client, once the first connection is open.
        :raises wsfabric.errors.ConnectFailed: if it cannot connect.
        """
        await self._connector.start().asFuture(self._loop)
        return self

    async def request(
        self, route: str, data: Any = None, timeout: float | None = 10.0,
        response_type: Any = None,
    ) -> Any:
        """
        Send a request on ``route`` and wait for its response.

        :param data: a JSON value (JSON codec), or a protobuf message or
            bytes (protobuf codec; JSON codec: sent as its JSON mapping).
        :param timeout: seconds to wait (``None``: no bound).
        :param response_type: a protobuf message class to read the
            response with.
        :return: the response's data.
        :raises wsfabric.errors.RemoteError: the server answered with an
            error.
        :raises wsfabric.errors.RequestTimeout: no response within
            ``timeout`` (a :class:`TimeoutError`).
        :raises wsfabric.errors.NotConnected: not connected now, or the
            connection was lost before the response.
        :raises wsfabric.errors.InvalidArgument: a bad route or data.
        """
        return await self._session.request(route, data, timeout, response_type).asFuture(
            self._loop
        )

    async def refresh_token(self, token: str, timeout: float | None = 10.0) -> Any:
        """
        Present a new token before the current one expires (the server
        closes the connection with 4401 when it does): it is sent to the
        server (route ``wsfabric.refresh``) and used for every later
        reconnection.

        :return: the server's answer (``{"exp": ...}``).
        :raises wsfabric.errors.RemoteError: (code ``unauthorized``) if the
            server refuses the token.
        """
        return await self._refresh(token, timeout).asFuture(self._loop)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Stop reconnecting and close the connection.
        """
        await self._connector.close(code, reason).asFuture(self._loop)

    async def wait_closed(self) -> None:
        """
        Wait until the client has stopped for good.

        :raises wsfabric.errors.ConnectFailed: if it stopped because it gave
            up reconnecting or the server refused it.
        """
        await self._connector.when_closed().asFuture(self._loop)


async def connect(url: str, **options: Any) -> Client:
    """
    Create a :class:`Client` on the running loop and connect it.

    :param url: ``ws://host:port/ws``, ``wss://...``, ``tcp://host:port`` or
        ``tls://host:port``.
    :param options: the options of :class:`Client`.
    :return: the client, once it is connected.
    """
    return await Client(url, **options).connect()
