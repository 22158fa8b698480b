# -*- test-case-name: tests.unit.test_client -*-
"""
The sans-IO heart of :mod:`wsfabric.client`, shared by the Twisted and the
asyncio fronts.

- :class:`Session` speaks the envelope protocol over whatever link is
  attached: request ids, pending requests and their timeouts, the route table
  of route compression, push, error and raw handlers.
- :class:`Backoff` is the reconnect policy: capped exponential delays with
  jitter.
- :class:`Connector` is the connection state machine: it dials through a
  transport-specific function, retries with the policy, and attaches each
  new link to the session.

Nothing here opens a socket or runs a loop: time comes from a ``clock``
(anything with ``callLater(delay, f, *args)`` returning a call with
``cancel()`` and ``active()``), links come from the fronts. Results are
Twisted Deferreds, which are plain callback objects; the asyncio front turns
them into futures.
"""

from __future__ import annotations

import inspect
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfabric.client._codec import MAX_ID, ROUTES_PUSH, ClientCodec, Inbound, codec_named
from wsfabric.errors import (
    ConnectFailed,
    InvalidArgument,
    NotConnected,
    RemoteError,
    RequestTimeout,
)

#: How many pushes with a not-yet-known route code are held at most while
#: the route table has not arrived.
MAX_HELD = 1000


class Clock(Protocol):
    """
    What the core needs of time: :class:`twisted.internet.interfaces.IReactorTime`'s
    ``callLater``.
    """

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> Any:  # noqa: N802
        """Call ``f(*args)`` in ``delay`` seconds; return a cancellable call."""


class Link(Protocol):
    """
    One open connection of a transport (WebSocket or raw TCP).

    :ivar subprotocol: the subprotocol the server chose, or ``None``.
    """

    subprotocol: str | None

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection cleanly."""

    def abort(self) -> None:
        """Drop the connection at once."""


Handler = Callable[[Any], Any]


def call_handler(handler: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    The default way of running a user callback: plain functions, functions
    returning Deferreds, and ``async def`` coroutines (run with
    :func:`~twisted.internet.defer.ensureDeferred`) all work.

    :return: a Deferred of the callback's result.
    """
    try:
        result = handler(*args)
    except Exception:
        return fail()
    if isinstance(result, Deferred):
        return result
    if inspect.iscoroutine(result):
        return ensureDeferred(result)
    d: Deferred[Any] = Deferred()
    d.callback(result)
    return d


@dataclass
class _Pending:
    route: str
    deferred: Deferred[Any]
    response_type: Any
    timer: Any = None
    # Set when the request went in another codec than the session's (the
    # gate's own wsfabric.refresh is JSON only).
    codec: ClientCodec | None = None


@dataclass
class _PushHandler:
    handler: Handler
    message_type: Any


def check_route(route: Any) -> str:
    """
    :return: ``route`` if it is a valid route name.
    :raises InvalidArgument: if it is not a string of 1 to 255 characters.
    """
    if not isinstance(route, str) or not 0 < len(route) <= 255:
        raise InvalidArgument(f"a route is a string of 1 to 255 characters, not {route!r}")
    return route


