"""
The WebSocket edge: an Autobahn server protocol and factory that translate
between WebSocket connections and the :class:`~wsfabric.gate.gate.Gate`.

The protocol decides nothing about routing. It checks the handshake (origin),
turns frames into gate events, and carries the gate's messages out through a
per-connection outbound queue bounded in bytes. The queue is driven by
Twisted's producer/consumer protocol: the transport pauses the connection
when its write buffer is full, messages then wait in the queue, and a client
whose queue goes over the bound has stopped reading; it is closed with 1008
"slow consumer" and the drop is counted.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from zope.interface import implementer

from wsfabric.errors import AuthenticationFailed, LimitExceeded
from wsfabric.gate.auth import CLOSE_TOKEN_EXPIRED, Gatekeeper, Identity, without_credentials
from wsfabric.gate.gate import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_POLICY, Gate
from wsfabric.gate.limits import LimitSettings
from wsfabric.gate.origins import OriginPolicy
from wsfabric.gate.outbound import OutboundQueue
from wsfabric.interfaces import IClientConnection
from wsfabric.message import ConnectRequest, SharedMessage
from wsfabric.metrics import Metrics

# Autobahn's connection states.
_OPEN = WebSocketServerProtocol.STATE_OPEN
_CLOSING = WebSocketServerProtocol.STATE_CLOSING
_CLOSED = WebSocketServerProtocol.STATE_CLOSED

_SMALL = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LARGE = struct.Struct("!BBQ")

# The ``code`` of the JSON body of a refused handshake, by HTTP status.
_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    429: "too_many_connections",
    500: "internal",
    503: "unavailable",
}

#: Marks a close queued behind messages that are still waiting to go out.

#: The WebSocket subprotocols accepted: the codecs of wsfabric.routing.
SUBPROTOCOLS = ("wsfabric.json", "wsfabric.proto")


def frame(payload: bytes, is_binary: bool) -> bytes:
    """
    Frame one unfragmented, unmasked, uncompressed WebSocket message, as a
    server sends it (RFC 6455 section 5.2).

    :param payload: the message payload.
    :param is_binary: binary (opcode 2) or text (opcode 1).
    :return: the frame.
    """
    first = 0x82 if is_binary else 0x81
    size = len(payload)
    if size < 126:
        return _SMALL.pack(first, size) + payload
    if size < 0x10000:
        return _MEDIUM.pack(first, 126, size) + payload
    return _LARGE.pack(first, 127, size) + payload


def _truncate_utf8(text: str, limit: int = 123) -> str:
    # A close reason is at most 123 bytes of UTF-8 (RFC 6455 5.5); cut on a
    # character boundary.
    data = text.encode("utf-8")[:limit]
    return data.decode("utf-8", "ignore")


@dataclass(frozen=True)
class EdgeSettings:
    """
    The limits and policies of a WebSocket edge.

    :ivar max_message_size: largest client message in bytes; a larger one
        closes the client with 1009.
    :ivar max_outbound_queue: bytes that may wait for a client that is not
        reading before it is closed as a slow consumer.
    :ivar handshake_timeout: seconds a client has to complete the opening
        handshake.
    :ivar ping_interval: seconds between server pings (0 disables them).
    :ivar ping_timeout: seconds a client has to answer a ping.
    :ivar max_connections: most clients held at once (0 for no limit); over it
        the handshake gets HTTP 503.
    :ivar origins: the allowed browser origins.
    :ivar compression: whether permessage-deflate is accepted.
    :ivar authenticator: who clients are (``None``: all anonymous).
    :ivar limits: per-address and per-uid caps and the message rate.
    :ivar drain_window: seconds over which a gate shutting down spreads the
        closing of its clients.
    """

    max_message_size: int = 1048576
    max_outbound_queue: int = 1048576
    handshake_timeout: float = 5.0
    ping_interval: float = 20.0
    ping_timeout: float = 10.0
    max_connections: int = 50000
    origins: OriginPolicy = field(default_factory=OriginPolicy)
    compression: bool = False
    authenticator: Any = None
    limits: LimitSettings = field(default_factory=LimitSettings)
    drain_window: float = 0.0


@implementer(IClientConnection)
class FabricServerProtocol(OutboundQueue, WebSocketServerProtocol):
    """
    One client's WebSocket connection.
    """

    # Autobahn already uses ``log``.
    _log = Logger()

    client_id: str | None = None
    _request: ConnectRequest | None = None
    # Set when a gatekeeper is configured: the connection's place in the
    # connection caps, its rate limiter, and its credentials' watcher.
    _ticket: Any = None
    _identity: Identity | None = None
    _bucket: Any = None
    _lifetime: Any = None

    # Autobahn's _connectionMade copies every option named in CONFIG_ATTRS
    # from the factory, then pformats the whole list for a debug line that
    # is dropped unless debug logging is on: about a fifth of a connection's
    # CPU at the gate (bench P8's profile). The options are copied here
    # instead and Autobahn is handed an empty list.
    CONFIG_ATTRS: tuple[str, ...] = ()
    _OPTION_NAMES: tuple[str, ...] = tuple(WebSocketServerProtocol.CONFIG_ATTRS)

    # -- Twisted and Autobahn callbacks ----------------------------------------------

    def _connectionMade(self) -> None:
        """
        Take the factory's protocol options (those not set on this class),
        then let Autobahn set up the connection.
        """
        factory = self.factory
        for name in self._OPTION_NAMES:
            if not hasattr(self, name):
                setattr(self, name, getattr(factory, name))
        super()._connectionMade()

    def connectionMade(self) -> None:
        """
        Count the connection in the factory, which waits for its connections
        on shutdown.
        """
        self.factory.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        """
        Forget the connection.
        """
        self.factory.connections.discard(self)
        if self._ticket is not None:
            self._ticket.release()
        if self._lifetime is not None:
            self._lifetime.stop()
        super().connectionLost(reason)

    def onConnect(self, request: Any) -> Any:
        """
        Check the handshake and keep what the application will see of it.
        """
        factory: FabricServerFactory = self.factory
        headers = request.headers
        if not factory.settings.origins.allows(
            headers.get("origin"), headers.get("host")
        ):
            factory.metrics.dropped("origin")
            raise ConnectionDeny(403, "origin not allowed")
        # The first offered subprotocol we speak (the routing codecs); a
        # client that offers none of them connects without one.
        subprotocol = next((p for p in request.protocols if p in SUBPROTOCOLS), None)
        self._request = ConnectRequest(
            peer=request.peer,
            path=request.path,
            params={name: values[0] for name, values in request.params.items() if values},
            headers=dict(headers),
            subprotocol=subprotocol,
        )
        if factory.gatekeeper is not None:
            return self._admit(factory.gatekeeper, subprotocol)
        return subprotocol

    def _admit(self, gatekeeper: Gatekeeper, accepted: Any) -> Any:
        """
        Apply the connection caps and authenticate the client.

        :param accepted: what ``onConnect`` answers once the client is
            admitted (the subprotocol).
        :return: a Deferred of ``accepted`` (fired at once unless a custom
            authenticator is asynchronous), failing with ``ConnectionDeny``
            (401, 429) if the client is refused.
        """
        request = self._request
        assert request is not None
        peer = self.transport.getPeer()
        address = gatekeeper.client_address(
            getattr(peer, "host", None) or "unix", request.headers
        )
        try:
            ticket = self._ticket = gatekeeper.admit(address)
        except LimitExceeded as e:
            raise ConnectionDeny(429, e.reason) from None

        def admitted(identity: Identity) -> Any:
            headers, params = without_credentials(request.headers, request.params)
            if gatekeeper.authenticator is not None:
                # The token stays out of what the application sees.
                self._request = replace(
                    request, headers=headers, params=params, uid=identity.uid,
                    claims=identity.claims,
                )
            self._identity = identity
            self._bucket = gatekeeper.bucket()
            return accepted

        def refused(failure: Any) -> None:
            if failure.check(AuthenticationFailed):
                raise ConnectionDeny(401, str(failure.value))
            if failure.check(LimitExceeded):
                raise ConnectionDeny(429, failure.value.reason)
            self._log.failure("authenticating a client failed", failure)
            raise ConnectionDeny(500, "internal error")

        return gatekeeper.authenticate(ticket, request.headers, request.params).addCallbacks(
            admitted, refused
        )

    def sendHttpErrorResponse(
        self, code: int, reason: str, responseHeaders: Any = None
    ) -> None:
        """
        Answer a refused handshake with a JSON body:
        ``{"error": {"code": "unauthorized", "message": reason}}``.
        """
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps(
            {"error": {"code": _HTTP_ERROR_CODES.get(code, "refused"), "message": reason}}
        ).encode("utf-8")
        head = [
            f"HTTP/1.1 {code} {phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head.extend(f"{name}: {value}" for name, value in responseHeaders or ())
        self.sendData(("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + body)

    def onOpen(self) -> None:
        """
        The handshake is done: register as the transport's producer and hand
        the client to the gate.
        """
        # onOpen runs in a Deferred chain without an errback, so an error
        # here would go unnoticed and leave the client hanging.
        if self.factory.draining:
            self.sendCloseFrame(CLOSE_GOING_AWAY, b"server shutting down", isReply=False)
            return
        try:
            self.transport.registerProducer(self, True)
            self.client_id = self.factory.gate.client_opened(self, self._request)
            gatekeeper = self.factory.gatekeeper
            if gatekeeper is not None and self._identity is not None:
                self._lifetime = gatekeeper.lifetime(self._identity, self._token_expired)
        except Exception:
            self._log.failure("could not open a client connection")
            self.sendCloseFrame(CLOSE_INTERNAL_ERROR, b"internal error", isReply=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        A message from the client: text as ``str``, binary as ``bytes``.
        """
        if self.client_id is not None:
            if self._bucket is not None and not self._bucket.take():
                self._rate_limited()
                return
            if (
                self._lifetime is not None
                and not isBinary
                and self._lifetime.handle(payload, self.deliver)
            ):
                return
            self.factory.gate.client_message(
                self.client_id, payload if isBinary else payload.decode("utf-8")
            )

    def _rate_limited(self) -> None:
        self._bucket = None
        self.factory.gatekeeper.rate_limited()
        # The gate forgets the client at once (later messages are dropped);
        # its close comes back here.
        self.factory.gate.close_client(self.client_id, CLOSE_POLICY, "rate limit")

    def _token_expired(self) -> None:
        if self.client_id is not None:
            self.factory.gate.close_client(
                self.client_id, CLOSE_TOKEN_EXPIRED, "token expired"
            )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The connection has gone: tell the gate.
        """
        self._forget_queued()
        if self.client_id is not None:
            self.factory.metrics.closed_with(code)
            self.factory.gate.client_closed(self.client_id)

    # -- IClientConnection -----------------------------------------------------------

    def deliver(self, message: str | bytes) -> None:
        """
        Send ``message`` now, or queue it while the client is behind.
        """
        if type(message) is str:
            payload, is_binary = message.encode("utf-8"), False
        else:
            payload, is_binary = message, True
        if self._perMessageCompress is None:
            self._send(frame(payload, is_binary), len(payload))
        else:
            self._send((payload, is_binary), len(payload))

    def deliver_shared(self, shared: SharedMessage) -> None:
        """
        Send a message shared by many recipients, framed once for all.
        """
        if self._perMessageCompress is None:
            framed = shared.framed.get("ws")
            if framed is None:
                framed = shared.framed["ws"] = frame(shared.payload, shared.is_binary)
            self._send(framed, len(shared.payload))
        else:
            self._send((shared.payload, shared.is_binary), len(shared.payload))

    def close(self, code: int, reason: str) -> None:
        """
        Close the connection with ``code``, after the messages already queued.
        """
        if self.state != _OPEN:
            if self.state not in (_CLOSING, _CLOSED):
                # Still in the handshake: nothing to close gracefully.
                self.dropConnection(abort=True)
            return
        self._close_after_queued(code, reason)

    def pause_reading(self) -> None:
        """
        Stop reading from the client.
        """
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """
        Read from the client again.
        """
        if self.transport is not None:
            self.transport.resumeProducing()

    # -- the outbound queue (OutboundQueue) ---------------------------------------------

    def _can_write(self) -> bool:
        return self.state == _OPEN

    def _write(self, item: Any, size: int) -> None:
        if type(item) is bytes:
            self.transport.write(item)
        else:
            payload, is_binary = item
            self.sendMessage(payload, is_binary)
        self.factory.metrics.message_out(size)

    def _send_close(self, code: int, reason: str) -> None:
        if self.state == _OPEN:
            # sendCloseFrame, not sendClose: the gate also closes with codes
            # reserved for endpoints (1001, 1008, 1011), which sendClose
            # refuses. Autobahn drops the TCP connection if the client does
            # not answer within the close handshake timeout.
            self.sendCloseFrame(
                code=code,
                reasonUtf8=_truncate_utf8(reason).encode("utf-8"),
                isReply=False,
            )


class FabricServerFactory(WebSocketServerFactory):
    """
    Builds :class:`FabricServerProtocol` connections for one gate.

    :param gate: the gate the connections belong to.
    :param settings: limits and policies.
    :param metrics: the counters to update.
    :param reactor: the reactor Autobahn schedules its timers on.
    :param gatekeeper: authentication and connection limits, shared with
        the node's other transports; by default one is made from
        ``settings`` if they configure authentication or a limit.
    """

    protocol = FabricServerProtocol
    noisy = False

    def __init__(
        self,
        gate: Gate,
        settings: EdgeSettings,
        metrics: Metrics,
        reactor: Any,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        # No Server header: there is no need to tell the world which versions
        # run here.
        super().__init__(reactor=reactor, server=None)
        # Autobahn uses ``server`` for its Server header, so the gate gets
        # another name.
        self.gate = gate
        self.settings = settings
        self.metrics = metrics
        if gatekeeper is None:
            gatekeeper = make_gatekeeper(settings, metrics, reactor)
        #: Authentication and limits, or ``None`` when nothing is configured.
        self.gatekeeper = gatekeeper
        #: The open connections (handshaking or open).
        self.connections: set[FabricServerProtocol] = set()
        #: Set when the gate shuts down: a handshake that finishes after
        #: that is closed with 1001 at once instead of joining the gate
        #: (which has already closed its clients and would never close it).
        self.draining = False
        options: dict[str, Any] = dict(
            maxFramePayloadSize=settings.max_message_size,
            maxMessagePayloadSize=settings.max_message_size,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=1,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout,
            maxConnections=settings.max_connections,
            # Send a close frame (1009 for an oversize message, 1002 for a
            # protocol error) rather than just dropping the TCP connection,
            # so clients learn why.
            failByDrop=False,
            # Origins are checked in onConnect, which answers 403.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            # A plain GET on the WebSocket path gets 426, not a status page.
            webStatus=False,
        )
        if settings.compression:
            options["perMessageCompressionAccept"] = _accept_deflate
        self.setProtocolOptions(**options)


def _accept_deflate(offers: list[Any]) -> Any:
    from autobahn.websocket.compress import (
        PerMessageDeflateOffer,
        PerMessageDeflateOfferAccept,
    )

    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def make_gatekeeper(settings: EdgeSettings, metrics: Metrics, clock: Any) -> Gatekeeper | None:
    """
    :return: the gatekeeper that ``settings`` call for, or ``None`` when
        they configure no authentication and no limit (the handshake then
        costs nothing more).
    """
    limits = settings.limits
    if settings.authenticator is None and not limits.any_connection_cap and not limits.rate:
        return None
    return Gatekeeper(settings.authenticator, limits, clock, metrics)
