"""
The raw TCP transport: a Twisted protocol and factory that translate between
length-prefixed frames and the :class:`~wsfabric.gate.gate.Gate`, for
clients that do not want a WebSocket (game clients, services, devices).

Every frame, in both directions, is a 4-byte big-endian length (1 + the
payload's length), one type byte and the payload; ``docs/wire-protocol.md``
is the specification. The client's first frame is a *hello* (JSON: path,
params, headers, subprotocol), which stands for the WebSocket handshake and
becomes the :class:`~wsfabric.message.ConnectRequest`.

Like the WebSocket edge, the protocol decides nothing about routing: it
checks frames, turns them into gate events, and carries the gate's messages
out through a per-connection outbound queue bounded in bytes and driven by
Twisted's producer/consumer protocol. The limits are the WebSocket edge's
(:class:`~wsfabric.gate.websocket.EdgeSettings`), with the same close codes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.errors import AuthenticationFailed, InvalidArgument, LimitExceeded
from wsfabric.gate.auth import CLOSE_TOKEN_EXPIRED, Gatekeeper, Identity, without_credentials
from wsfabric.gate.gate import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    Gate,
)
from wsfabric.gate.outbound import OutboundQueue
from wsfabric.gate.websocket import SUBPROTOCOLS, EdgeSettings, make_gatekeeper
from wsfabric.interfaces import IClientConnection
from wsfabric.message import ConnectRequest, SharedMessage
from wsfabric.metrics import Metrics

# Frame types (docs/wire-protocol.md).
TEXT = 0
BINARY = 1
CLOSE = 2
PING = 3
PONG = 4
HELLO = 5

# Close codes of the transport itself (the WebSocket ones, RFC 6455 7.4).
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
#: A failed authentication (the WebSocket edge answers HTTP 401).
CLOSE_UNAUTHORIZED = 4401

#: Largest hello payload: the size of the WebSocket edge's request head bound.
MAX_HELLO_SIZE = 16384

#: Largest ping or pong payload (as for WebSocket control frames).
MAX_CONTROL_SIZE = 125

#: Seconds the peer has, after a close frame, before the connection is
#: aborted (the WebSocket edge's close handshake timeout).
CLOSE_TIMEOUT = 1.0

_HEADER = struct.Struct("!IB")
_LENGTH = struct.Struct("!I")
_CODE = struct.Struct("!H")

# Connection states, in the order they go through: waiting for the hello,
# checking it (authentication may take a while; nothing more is read
# meanwhile), open, closing, closed.
_HELLO = 0
_ADMITTING = 1
_OPEN = 2
_CLOSING = 3
_CLOSED = 4



class _Control:
    """
    A control frame (ping, pong) in the outbound queue: written in order
    with the messages but not counted as one.
    """

    __slots__ = ("frame",)

    def __init__(self, frame: bytes) -> None:
        self.frame = frame


def frame(kind: int, payload: bytes) -> bytes:
    """
    Frame one message or control payload.

    :param kind: the frame type (:data:`TEXT`, :data:`BINARY`, ...).
    :param payload: the payload.
    :return: the frame: length, type byte, payload.
    """
    return _HEADER.pack(len(payload) + 1, kind) + payload


def close_frame(code: int, reason: str) -> bytes:
    """
    :param code: the close code.
    :param reason: the reason, cut to 123 bytes of UTF-8 on a character
        boundary (the WebSocket bound, so that both transports agree).
    :return: a close frame.
    """
    data = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return frame(CLOSE, _CODE.pack(code) + data)


def peer_string(address: IAddress) -> str:
    """
    :param address: a connection's peer address.
    :return: the address as the WebSocket edge writes it in
        :attr:`~wsfabric.message.ConnectRequest.peer`, e.g.
        ``"tcp4:127.0.0.1:51234"``.
    """
    if isinstance(address, IPv4Address):
        return f"tcp4:{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"tcp6:{address.host}:{address.port}"
    return str(address)


def _string_map(hello: dict[str, Any], key: str, lower: bool = False) -> dict[str, str]:
    value = hello.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(item, str) for pair in value.items() for item in pair
    ):
        raise InvalidArgument(f"hello {key} must be an object of strings")
    if lower:
        return {name.lower(): item for name, item in value.items()}
    return dict(value)


def parse_hello(
    payload: bytes, peer: str, subprotocols: Sequence[str] = SUBPROTOCOLS
) -> ConnectRequest:
    """
    Read a client's hello.

    :param payload: the hello frame's payload (a UTF-8 JSON object).
    :param peer: the client's address, e.g. ``"tcp4:127.0.0.1:51234"``.
    :param subprotocols: the subprotocols the server speaks.
    :return: the request the hello stands for: header names in lower case,
        ``subprotocol`` set only when the server speaks it, ``path`` ``"/"``
        when the hello has none.
    :raises InvalidArgument: naming what is wrong with the hello.
    """
    try:
        hello = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument("hello is not UTF-8 JSON") from None
    if not isinstance(hello, dict):
        raise InvalidArgument("hello must be a JSON object")
    path = hello.get("path", "/")
    if path is None:
        path = "/"
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument("hello path must be a string starting with /")
    subprotocol = hello.get("subprotocol")
    if subprotocol is not None and not isinstance(subprotocol, str):
        raise InvalidArgument("hello subprotocol must be a string or null")
    return ConnectRequest(
        peer=peer,
        path=path,
        params=_string_map(hello, "params"),
        headers=_string_map(hello, "headers", lower=True),
        subprotocol=subprotocol if subprotocol in subprotocols else None,
    )


@implementer(IClientConnection)
class FabricTcpProtocol(OutboundQueue, Protocol):
    """
    One client's raw TCP connection.

    :ivar client_id: the id the gate gave the client, once its hello was
        accepted.
    :ivar is_closed: fires once the connection has gone.
    """

    _log = Logger()

    factory: FabricTcpFactory
    client_id: str | None = None

    def __init__(self) -> None:
        self.is_closed: Deferred[None] = Deferred()
        self._state = _HELLO
        # Inbound bytes not parsed yet, kept as a list so that a large frame
        # arriving in many reads is joined once, not once per read.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._needed = 4
        self._limit = MAX_HELLO_SIZE + 1
        self._parsing = False
        # An asynchronous authenticator is checking the hello.
        self._checking = False
        # The gate asked us to stop reading.
        self._held = False
        # Whether anything came from the client since the last idle check.
        self._heard = False
        self._timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._resume_call: IDelayedCall | None = None
        self._close_code: int | None = None
        # Set when a gatekeeper is configured: the connection's place in the
        # connection caps, its rate limiter, and its credentials' watcher.
        self._ticket: Any = None
        self._identity: Identity | None = None
        self._bucket: Any = None
        self._lifetime: Any = None

    # -- Twisted callbacks --------------------------------------------------------

    def connectionMade(self) -> None:
        """
        Count the connection, register as the transport's producer and wait
        for the hello.
        """
        factory = self.factory
        factory.connections.add(self)
        self.transport.registerProducer(self, True)
        limit = factory.settings.max_connections
        if limit and len(factory.connections) > limit:
            self._send_close(CLOSE_TRY_AGAIN_LATER, "maximum number of connections reached")
            return
        self._timer = factory.clock.callLater(
            factory.settings.handshake_timeout, self._hello_timed_out
        )

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the client: parse every complete frame.
        """
        if self._state >= _CLOSING:
            return
        self._heard = True
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= self._needed and not self._held:
            self._parse()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The connection has gone: tell the gate.
        """
        self._state = _CLOSED
        self._forget_queued()
        self._chunks = []
        for call in (self._timer, self._close_timer, self._resume_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._close_timer = self._resume_call = None
        factory = self.factory
        factory.connections.discard(self)
        if self._ticket is not None:
            self._ticket.release()
        if self._lifetime is not None:
            self._lifetime.stop()
        if self.client_id is not None:
            factory.metrics.closed_with(self._close_code)
            factory.gate.client_closed(self.client_id)
        self.is_closed.callback(None)

    # -- inbound frames -----------------------------------------------------------

    def _parse(self) -> None:
        if self._parsing:
            # A frame's event resumed reading: the outer loop carries on.
            return
        self._parsing = True
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        offset = 0
        end = len(data)
        needed = 4
        try:
            while self._state != _ADMITTING and self._state < _CLOSING and not self._held:
                if end - offset < 4:
                    needed = 4
                    break
                (length,) = _LENGTH.unpack_from(data, offset)
                if length > self._limit:
                    self._too_big(length - 1)
                    return
                if length == 0:
                    self._fail(CLOSE_PROTOCOL_ERROR, "empty frame (length 0)")
                    return
                if end - offset - 4 < length:
                    needed = 4 + length
                    break
                kind = data[offset + 4]
                payload = data[offset + 5 : offset + 4 + length]
                offset += 4 + length
                self._frame(kind, payload)
        finally:
            self._parsing = False
        if self._state >= _CLOSING:
            return
        rest = data[offset:] if offset else data
        self._chunks = [rest] if rest else []
        self._buffered = len(rest)
        self._needed = needed

    def _frame(self, kind: int, payload: bytes) -> None:
        if self._state == _HELLO:
            if kind == HELLO:
                self._hello(payload)
            else:
                self._fail(CLOSE_PROTOCOL_ERROR, "the first frame must be a hello")
            return
        if kind == TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                return
            if self.client_id is not None and self._allowed():
                if self._lifetime is not None and self._lifetime.handle(payload, self.deliver):
                    return
                self.factory.gate.client_message(self.client_id, text)
        elif kind == BINARY:
            if self.client_id is not None and self._allowed():
                self.factory.gate.client_message(self.client_id, payload)
        elif kind == PING:
            if len(payload) > MAX_CONTROL_SIZE:
                self._fail(CLOSE_PROTOCOL_ERROR, "ping payload over 125 bytes")
            else:
                self._send(_Control(frame(PONG, payload)), len(payload))
        elif kind == PONG:
            # Any frame proves the client alive (``_heard`` is set already).
            pass
        elif kind == CLOSE:
            self._peer_closed(payload)
        elif kind == HELLO:
            self._fail(CLOSE_PROTOCOL_ERROR, "second hello")
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, f"unknown frame type {kind}")

    def _hello(self, payload: bytes) -> None:
        factory = self.factory
        peer = self.transport.getPeer()
        try:
            request = parse_hello(payload, peer_string(peer), factory.subprotocols)
        except InvalidArgument as e:
            self._fail(CLOSE_PROTOCOL_ERROR, str(e))
            return
        gatekeeper = factory.gatekeeper
        if gatekeeper is None:
            self._open(request)
            return
        # The WebSocket edge's admission, with close codes in place of its
        # HTTP statuses (429 -> 1008, 401 -> 4401, 500 -> 1011).
        address = gatekeeper.client_address(
            getattr(peer, "host", None) or "unix", request.headers
        )
        try:
            ticket = self._ticket = gatekeeper.admit(address)
        except LimitExceeded as e:
            self._send_close(CLOSE_POLICY, e.reason)
            return
        self._state = _ADMITTING
        gatekeeper.authenticate(ticket, request.headers, request.params).addCallbacks(
            self._admitted,
            self._refused,
            callbackArgs=(gatekeeper, request),
        )
        if self._state == _ADMITTING:
            # An asynchronous authenticator: read nothing more until it has
            # answered, so that a client cannot pile data up meanwhile.
            self._checking = True
            self.transport.pauseProducing()

    def _admitted(
        self, identity: Identity, gatekeeper: Gatekeeper, request: ConnectRequest
    ) -> None:
        if self._state != _ADMITTING:
            # Closed (hello timeout, peer gone) while authenticating.
            return
        if gatekeeper.authenticator is not None:
            # The token stays out of what the application sees.
            headers, params = without_credentials(request.headers, request.params)
            request = replace(
                request, headers=headers, params=params, uid=identity.uid,
                claims=identity.claims,
            )
        self._identity = identity
        self._bucket = gatekeeper.bucket()
        self._open(request)
        if self._state == _OPEN:
            self._lifetime = gatekeeper.lifetime(identity, self._token_expired)
        if self._checking:
            self._checking = False
            if self._state == _OPEN and not self._held:
                self.transport.resumeProducing()
            if self._buffered and self._resume_call is None:
                # Frames that came behind the hello while it was checked.
                self._resume_call = self.factory.clock.callLater(0, self._parse_held)

    def _refused(self, failure: Failure) -> None:
        if self._state != _ADMITTING:
            return
        self._checking = False
        if failure.check(AuthenticationFailed):
            self._send_close(CLOSE_UNAUTHORIZED, str(failure.value))
        elif failure.check(LimitExceeded):
            self._send_close(CLOSE_POLICY, failure.value.reason)  # type: ignore[union-attr]
        else:
            self._log.failure("authenticating a TCP client failed", failure)
            self._send_close(CLOSE_INTERNAL_ERROR, "internal error")

    def _open(self, request: ConnectRequest) -> None:
        factory = self.factory
        self._cancel_timer()
        self._state = _OPEN
        self._limit = factory.settings.max_message_size + 1
        # The answer goes out before the gate hears of the client, so that a
        # close the gate sends (a refused on_connect) comes after it, as a
        # WebSocket close comes after the handshake.
        self.transport.write(
            frame(HELLO, json.dumps({"subprotocol": request.subprotocol}).encode("utf-8"))
        )
        try:
            self.client_id = factory.gate.client_opened(self, request)
        except Exception:
            self._log.failure("could not open a TCP client connection")
            self._send_close(CLOSE_INTERNAL_ERROR, "internal error")
            return
        if self._state == _OPEN:
            self._schedule_idle_check()

    def _allowed(self) -> bool:
        """
        Take a token from the rate limiter; close the client if it has none.
        """
        bucket = self._bucket
        if bucket is None or bucket.take():
            return True
        self._bucket = None
        self.factory.gatekeeper.rate_limited()  # type: ignore[union-attr]
        # The gate forgets the client at once; its close comes back here.
        self.factory.gate.close_client(self.client_id, CLOSE_POLICY, "rate limit")  # type: ignore[arg-type]
        return False

    def _token_expired(self) -> None:
        if self.client_id is not None:
            self.factory.gate.close_client(self.client_id, CLOSE_TOKEN_EXPIRED, "token expired")

    def _peer_closed(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._fail(CLOSE_PROTOCOL_ERROR, "close payload of 1 byte")
            return
        self._close_code = _CODE.unpack_from(payload)[0] if payload else CLOSE_NO_STATUS
        # The peer closes its side after its close frame (docs/wire-protocol.md):
        # nothing is answered, the connection just ends.
        self._state = _CLOSING
        self._forget_queued()
        self._cancel_timer()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _too_big(self, size: int) -> None:
        if self._state == _HELLO:
            self._fail(CLOSE_TOO_BIG, f"hello of {size} bytes exceeds {MAX_HELLO_SIZE}")
        else:
            self._fail(
                CLOSE_TOO_BIG,
                f"message of {size} bytes exceeds the limit of "
                f"{self.factory.settings.max_message_size}",
            )

    def _fail(self, code: int, reason: str) -> None:
        """
        The client broke the protocol: close at once, dropping what waits.
        """
        self._log.debug(
            "closing TCP client {peer} with {code}: {reason}",
            peer=self.transport.getPeer(),
            code=code,
            reason=reason,
        )
        self._send_close(code, reason)

    # -- timers -------------------------------------------------------------------

    def _hello_timed_out(self) -> None:
        self._timer = None
        if self._state <= _ADMITTING:
            self._fail(
                CLOSE_PROTOCOL_ERROR,
                f"no hello within {self.factory.settings.handshake_timeout:g} s",
            )

    def _schedule_idle_check(self) -> None:
        interval = self.factory.settings.ping_interval
        if interval > 0:
            self._heard = False
            self._timer = self.factory.clock.callLater(interval, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self._state != _OPEN:
            return
        if self._heard or self._held:
            # The client spoke (or we are not reading it): no ping needed.
            self._schedule_idle_check()
            return
        self._send(_Control(frame(PING, b"")), 0)
        timeout = self.factory.settings.ping_timeout
        if timeout > 0:
            self._timer = self.factory.clock.callLater(timeout, self._pong_check)
        else:
            self._schedule_idle_check()

    def _pong_check(self) -> None:
        self._timer = None
        if self._state != _OPEN:
            return
        if self._heard or self._held:
            self._schedule_idle_check()
            return
        # A dead peer reads nothing: drop it without a close frame, as the
        # WebSocket edge does (the client sees the connection reset).
        self._log.debug(
            "TCP client {client_id} did not answer a ping; dropping it",
            client_id=self.client_id,
        )
        self._state = _CLOSING
        self._forget_queued()
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- IClientConnection -----------------------------------------------------------

    def deliver(self, message: str | bytes) -> None:
        """
        Send ``message`` now, or queue it while the client is behind.
        """
        if type(message) is str:
            payload = message.encode("utf-8")
            self._send(frame(TEXT, payload), len(payload))
        else:
            self._send(frame(BINARY, message), len(message))  # type: ignore[arg-type]

    def deliver_shared(self, shared: SharedMessage) -> None:
        """
        Send a message shared by many recipients, framed once for all TCP
        clients.
        """
        framed = shared.framed.get("tcp")
        if framed is None:
            framed = shared.framed["tcp"] = frame(
                BINARY if shared.is_binary else TEXT, shared.payload
            )
        self._send(framed, len(shared.payload))

    def close(self, code: int, reason: str) -> None:
        """
        Close the connection with ``code``, after the messages already queued.
        """
        if self._state >= _CLOSING:
            return
        self._close_after_queued(code, reason)

    def pause_reading(self) -> None:
        """
        Stop reading from the client.
        """
        self._held = True
        if self._state < _CLOSING:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """
        Read from the client again.
        """
        if not self._held:
            return
        self._held = False
        if self._state >= _CLOSING:
            return
        self.transport.resumeProducing()
        if self._buffered and self._resume_call is None:
            # Frames read before the pause are parsed on the next reactor
            # turn, not inside the gate's call that resumed us.
            self._resume_call = self.factory.clock.callLater(0, self._parse_held)

    def _parse_held(self) -> None:
        self._resume_call = None
        if self._state < _CLOSING and not self._held and self._buffered >= self._needed:
            self._parse()

    # -- the outbound queue ------------------------------------------------------------

    def _can_write(self) -> bool:
        return self._state == _OPEN

    def _write(self, item: Any, size: int) -> None:
        if type(item) is bytes:
            self.transport.write(item)
            self.factory.metrics.message_out(size)
        else:
            # A ping or pong: not a message.
            self.transport.write(item.frame)

    def _send_close(self, code: int, reason: str) -> None:
        if self._state >= _CLOSING:
            return
        self._state = _CLOSING
        self._close_code = code
        self._forget_queued()
        self._cancel_timer()
        transport = self.transport
        transport.write(close_frame(code, reason))
        # Unregistered first: a paused producer would keep loseConnection
        # from ever finishing.
        transport.unregisterProducer()
        transport.loseConnection()
        # A peer that does not read lets the close frame sit in the buffer.
        self._close_timer = self.factory.clock.callLater(
            CLOSE_TIMEOUT, transport.abortConnection
        )


class FabricTcpFactory(Factory):
    """
    Builds :class:`FabricTcpProtocol` connections for one gate.

    :param gate: the gate the connections belong to.
    :param settings: limits (those of the WebSocket edge).
    :param metrics: the counters to update.
    :param clock: schedules the timeouts and pings.
    :param subprotocols: the subprotocols a hello may select (by default the
        WebSocket edge's); any other is answered with ``null``, as a
        WebSocket server selects none it does not speak.
    :param gatekeeper: authentication and connection limits, shared with
        the node's other transports (pass the WebSocket factory's); by
        default one is made from ``settings`` if they configure
        authentication or a limit.
    """

    protocol = FabricTcpProtocol
    noisy = False

    def __init__(
        self,
        gate: Gate,
        settings: EdgeSettings,
        metrics: Metrics,
        clock: Any,
        subprotocols: Sequence[str] = SUBPROTOCOLS,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self.gate = gate
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.subprotocols = tuple(subprotocols)
        if gatekeeper is None:
            gatekeeper = make_gatekeeper(settings, metrics, clock)
        #: Authentication and limits, or ``None`` when nothing is configured.
        self.gatekeeper = gatekeeper
        #: The open connections (before or after their hello).
        self.connections: set[FabricTcpProtocol] = set()

    def doStop(self) -> None:
        """
        The listener has stopped (shutdown): close the connections that have
        not said hello yet. The gate does not know them, so its own shutdown
        would not.
        """
        for protocol in list(self.connections):
            if protocol.client_id is None:
                protocol.close(CLOSE_GOING_AWAY, "server shutting down")
        super().doStop()