class Session:
    """
    The envelope protocol of one client, across reconnections.

    :param codec: the codec (:mod:`wsfabric.client._codec`), or ``None`` when
        the client sends and receives raw messages only.
    :param clock: schedules request timeouts.
    :param compress_routes: whether the client asked for route compression
        (then it waits for the server's route table before it delivers a
        push that names its route by code).
    :param invoke: runs a user handler and returns a Deferred of its result
        (:func:`call_handler` by default; the asyncio front passes its own).
    :param log: where problems are logged.
    """

    def __init__(
        self,
        codec: ClientCodec | None,
        clock: Clock,
        compress_routes: bool = False,
        invoke: Callable[..., Deferred[Any]] = call_handler,
        log: Logger | None = None,
    ) -> None:
        self.codec = codec
        self._clock = clock
        self.compress_routes = compress_routes
        self._invoke = invoke
        self._log = log or Logger()
        self._link: Link | None = None
        self._last_id = 0
        self._pending: dict[int, _Pending] = {}
        self._handlers: dict[str, list[_PushHandler]] = {}
        self._raw_handlers: list[Handler] = []
        self._error_handlers: list[Handler] = []
        self._codes: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._table_arrived = False
        self._held: list[tuple[Inbound, ClientCodec]] = []
        self._lenient = False

    # -- the link ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """
        Whether a link is attached.
        """
        return self._link is not None

    @property
    def route_table(self) -> dict[str, int]:
        """
        The route table of the current connection (empty without route
        compression or before it arrived).
        """
        return dict(self._codes)

    def attach(self, link: Link) -> None:
        """
        A connection opened: send through ``link`` from now on. A new
        connection brings a new route table.
        """
        self._link = link
        self._lenient = self.codec is not None and link.subprotocol != self.codec.subprotocol
        self._codes = {}
        self._names = {}
        self._table_arrived = False
        self._held = []

    def detach(self, reason: str) -> None:
        """
        The connection is gone: every pending request fails with
        :class:`~wsfabric.errors.NotConnected` (it may or may not have run on
        the server; wsfabric never replays it), and held pushes are dropped
        (logged).
        """
        self._link = None
        if self._held:
            self._log.warn(
                "dropped {count} pushes whose route code never arrived in a route table",
                count=len(self._held),
            )
            self._held = []
        pending, self._pending = self._pending, {}
        for request in pending.values():
            self._cancel_timer(request)
            request.deferred.errback(
                NotConnected(f"connection lost before the response to {request.route!r}: {reason}")
            )

    # -- outgoing ---------------------------------------------------------------------

    def _encode(self, route: str, id: int | None, data: Any,  # noqa: A002
                codec: ClientCodec | None = None) -> str | bytes:
        check_route(route)
        if codec is not None:
            return codec.encode(route, id, data)
        if self.codec is None:
            raise InvalidArgument("requests and notifies need a codec ('json' or 'proto')")
        return self.codec.encode(self._codes.get(route, route), id, data)

    def _allocate_id(self) -> int:
        while True:
            self._last_id = self._last_id % MAX_ID + 1
            if self._last_id not in self._pending:
                return self._last_id

    def request(
        self, route: str, data: Any = None, timeout: float | None = 10.0, response_type: Any = None,
        codec: ClientCodec | None = None,
    ) -> Deferred[Any]:
        """
        Send a request and wait for its response.

        :param route: the route name.
        :param data: the payload (a JSON value for the JSON codec; a protobuf
            message or bytes for the protobuf codec).
        :param timeout: seconds to wait for the response (``None``: forever).
        :param response_type: a protobuf message class to read the
            response's data with, or ``None`` for the data as it came.
        :param codec: send this request in this codec rather than the
            session's (and by name, never by code).
        :return: a Deferred of the response's data. It fails with
            :class:`~wsfabric.errors.RemoteError` for an error response,
            :class:`~wsfabric.errors.RequestTimeout` after ``timeout``,
            :class:`~wsfabric.errors.NotConnected` while the client is not
            connected or if the connection is lost before the response, and
            :class:`~wsfabric.errors.InvalidArgument` for a bad route or data.
            Cancelling it forgets the request.
        """
        if timeout is not None and not timeout > 0:
            return fail(InvalidArgument(f"timeout must be > 0 or None, not {timeout!r}"))
        if self._link is None:
            return fail(NotConnected(f"not connected: cannot send request {route!r}"))
        id_ = self._allocate_id()
        try:
            message = self._encode(route, id_, data, codec)
        except InvalidArgument:
            return fail()
        d: Deferred[Any] = Deferred(lambda _: self._forget(id_))
        request = _Pending(route, d, response_type, codec=codec)
        if timeout is not None:
            request.timer = self._clock.callLater(timeout, self._timed_out, id_, timeout)
        self._pending[id_] = request
        try:
            self._link.send(message)
        except NotConnected:
            self._forget(id_)
            return fail()
        return d

    def notify(self, route: str, data: Any = None) -> None:
        """
        Send a notify (no response; an error for it goes to the error
        handlers).

        :raises NotConnected: while the client is not connected.
        :raises InvalidArgument: for a bad route or data.
        """
        message = self._encode(route, None, data)
        if self._link is None:
            raise NotConnected(f"not connected: cannot send notify {route!r}")
        self._link.send(message)

    def send_raw(self, message: str | bytes) -> None:
        """
        Send ``message`` as it is: ``str`` as a text frame, ``bytes`` as a
        binary frame.

        :raises NotConnected: while the client is not connected.
        :raises InvalidArgument: if ``message`` is neither.
        """
        if not isinstance(message, str | bytes):
            raise InvalidArgument(f"a raw message is str or bytes, not {type(message).__name__}")
        if self._link is None:
            raise NotConnected("not connected: cannot send a raw message")
        self._link.send(message)

    @property
    def pending(self) -> int:
        """
        How many requests wait for their response.
        """
        return len(self._pending)

    def _cancel_timer(self, request: _Pending) -> None:
        if request.timer is not None and request.timer.active():
            request.timer.cancel()

    def _forget(self, id_: int) -> None:
        request = self._pending.pop(id_, None)
        if request is not None:
            self._cancel_timer(request)

    def _timed_out(self, id_: int, timeout: float) -> None:
        request = self._pending.pop(id_, None)
        if request is not None:
            request.deferred.errback(RequestTimeout(request.route, timeout))

    # -- handlers ---------------------------------------------------------------------

    def on(self, route: str, handler: Handler, message_type: Any = None) -> Callable[[], None]:
        """
        Call ``handler(data)`` for every push on ``route``.

        :param message_type: a protobuf message class to read the push's data
            with, or ``None`` for the data as it came.
        :return: a function that removes the handler again.
        """
        check_route(route)
        entry = _PushHandler(handler, message_type)
        self._handlers.setdefault(route, []).append(entry)

        def off() -> None:
            entries = self._handlers.get(route, [])
            if entry in entries:
                entries.remove(entry)
            if not entries:
                self._handlers.pop(route, None)

        return off

    def on_raw(self, handler: Handler) -> Callable[[], None]:
        """
        Call ``handler(message)`` for every message that is not an envelope
        of the codec (every message when there is no codec).

        :return: a function that removes the handler again.
        """
        return self._add(self._raw_handlers, handler)

    def on_error(self, handler: Handler) -> Callable[[], None]:
        """
        Call ``handler(error)`` with a :class:`~wsfabric.errors.RemoteError`
        for every error the server sends outside a response (the error of a
        notify, or of an envelope too broken to carry its id).

        :return: a function that removes the handler again.
        """
        return self._add(self._error_handlers, handler)

    @staticmethod
    def _add(handlers: list[Handler], handler: Handler) -> Callable[[], None]:
        handlers.append(handler)

        def off() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return off

    def _run(self, what: str, handler: Callable[..., Any], *args: Any) -> None:
        d = self._invoke(handler, *args)
        d.addErrback(self._handler_failed, what)

    def _handler_failed(self, failure: Failure, what: str) -> None:
        self._log.failure("{what} raised", failure, what=what)

    # -- incoming ---------------------------------------------------------------------

    def received(self, message: str | bytes) -> None:
        """
        A message arrived on the link: a response, an error, a push or a raw
        message.
        """
        codec = self._decoder_of(message)
        inbound = codec.decode(message) if codec is not None else None
        if inbound is None or codec is None:
            if not self._answers_other_codec(message):
                self._raw(message)
        elif inbound.id is not None:
            self._response(inbound, codec)
        elif inbound.error is not None:
            self._remote_error(inbound)
        else:
            self._push(inbound, codec)

    def _answers_other_codec(self, message: str | bytes) -> bool:
        # A response to a request sent in another codec (see request()).
        for request in self._pending.values():
            if request.codec is not None:
                inbound = request.codec.decode(message)
                if inbound is not None and inbound.id is not None:
                    other = self._pending.get(inbound.id)
                    if other is not None and other.codec is request.codec:
                        self._response(inbound, request.codec)
                        return True
                return False
        return False

    def _decoder_of(self, message: str | bytes) -> ClientCodec | None:
        if self._lenient and self.codec is not None:
            # The server negotiated no subprotocol, so (docs/wire-protocol.md)
            # it reads and may answer text as JSON and binary as protobuf.
            return codec_named("proto" if isinstance(message, bytes) else "json")
        return self.codec

    def _raw(self, message: str | bytes) -> None:
        if not self._raw_handlers:
            self._log.warn(
                "a message that is not an envelope arrived and no raw handler is set: {preview!r}",
                preview=message[:80],
            )
        for handler in list(self._raw_handlers):
            self._run("the raw message handler", handler, message)

    def _response(self, inbound: Inbound, codec: ClientCodec) -> None:
        request = self._pending.pop(inbound.id, None) if inbound.id is not None else None
        if request is None:
            # A response to a request that timed out or was cancelled.
            self._log.debug("ignored a late response with id {id}", id=inbound.id)
            return
        self._cancel_timer(request)
        if inbound.error is not None:
            request.deferred.errback(RemoteError(*inbound.error, route=request.route))
            return
        try:
            result = codec.unpack(inbound.data, request.response_type)
        except Exception:
            request.deferred.errback()
            return
        request.deferred.callback(result)

    def _route_name(self, inbound: Inbound) -> str | None:
        route = inbound.route
        if isinstance(route, int):
            return self._names.get(route)
        return route

    def _remote_error(self, inbound: Inbound) -> None:
        assert inbound.error is not None
        error = RemoteError(*inbound.error, route=self._route_name(inbound))
        if not self._error_handlers:
            self._log.warn("the server sent an error: {error}", error=str(error))
        for handler in list(self._error_handlers):
            self._run("the error handler", handler, error)

    def _push(self, inbound: Inbound, codec: ClientCodec) -> None:
        if inbound.route == ROUTES_PUSH:
            self._table(inbound.data, codec)
            return
        if isinstance(inbound.route, int) and inbound.route not in self._names:
            if self.compress_routes and not self._table_arrived:
                if len(self._held) >= MAX_HELD:
                    self._log.error(
                        "dropped a push with route code {code}: {count} pushes already wait "
                        "for the route table",
                        code=inbound.route,
                        count=len(self._held),
                    )
                    return
                self._held.append((inbound, codec))
                return
            self._log.error("dropped a push with unknown route code {code}", code=inbound.route)
            return
        self._deliver(inbound, codec)

    def _deliver(self, inbound: Inbound, codec: ClientCodec) -> None:
        route = self._route_name(inbound)
        assert route is not None
        handlers = self._handlers.get(route)
        if not handlers:
            self._log.warn("no handler for a push on route {route!r}", route=route)
            return
        for entry in list(handlers):
            try:
                value = codec.unpack(inbound.data, entry.message_type)
            except Exception:
                self._log.failure("could not read a push on route {route!r}", route=route)
                continue
            self._run(f"the handler of route {route!r}", entry.handler, value)

    def _table(self, data: Any, codec: ClientCodec) -> None:
        try:
            table = codec.table(data)
        except ValueError as e:
            self._log.error("ignored a bad route table: {error}", error=str(e))
            return
        if not self.compress_routes:
            self._log.warn("ignored a route table the client did not ask for")
            return
        self._codes = table
        self._names = {code: name for name, code in table.items()}
        self._table_arrived = True
        held, self._held = self._held, []
        for inbound, codec_of_push in held:
            self._push(inbound, codec_of_push)


@dataclass
class Backoff:
    """
    The delay before each reconnection attempt: ``initial * factor ** (n - 1)``
    for the n-th consecutive failure, capped at ``maximum``, then reduced by a
    random fraction of up to ``jitter`` so that many clients that lost the
    same server do not all come back at the same instant.

    :param initial: the first delay in seconds.
    :param factor: the growth per failure.
    :param maximum: the cap in seconds.
    :param jitter: 0 (none) to 1 (a delay anywhere from 0 to the full one).
    :param max_retries: give up after this many consecutive failed attempts
        (``None``: never give up).
    :param random: returns a float in [0, 1) (for tests).
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5
    max_retries: int | None = None
    random: Callable[[], float] = field(default=_random.random, repr=False)

    def __post_init__(self) -> None:
        if not self.initial > 0 or not self.maximum >= self.initial:
            raise InvalidArgument("backoff needs 0 < initial <= maximum")
        if not self.factor >= 1:
            raise InvalidArgument("backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise InvalidArgument("backoff jitter must be within [0, 1]")
        if self.max_retries is not None and self.max_retries < 0:
            raise InvalidArgument("max_retries must be >= 0 or None")

    def delay(self, failures: int) -> float:
        """
        :param failures: consecutive failures so far (1 or more).
        :return: the delay before the next attempt, in seconds.
        """
        exponent = min(max(failures, 1) - 1, 64)
        base = min(self.maximum, self.initial * self.factor**exponent)
        return base * (1 - self.jitter * self.random())

    def gives_up(self, failures: int) -> bool:
        """
        :return: whether to stop after ``failures`` consecutive failures.
        """
        return self.max_retries is not None and failures > self.max_retries


#: Close codes (and HTTP statuses) of a deliberate refusal by the server:
#: retrying would get the same answer, so the client stops.
def is_refusal(code: int | None) -> bool:
    """
    :param code: an HTTP status of a failed WebSocket upgrade, or a close code.
    :return: whether the server refused the client on purpose (HTTP 4xx but
        408 and 429; close codes 1002, 1003, 1007, 1008 and 3000-4999), so
        that reconnecting is pointless.
    """
    if code is None:
        return False
    if 400 <= code < 500:
        return code not in (408, 429)
    return code in (1002, 1003, 1007, 1008) or 3000 <= code < 5000


DialFunction = Callable[["Attempt"], Callable[[], None]]


class Attempt:
    """
    One connection attempt, handed to a transport's dial function, which
    reports to it: :meth:`opened` once, then :meth:`message` for each
    message and :meth:`closed` at the end; or :meth:`failed` instead of
    :meth:`opened`. Reports of a superseded attempt are ignored.
    """

    def __init__(self, connector: Connector) -> None:
        self._connector = connector
        self.cancel: Callable[[], None] = lambda: None
        self.timer: Any = None
        self.link: Link | None = None
        self.done = False

    @property
    def current(self) -> bool:
        """
        Whether this is the connector's live attempt.
        """
        return self._connector._attempt is self and not self.done

    def opened(self, link: Link) -> None:
        """
        The connection is open (WebSocket handshake or TCP hello done).
        """
        if not self.current or self.link is not None:
            link.abort()
            return
        self.link = link
        self._connector._opened(self, link)

    def message(self, message: str | bytes) -> None:
        """
        A message arrived.
        """
        if self.current and self.link is not None:
            self._connector.session.received(message)

    def failed(self, reason: str, code: int | None = None) -> None:
        """
        The attempt failed before the connection opened.

        :param code: the HTTP status or close code of a refusal, if any.
        """
        if self.current and self.link is None:
            self._connector._failed(self, reason, code)

    def closed(self, code: int | None, reason: str) -> None:
        """
        The open connection closed.
        """
        if self.link is None:
            self.failed(reason or "connection closed before it opened", code)
        elif self.current:
            self._connector._closed(self, code, reason)


class Connector:
    """
    Keeps a client connected: dials, retries with :class:`Backoff`, and
    attaches each new link to the :class:`Session`.

    States: ``idle`` → ``connecting`` → ``open`` → (lost) ``waiting`` →
    ``connecting`` → ... and ``closed`` at the end (after :meth:`close`, when
    the policy gives up, or after a refusal). A dropped connection is retried
    unless ``reconnect`` is false or the server refused or kicked the client
    on purpose (see :func:`is_refusal`).

    :param clock: schedules retries and timeouts.
    :param dial: starts one attempt: ``dial(attempt)`` reports to ``attempt``
        and returns a function that cancels the attempt.
    :param session: the session to attach links to.
    :param backoff: the retry policy.
    :param reconnect: whether to reconnect after a connection is lost (and
        retry a failed first connection).
    :param connect_timeout: seconds after which :meth:`start` gives up if no
        connection has opened yet (``None``: no bound beyond the policy's).
    :param attempt_timeout: bound of one attempt (connect and handshake).
    :param on_connect: called with no arguments after each connection opens.
    :param on_disconnect: called with ``(code, reason)`` after each open
        connection is lost.
    :param log: where problems are logged.
    """

    def __init__(
        self,
        clock: Clock,
        dial: DialFunction,
        session: Session,
        backoff: Backoff | None = None,
        reconnect: bool = True,
        connect_timeout: float | None = 30.0,
        attempt_timeout: float = 10.0,
        on_connect: Callable[[], Any] | None = None,
        on_disconnect: Callable[[int | None, str], Any] | None = None,
        log: Logger | None = None,
    ) -> None:
        self._clock = clock
        self._dial = dial
        self.session = session
        self.backoff = backoff or Backoff()
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.attempt_timeout = attempt_timeout
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self._log = log or Logger()
        self.state = "idle"
        self.failures = 0
        self.last_error = ""
        self._attempt: Attempt | None = None
        self._retry: Any = None
        self._start_timer: Any = None
        self._close_timer: Any = None
        self._started: Deferred[None] | None = None
        self._ever_opened = False
        self._closed_waiters: list[Deferred[None]] = []
        self._close_result: Failure | None = None

    def start(self) -> Deferred[None]:
        """
        Start connecting.

        :return: a Deferred that fires when the first connection opens, or
            fails with :class:`~wsfabric.errors.ConnectFailed`.
        """
        if self.state != "idle":
            return fail(InvalidArgument(f"the client was already started (state {self.state})"))
        self._started = Deferred()
        started = self._started
        if self.connect_timeout is not None:
            self._start_timer = self._clock.callLater(self.connect_timeout, self._start_timed_out)
        self._connect()
        return started

    def _connect(self) -> None:
        self._retry = None
        self.state = "connecting"
        attempt = Attempt(self)
        self._attempt = attempt
        attempt.timer = self._clock.callLater(
            self.attempt_timeout, self._attempt_timed_out, attempt
        )
        try:
            cancel = self._dial(attempt)
        except Exception as e:
            self._log.failure("could not start a connection attempt")
            attempt.failed(f"could not start a connection attempt: {e}")
            return
        attempt.cancel = cancel
        if attempt.done:
            # It failed synchronously; the cancel function is of no use now.
            cancel()

    def _end_attempt(self, attempt: Attempt) -> None:
        attempt.done = True
        if attempt.timer is not None and attempt.timer.active():
            attempt.timer.cancel()

    def _attempt_timed_out(self, attempt: Attempt) -> None:
        if attempt.current and attempt.link is None:
            reason = f"no connection within {self.attempt_timeout:g} s"
            self._failed(attempt, reason, None)
            attempt.cancel()

    def _start_timed_out(self) -> None:
        self._start_timer = None
        if not self._ever_opened and self.state != "closed":
            reason = f"no connection after {self.connect_timeout:g} s"
            if self.last_error:
                reason += f" (last error: {self.last_error})"
            self._give_up(ConnectFailed(reason))

    def _opened(self, attempt: Attempt, link: Link) -> None:
        if attempt.timer is not None and attempt.timer.active():
            attempt.timer.cancel()
        self.state = "open"
        self.failures = 0
        self._ever_opened = True
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None
        self.session.attach(link)
        started, self._started = self._started, None
        if started is not None:
            started.callback(None)
        if self.on_connect is not None:
            self.session._run("on_connect", self.on_connect)

    def _failed(self, attempt: Attempt, reason: str, code: int | None) -> None:
        self._end_attempt(attempt)
        self.failures += 1
        self.last_error = reason
        self._log.info("connection attempt {n} failed: {reason}", n=self.failures, reason=reason)
        if is_refusal(code):
            self._give_up(ConnectFailed(f"the server refused the connection: {reason}", code))
        elif not self.reconnect and not self._ever_opened:
            self._give_up(ConnectFailed(f"could not connect: {reason}", code))
        elif self.backoff.gives_up(self.failures):
            self._give_up(ConnectFailed(
                f"gave up after {self.failures} failed attempts (last error: {reason})", code))
        else:
            self._wait()

    def _closed(self, attempt: Attempt, code: int | None, reason: str) -> None:
        attempt.done = True
        self._attempt = None
        self.session.detach(f"closed with code {code}: {reason}" if code else reason)
        if self.on_disconnect is not None:
            self.session._run("on_disconnect", self.on_disconnect, code, reason)
        if self.state == "closing":
            self._finish(None)
        elif not self.reconnect:
            self._finish(Failure(NotConnected(f"connection closed ({code}): {reason}")))
        elif is_refusal(code):
            self._finish(Failure(ConnectFailed(
                f"the server closed the connection with {code} ({reason}); not reconnecting",
                code)))
        else:
            self.failures = 0
            self._wait()

    def _wait(self) -> None:
        self.state = "waiting"
        delay = self.backoff.delay(max(self.failures, 1))
        self._retry = self._clock.callLater(delay, self._connect)

    def _give_up(self, error: ConnectFailed) -> None:
        self._log.warn("{error}", error=str(error))
        self._stop_trying()
        started, self._started = self._started, None
        if started is not None:
            started.errback(error)
        self._finish(Failure(error))

    def _stop_trying(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None
        attempt, self._attempt = self._attempt, None
        if attempt is not None and not attempt.done and attempt.link is None:
            self._end_attempt(attempt)
            attempt.cancel()

    def _finish(self, result: Failure | None) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if self.state == "closed":
            return
        self.state = "closed"
        self._close_result = result
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred[None]) -> None:
        if self._close_result is None:
            waiter.callback(None)
        else:
            waiter.errback(self._close_result)

    def _close_timed_out(self, attempt: Attempt) -> None:
        if self.state == "closing" and attempt.link is not None and not attempt.done:
            attempt.link.abort()
            attempt.closed(1006, "the server did not answer the close")

    def when_closed(self) -> Deferred[None]:
        """
        :return: a Deferred that fires when the client has closed for good:
            with ``None`` after :meth:`close`, or with the
            :class:`~wsfabric.errors.ConnectFailed` or
            :class:`~wsfabric.errors.NotConnected` that ended it.
        """
        waiter: Deferred[None] = Deferred()
        if self.state == "closed":
            self._fire(waiter)
        else:
            self._closed_waiters.append(waiter)
        return waiter

    def close(self, code: int = 1000, reason: str = "") -> Deferred[None]:
        """
        Stop reconnecting and close the connection.

        :return: a Deferred that fires once it is closed.
        """
        if self.state == "closed":
            return self.when_closed()
        waiter = self.when_closed()
        started, self._started = self._started, None
        if started is not None:
            started.errback(ConnectFailed("the client was closed before it connected"))
        attempt = self._attempt
        if self.state == "open" and attempt is not None and attempt.link is not None:
            self.state = "closing"
            link = attempt.link
            link.close(code, reason)
            # A server that never answers the close is dropped.
            self._close_timer = self._clock.callLater(
                self.attempt_timeout, self._close_timed_out, attempt
            )
        else:
            self._stop_trying()
            self._finish(None)
        return waiter


__all__ = [
    "Attempt",
    "Backoff",
    "Connector",
    "Link",
    "Session",
    "call_handler",
    "is_refusal",
]
