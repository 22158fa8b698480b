"""
The gate's links to backends.

A gate dials every live backend with a reconnecting
:class:`~twisted.application.internet.ClientService`, authenticates on each
new connection (:class:`~wsfabric.commands.Challenge` and
:class:`~wsfabric.commands.Hello`), and pings it so that a backend that hangs
is dropped rather than waited for.

:class:`BackendPool` is the gate's :class:`~wsfabric.interfaces.IClientEvents`.
Backends are grouped by the service they provide (``--service``). Each
client's events go, per service, to one backend of it, chosen by rendezvous
hashing over that service's connected backends and kept while that backend
stays connected, so one client's events stay in order within each service.
A routed message ``NAME.route`` goes to service ``NAME`` when a backend of it
is registered; everything else, and every connect and close, to ``default``
(connect and close also to the services that asked for them). When a
backend goes away its clients move to the others of its service at their
next event, without being disconnected (the new backend sees their messages
and close without a connect: application state belongs in the fabric, not
in backend memory). While no ``default`` backend is connected, clients'
events for it wait at the gate, bounded, and their reading is paused.
docs/services.md states the rules.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.amplink import Batcher, RemoteCaller, contained, send_without_delay
from wsfabric.commands import (
    PROTOCOL_VERSION,
    AuthenticationFailed,
    BindUid,
    Challenge,
    ClientConnected,
    ClientEvents,
    CloseClient,
    Deliver,
    Draining,
    EventBatch,
    Hello,
    JoinGroup,
    LeaveGroup,
    Ping,
    SetInfo,
    Throttle,
    UnbindUid,
    UpdateInfo,
    decode_deliveries,
    proof,
    proofs_match,
)
from wsfabric.errors import ClusterUnavailable, Reject
from wsfabric.gate.gate import Gate
from wsfabric.interfaces import IClientEvents
from wsfabric.message import ConnectRequest
from wsfabric.metrics import Metrics
from wsfabric.routing.codec import BadEnvelope, Codec, Inbound, codec_for, codec_of_message

#: The service of backends started without ``--service``: it hears every
#: client's connect and close, and every message no other service claims.
DEFAULT_SERVICE = "default"
#: The error code a client gets for a routed message to a service that has
#: no live backend.
SERVICE_UNAVAILABLE = "service_unavailable"
#: Events one client may have waiting for a backend before its reading is
#: paused.
MAX_WAITING_EVENTS = 64


class LinkSettings:
    """
    How a gate talks to backends.

    :param gate: the gate.
    :param secret: the cluster secret.
    :param clock: for batching, timeouts, pings and reconnects.
    :param metrics: the gate's counters.
    :param call_timeout: seconds a call may take.
    :param ping_interval: seconds between pings.
    :param max_in_flight: calls that may wait for an answer on one link.
    """

    def __init__(
        self,
        gate: Gate,
        secret: bytes,
        clock: IReactorTime,
        metrics: Metrics,
        call_timeout: float = 10.0,
        ping_interval: float = 2.0,
        max_in_flight: int = 10000,
    ) -> None:
        self.gate = gate
        self.secret = secret
        self.clock = clock
        self.metrics = metrics
        self.call_timeout = call_timeout
        self.ping_interval = ping_interval
        self.max_in_flight = max_in_flight


class BackendConnection(amp.AMP):
    """
    The gate's connection to one backend.

    :param settings: how to talk to backends.
    :param on_ready: called with this connection once it is authenticated.
    :param on_lost: called with this connection when it is gone, or when it
        announces it is draining (only if it was ready).
    """

    _log = Logger()

    def __init__(
        self,
        settings: LinkSettings,
        on_ready: Callable[[BackendConnection], None],
        on_lost: Callable[[BackendConnection], None],
    ) -> None:
        super().__init__()
        self._settings = settings
        self._on_ready = on_ready
        self._on_lost = on_lost
        self.backend_id: str | None = None
        self.service: str | None = None
        #: Whether the backend (of a service other than ``default``) wants
        #: client connect and close events.
        self.client_events = False
        #: The key the pool dials it by, if any.
        self.key: str | None = None
        self.ready = False
        self.gone = False
        self.draining = False
        self._events = Batcher(settings.clock, EventBatch, self._send_events)
        self._caller = RemoteCaller(
            self, settings.clock, settings.call_timeout, settings.max_in_flight, "backend",
            metrics=settings.metrics,
        )
        self._pinger: LoopingCall | None = None
        self._pings_missed = 0

    # -- connection life -----------------------------------------------------------

    def connectionMade(self) -> None:
        """
        Authenticate at once.
        """
        super().connectionMade()
        send_without_delay(self.transport)
        self._authenticate()

    def _authenticate(self) -> None:
        gate_nonce = os.urandom(16)
        secret = self._settings.secret
        gate_id = self._settings.gate.gate_id

        def hello(answer: dict[str, Any]) -> Deferred[dict[str, Any]]:
            backend_nonce = answer["nonce"]
            self._backend_nonce = backend_nonce
            return self._caller.call(
                Hello,
                version=PROTOCOL_VERSION,
                gate_id=gate_id,
                nonce=gate_nonce,
                proof=proof(secret, b"gate", backend_nonce, gate_nonce, gate_id.encode()),
            )

        def check(answer: dict[str, Any]) -> None:
            expected = proof(
                secret, b"backend", gate_nonce, self._backend_nonce,
                answer["backend_id"].encode("ascii"),
            )
            if not proofs_match(expected, answer["proof"]):
                raise AuthenticationFailed("the backend does not hold the cluster secret")
            self.backend_id = answer["backend_id"]
            link = getattr(self, "factory", None)
            if isinstance(link, _LinkFactory):
                link.auth_failures = 0
            self.service = answer["service"]
            self.client_events = bool(answer.get("client_events"))
            self.ready = True
            self._pinger = LoopingCall(self._ping)
            self._pinger.clock = self._settings.clock
            self._pinger.start(self._settings.ping_interval, now=False)
            self._on_ready(self)

        def refused(failure: Failure) -> None:
            # A backend with another secret stays wrong until someone fixes
            # the configuration: back off (to a minute), so that the gate
            # does not dial it, and log, ten times a second.
            link = getattr(self, "factory", None)
            retry = None
            if isinstance(link, _LinkFactory):
                link.auth_failures += 1
                retry = link.retry_delay(0)
            self._log.error(
                "could not authenticate with the backend at {peer}: {error}"
                "{retry_note}",
                peer=self._peer(),
                error=failure.getErrorMessage(),
                retry_note=f"; trying again in {retry:g} s" if retry is not None else "",
            )
            if self.transport is not None:
                self.transport.abortConnection()

        self._caller.call(Challenge).addCallback(hello).addCallbacks(check, refused)

    def connectionLost(self, reason: Failure) -> None:
        """
        The backend is gone: queued events are lost (and counted).
        """
        self.gone = True
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        dropped = self._events.discard()
        if dropped:
            self._settings.metrics.dropped("backend_gone", dropped)
            self._log.error(
                "backend {backend_id} went away; {count} client events sent to it are lost",
                backend_id=self.backend_id,
                count=dropped,
            )
        was_ready, self.ready = self.ready, False
        super().connectionLost(reason)
        if was_ready and not self.draining:
            self._on_lost(self)

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Run no command of a backend that has not authenticated.
        """
        if not self.ready and amp.COMMAND in box:
            self.transport.abortConnection()
            return
        super().ampBoxReceived(box)

    def flush(self) -> None:
        """
        Send the client events queued for this backend now.
        """
        self._events.flush()

    def retire(self) -> None:
        """
        Stop using this connection: no new client events go to it, those
        queued are sent, then it closes (and is dialled again).
        """
        if self.ready and not self.draining:
            self.draining = True
            self._on_lost(self)
        self.flush()
        if self.transport is not None:
            # Not abortConnection: that would discard what is still buffered.
            self.transport.loseConnection()

    def _ping(self) -> None:
        def answered(_: object) -> None:
            self._pings_missed = 0

        def missed(failure: Failure) -> None:
            self._pings_missed += 1
            if self._pings_missed >= 2 and not self.gone:
                self._log.error(
                    "backend {backend_id} stopped answering; dropping the connection",
                    backend_id=self.backend_id,
                )
                self.transport.abortConnection()

        self._caller.call(Ping).addCallbacks(answered, missed)

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    # -- events to the backend ---------------------------------------------------------

    def _send_events(self, data: bytes) -> None:
        try:
            self.callRemote(ClientEvents, events=data)
        except Exception:
            self._settings.metrics.dropped("backend_gone")
            self._log.failure("could not send events to backend {backend_id}",
                              backend_id=self.backend_id)

    def connect(self, client_id: str, request: ConnectRequest) -> Deferred[None]:
        """
        Run ``on_connect`` on the backend.

        :return: fires when it has run; fails with
            :class:`~wsfabric.errors.Reject` if the application refused the
            client.
        """
        self._events.flush()

        def outcome(answer: dict[str, Any]) -> None:
            if answer.get("reject_code") is not None:
                raise Reject(answer["reject_code"], answer.get("reject_reason") or "")

        return self._caller.call(
            ClientConnected, about=client_id, client_id=client_id, request=request.to_dict()
        ).addCallback(outcome)

    def message(self, client_id: str, message: str | bytes) -> None:
        """
        Queue a message of ``client_id``.
        """
        self._events.batch().message(client_id, message)

    def closed(self, client_id: str) -> None:
        """
        Queue the close of ``client_id``.
        """
        self._events.batch().closed(client_id)

    # -- the backend's calls ---------------------------------------------------------------

    @Deliver.responder
    def deliver(self, deliveries: bytes) -> dict[str, Any]:
        """
        Send a batch of messages to this gate's clients.
        """
        gate = self._settings.gate
        try:
            for client_ids, message in decode_deliveries(deliveries):
                gate.send_to_clients(client_ids, message)
        except ValueError:
            self._settings.metrics.dropped("malformed_batch")
            self._log.failure("dropped the rest of a malformed delivery batch from {backend_id}",
                              backend_id=self.backend_id)
        return {}

    @JoinGroup.responder
    @contained
    def join_group(self, client_id: str, group: str) -> Deferred[dict[str, Any]]:
        """
        Add a client to a group.
        """
        return self._settings.gate.join_group(client_id, group).addCallback(_empty)

    @LeaveGroup.responder
    @contained
    def leave_group(self, client_id: str, group: str) -> Deferred[dict[str, Any]]:
        """
        Remove a client from a group.
        """
        return self._settings.gate.leave_group(client_id, group).addCallback(_empty)

    @BindUid.responder
    @contained
    def bind_uid(self, client_id: str, uid: str) -> Deferred[dict[str, Any]]:
        """
        Bind a client to a uid.
        """
        return self._settings.gate.bind_uid(client_id, uid).addCallback(_empty)

    @UnbindUid.responder
    @contained
    def unbind_uid(self, client_id: str, uid: str) -> Deferred[dict[str, Any]]:
        """
        Unbind a client from a uid.
        """
        return self._settings.gate.unbind_uid(client_id, uid).addCallback(_empty)

    @SetInfo.responder
    @contained
    def set_info(self, client_id: str, info: Any) -> Deferred[dict[str, Any]]:
        """
        Replace a client's info.
        """
        return self._settings.gate.set_info(client_id, info).addCallback(_empty)

    @UpdateInfo.responder
    @contained
    def update_info(self, client_id: str, info: Any) -> Deferred[dict[str, Any]]:
        """
        Merge into a client's info.
        """
        return self._settings.gate.update_info(client_id, info).addCallback(_empty)

    @CloseClient.responder
    @contained
    def close_client(self, client_id: str, code: int, reason: str) -> Deferred[dict[str, Any]]:
        """
        Close a client.
        """
        return self._settings.gate.close_client(client_id, code, reason).addCallback(_empty)

    @Throttle.responder
    def throttle(self, client_id: str, paused: bool) -> dict[str, Any]:
        """
        Stop or resume reading from a client, as the backend asks.
        """
        if paused:
            self._settings.gate.pause_client(client_id)
        else:
            self._settings.gate.resume_client(client_id)
        return {}

    @Draining.responder
    def backend_draining(self) -> dict[str, Any]:
        """
        The backend is shutting down: its clients move to other backends at
        their next event (the connection stays open until the backend has
        finished the events it has).
        """
        if self.ready and not self.draining:
            self._log.info("backend {backend_id} is draining", backend_id=self.backend_id)
            self.draining = True
            self._events.flush()
            self._on_lost(self)
        return {}

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        """
        Answer at once.
        """
        return {}


def _empty(_: object) -> dict[str, Any]:
    return {}


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, pool: BackendPool, key: str | None = None) -> None:
        self._pool = pool
        self._key = key
        #: Authentications refused in a row (reset by one that succeeds).
        self.auth_failures = 0

    def retry_delay(self, attempt: int) -> float:
        """
        Seconds before dialling again: quick after a lost connection, but
        doubling up to a minute while the backend refuses our secret.

        :param attempt: failed connection attempts in a row.
        """
        if self.auth_failures:
            return min(2.0 ** (self.auth_failures - 1), 60.0)
        return _retry_delay(attempt)

    def buildProtocol(self, addr: Any) -> BackendConnection:
        protocol = BackendConnection(self._pool.settings, self._pool._ready, self._pool._lost)
        protocol.key = self._key
        protocol.factory = self
        return protocol


def _retry_delay(attempt: int) -> float:
    # Quick at first, capped at 2 s: a restarted backend is back fast.
    return min(0.1 * 2**attempt, 2.0)


class _Waiting:
    """
    Events of a client that has no backend yet, in order.
    """

    __slots__ = ("events", "paused")

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []
        self.paused = False


class _RateLimitedLog:
    """
    Logs a recurring warning at most once per ``interval`` seconds per key,
    with the count of those left out since: one client flooding a dead
    service must not flood the log.
    """

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = 10.0) -> None:
        self._log = log
        self._clock = clock
        self._interval = interval
        self._last: dict[str, list[float]] = {}

    def warn(self, key: str, template: str, **fields: object) -> None:
        """
        Log ``template`` unless a warning of ``key`` was logged less than
        the interval ago.
        """
        now = self._clock.seconds()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return
        suppressed = int(entry[1]) if entry is not None else 0
        self._last[key] = [now, 0]
        self._log.warn(template + " ({suppressed} more like it left out)",
                       suppressed=suppressed, **fields)


def route_service(route: str | int) -> str | None:
    """
    :return: the service a route name names (the text before its first
        dot), or ``None`` for a name without a dot or a route code.
    """
    if type(route) is not str:
        return None
    service, dot, _ = route.partition(".")
    return service if dot and service else None


@implementer(IClientEvents)
class BackendPool:
    """
    The gate's backends, grouped by service, and which of them serves each
    client in each service.

    Each client has a backend of the ``default`` service (chosen when it
    connects, kept while that backend lives), which hears its connect, its
    raw and unclaimed messages, and its close; and, per other service, a
    backend chosen the first time the client needs one. Routed messages
    ``NAME.route`` go to service ``NAME`` when a backend of ``NAME`` is
    registered (docs/services.md has the rules). While only ``default``
    backends are known, messages are not even looked at.

    :param settings: how to talk to backends.
    :param reactor: the reactor (for connecting).
    """

    _log = Logger()

    def __init__(self, settings: LinkSettings, reactor: Any) -> None:
        self.settings = settings
        self._reactor = reactor
        self._dialling: dict[str, ClientService] = {}
        # Every ready connection, of any service.
        self._connections: list[BackendConnection] = []
        # Ready connections not draining: of `default`, and of each other
        # service (rebuilt by _refresh on every membership change).
        self._defaults: list[BackendConnection] = []
        self._live: dict[str, list[BackendConnection]] = {}
        # Other services some live backend of which wants client events.
        self._event_services: tuple[str, ...] = ()
        # The service of each backend dialled (None: not known yet).
        self._known: dict[str, str | None] = {}
        # Services other than `default` that some backend registered; the
        # route prefixes that are claimed.
        self._named: frozenset[str] = frozenset()
        # Whether client events for `default` should wait for a backend
        # (one is known, or nothing is known yet) rather than be dropped.
        self._default_expected = True
        self._assigned: dict[str, BackendConnection] = {}
        self._routes: dict[str, dict[str, BackendConnection]] = {}
        self._codecs: dict[str, Codec] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._stopping = False
        self._limited = _RateLimitedLog(self._log, settings.clock)

    # -- membership ------------------------------------------------------------------

    def add(self, key: str, endpoint: IStreamClientEndpoint, service: str | None = None) -> None:
        """
        Keep a connection to the backend at ``endpoint`` (known as ``key``).

        :param service: the service it registered, if known before it
            answers (it tells its service when it connects).
        """
        if key in self._dialling:
            return
        self._known[key] = service
        self._refresh()
        link = _LinkFactory(self, key)
        dialler = ClientService(
            endpoint, link, retryPolicy=link.retry_delay, clock=self.settings.clock,
        )
        self._dialling[key] = dialler
        dialler.startService()
        self._log.info("dialling backend {key} (service {service})", key=key,
                       service=service or "?")

    def remove(self, key: str) -> Deferred[None]:
        """
        Stop dialling backend ``key`` and drop its connection.
        """
        dialler = self._dialling.pop(key, None)
        self._known.pop(key, None)
        if dialler is None:
            return succeed(None)
        self._log.info("backend {key} left the cluster", key=key)
        self._refresh()
        if not self._default_expected and self._waiting:
            # The last `default` backend is gone for good: waiting clients
            # go on without one.
            waiting, self._waiting = self._waiting, {}
            for client_id, entry in waiting.items():
                self._replay(client_id, entry)
        return dialler.stopService()

    def keys(self) -> list[str]:
        """
        :return: the keys of the backends the gate dials.
        """
        return list(self._dialling)

    def connected(self) -> list[BackendConnection]:
        """
        :return: the authenticated backend connections.
        """
        return list(self._connections)

    def services(self) -> dict[str, int]:
        """
        :return: the live backends of each service the gate is linked with.
        """
        counts = {service: len(links) for service, links in self._live.items()}
        counts[DEFAULT_SERVICE] = len(self._defaults)
        return counts

    def reconnect_all(self) -> None:
        """
        Close every backend connection so that each is made again (and
        authenticated under the gate's current id). What is queued for a
        connection is sent first: the close events of the clients a gate
        declared dead has just closed must reach the application.
        """
        for connection in list(self._connections):
            connection.retire()

    def stop(self) -> Deferred[None]:
        """
        Drop every backend connection.
        """
        from twisted.internet.defer import gatherResults

        self._stopping = True
        for connection in self._connections:
            # What is queued (the close events of the clients the gate has
            # just closed) goes out before the connection closes.
            connection.flush()
        stops = [self.remove(key) for key in list(self._dialling)]
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def _refresh(self) -> None:
        live = [c for c in self._connections if not (c.gone or c.draining)]
        self._defaults = [c for c in live if c.service == DEFAULT_SERVICE]
        services: dict[str, list[BackendConnection]] = {}
        wanting = set()
        for connection in live:
            if connection.service != DEFAULT_SERVICE:
                services.setdefault(connection.service, []).append(connection)  # type: ignore[arg-type]
                if connection.client_events:
                    wanting.add(connection.service)
        self._live = services
        self._event_services = tuple(sorted(wanting))  # type: ignore[arg-type]
        declared = set(self._known.values())
        known = {s for s in declared if s is not None}
        known.update(c.service for c in self._connections)  # type: ignore[misc]
        self._named = frozenset(known - {DEFAULT_SERVICE})
        self._default_expected = DEFAULT_SERVICE in known or None in declared or not known

    def _ready(self, connection: BackendConnection) -> None:
        self._connections.append(connection)
        if connection.key is not None and connection.key in self._known:
            self._known[connection.key] = connection.service
        self._refresh()
        self._log.info("backend {backend_id} ready (service {service})",
                       backend_id=connection.backend_id, service=connection.service)
        waiting, self._waiting = self._waiting, {}
        for client_id, entry in waiting.items():
            self._replay(client_id, entry)

    def _lost(self, connection: BackendConnection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
        self._refresh()
        if connection.service == DEFAULT_SERVICE:
            moved = [cid for cid, owner in self._assigned.items() if owner is connection]
            for client_id in moved:
                del self._assigned[client_id]
        else:
            service = connection.service
            moved = []
            for client_id, routes in self._routes.items():
                if routes.get(service) is connection:  # type: ignore[arg-type]
                    del routes[service]  # type: ignore[arg-type]
                    moved.append(client_id)
        if self._stopping:
            return
        self._log.warn(
            "backend {backend_id} lost (service {service}); its {count} clients move to "
            "other backends",
            backend_id=connection.backend_id,
            service=connection.service,
            count=len(moved),
        )

    def _pick(
        self, client_id: str, candidates: list[BackendConnection]
    ) -> BackendConnection | None:
        # A connection that is gone may still be listed while its loss is
        # being handled (its pending calls fail before the pool hears of it).
        connections = [c for c in candidates if not (c.gone or c.draining)]
        if not connections:
            return None
        if len(connections) == 1:
            return connections[0]
        key = client_id.encode("ascii")
        return max(
            connections,
            key=lambda c: zlib.crc32(key, zlib.crc32(c.backend_id.encode("ascii"))),  # type: ignore[union-attr]
        )

    def _owner(self, client_id: str) -> BackendConnection | None:
        """
        :return: the client's backend of the ``default`` service, chosen now
            if it has none (or its own has gone); ``None`` if there is none.
        """
        owner = self._assigned.get(client_id)
        if owner is None or owner.gone or owner.draining:
            owner = self._pick(client_id, self._defaults)
            if owner is not None:
                self._assigned[client_id] = owner
        return owner

    def _owner_in(self, client_id: str, service: str) -> BackendConnection | None:
        """
        :return: the client's backend of ``service`` (not ``default``),
            chosen now if it has none; ``None`` if the service has no live
            backend.
        """
        routes = self._routes.get(client_id)
        owner = routes.get(service) if routes is not None else None
        if owner is None or owner.gone or owner.draining:
            owner = self._pick(client_id, self._live.get(service, []))
            if owner is not None:
                if routes is None:
                    routes = self._routes[client_id] = {}
                routes[service] = owner
        return owner

    # -- IClientEvents -------------------------------------------------------------------

    def client_connected(self, client_id: str, request: ConnectRequest) -> Deferred[None]:
        """
        Run ``on_connect`` on the client's ``default`` backend (once there is
        one); once it has accepted the client, tell the services that want
        client events.
        """
        codec = codec_for(request.subprotocol)
        if codec is not None:
            self._codecs[client_id] = codec
        owner = self._owner(client_id)
        if owner is not None:
            outcome = self._connect(owner, client_id, request, retries=len(self._defaults))
        elif self._default_expected:
            outcome = Deferred()
            self._wait(client_id, ("connect", request, outcome))
        else:
            outcome = succeed(None)
        return outcome.addCallbacks(
            self._announce, self._refused,
            callbackArgs=(client_id, request), errbackArgs=(client_id,),
        )

    def _announce(self, _: object, client_id: str, request: ConnectRequest) -> None:
        # The connect goes out before any of the client's messages (the gate
        # holds them until this has run), on the same connection as them:
        # each service sees the client's events in order.
        for service in self._event_services:
            owner = self._owner_in(client_id, service)
            if owner is not None:
                owner.connect(client_id, request).addErrback(
                    self._service_connect_failed, client_id, owner
                )

    def _service_connect_failed(
        self, failure: Failure, client_id: str, owner: BackendConnection
    ) -> None:
        if failure.check(Reject):
            why = "only the default service may refuse clients; ignored"
        else:
            why = failure.getErrorMessage()
        self._limited.warn(
            "connect:" + str(owner.service),
            "on_connect of client {client_id} failed on backend {backend_id} of service "
            "{service}: {why}",
            client_id=client_id,
            backend_id=owner.backend_id,
            service=owner.service,
            why=why,
        )

    def _refused(self, failure: Failure, client_id: str) -> Failure:
        if failure.check(Reject):
            # A refused client hears no close: forget it here.
            self._codecs.pop(client_id, None)
            self._routes.pop(client_id, None)
            self._assigned.pop(client_id, None)
        return failure

    def _connect(
        self, owner: BackendConnection, client_id: str, request: ConnectRequest, retries: int
    ) -> Deferred[None]:
        def retry(failure: Failure) -> Any:
            # The backend went away before on_connect finished: try another.
            if not (failure.check(ClusterUnavailable) and (owner.gone or owner.draining)):
                return failure
            other = None
            if retries > 0 and self._assigned.get(client_id) in (owner, None):
                self._assigned.pop(client_id, None)
                other = self._owner(client_id)
            self._log.warn(
                "on_connect of client {client_id} failed on backend {backend_id} ({error}); "
                "{outcome}",
                client_id=client_id,
                backend_id=owner.backend_id,
                error=failure.getErrorMessage(),
                outcome=(
                    f"running it on backend {other.backend_id}"
                    if other is not None
                    else "not retried: closing the client"
                ),
            )
            if other is not None:
                return self._connect(other, client_id, request, retries - 1)
            return failure

        return owner.connect(client_id, request).addErrback(retry)

    def client_message(self, client_id: str, message: str | bytes) -> None:
        """
        Queue a message for the backend that should handle it: of the service
        its route names, or of ``default``.
        """
        if self._named and self._claimed(client_id, message):
            return
        if client_id in self._waiting:
            self._wait(client_id, ("message", message, None))
            return
        owner = self._owner(client_id)
        if owner is not None:
            owner.message(client_id, message)
        elif self._default_expected:
            self._wait(client_id, ("message", message, None))
        else:
            self._no_default(client_id, message)

    def _peek(self, client_id: str, message: str | bytes) -> tuple[Codec, Inbound] | None:
        """
        :return: the codec and envelope of a routed message whose route may
            name a service, or ``None``.
        """
        # No dot, no route "NAME.x" (unless a JSON escape spells the dot):
        # most raw messages are not parsed at all.
        if type(message) is str:
            if "." not in message and "\\" not in message:
                return None
        elif b"." not in message and b"\\" not in message:
            return None
        codec = self._codecs.get(client_id) or codec_of_message(message)
        try:
            return codec, codec.decode_inbound(message)
        except BadEnvelope:
            return None

    def _claimed(self, client_id: str, message: str | bytes) -> bool:
        """
        Send ``message`` to the service its route names, if a backend of that
        service is registered (or answer ``service_unavailable`` when none
        is live).

        :return: whether it was handled (else it goes to ``default``).
        """
        peeked = self._peek(client_id, message)
        if peeked is None:
            return False
        codec, inbound = peeked
        service = route_service(inbound.route)
        if service is None or service not in self._named:
            return False
        owner = self._owner_in(client_id, service)
        if owner is None:
            self._unavailable(client_id, codec, inbound, service)
        else:
            owner.message(client_id, message)
        return True

    def _no_default(self, client_id: str, message: str | bytes) -> None:
        # No backend of `default` is registered: a routed message gets an
        # error, anything else is dropped (and counted).
        peeked = self._peek(client_id, message) if self._named else None
        if peeked is not None:
            self._unavailable(client_id, peeked[0], peeked[1], DEFAULT_SERVICE)
            return
        self.settings.metrics.dropped("no_backend")
        self._limited.warn(
            "no_backend",
            "dropped a message of client {client_id}: no backend of the default service is "
            "registered",
            client_id=client_id,
        )

    def _unavailable(self, client_id: str, codec: Codec, inbound: Inbound, service: str) -> None:
        self.settings.metrics.dropped(SERVICE_UNAVAILABLE)
        self._limited.warn(
            "unavailable:" + service,
            "answered {route!r} of client {client_id} with service_unavailable: service "
            "{service} has no live backend",
            route=inbound.route,
            client_id=client_id,
            service=service,
        )
        error = codec.encode_error(
            inbound.id, inbound.route, SERVICE_UNAVAILABLE,
            f"service {service!r} has no live backend",
        )
        self.settings.gate.send_to_clients([client_id], error)

    def client_closed(self, client_id: str) -> None:
        """
        Queue the close for the client's backend of ``default``, and of every
        other service that wants client events or that the client sent
        messages to; then forget the client.
        """
        self._codecs.pop(client_id, None)
        routes = self._routes.pop(client_id, None)
        entry = self._waiting.get(client_id)
        if entry is not None and entry.events and entry.events[0][0] == "connect":
            # No backend ever heard of it: nothing to close.
            del self._waiting[client_id]
            return
        if routes or self._event_services:
            self._close_elsewhere(client_id, routes or {})
        if entry is not None:
            entry.events.append(("closed", None, None))
            return
        owner = self._owner(client_id)
        self._assigned.pop(client_id, None)
        if owner is not None:
            owner.closed(client_id)
        elif self._default_expected:
            self._wait(client_id, ("closed", None, None))

    def _close_elsewhere(self, client_id: str, routes: dict[str, BackendConnection]) -> None:
        services = set(self._event_services)
        services.update(routes)
        for service in sorted(services):
            owner = routes.get(service)
            if owner is None or owner.gone or owner.draining:
                owner = self._pick(client_id, self._live.get(service, []))
            if owner is not None:
                owner.closed(client_id)
            elif service in routes:
                self.settings.metrics.dropped("no_backend")

    # -- clients waiting for a backend ------------------------------------------------------

    def _wait(self, client_id: str, event: tuple[str, Any, Any]) -> None:
        entry = self._waiting.get(client_id)
        if entry is None:
            entry = self._waiting[client_id] = _Waiting()
        entry.events.append(event)
        if not entry.paused and len(entry.events) >= MAX_WAITING_EVENTS:
            entry.paused = True
            self.settings.gate.pause_client(client_id)

    def _replay(self, client_id: str, entry: _Waiting) -> None:
        owner = self._owner(client_id)
        if owner is None and self._default_expected:
            self._waiting[client_id] = entry
            return
        for kind, argument, outcome in entry.events:
            if owner is None:
                # No `default` backend is registered any more.
                if kind == "connect":
                    outcome.callback(None)
                elif kind == "message":
                    self._no_default(client_id, argument)
            elif kind == "connect":
                self._connect(owner, client_id, argument, len(self._defaults)).chainDeferred(
                    outcome
                )
            elif kind == "message":
                owner.message(client_id, argument)
            else:
                self._assigned.pop(client_id, None)
                owner.closed(client_id)
        if entry.paused:
            self.settings.gate.resume_client(client_id)


class BackendDiscovery(Service):
    """
    Keeps the pool dialling the live backends: those listed on the command
    line, and those registered in the cluster registry.

    :param pool: the gate's backend pool.
    :param static: ``(endpoint string, endpoint)`` of ``--backend`` options.
    :param live_backends: returns a Deferred of ``{backend id: info}`` of the
        registered backends whose lease is alive (``info["endpoint"]`` is the
        endpoint string to dial), or ``None`` when there is no registry.
    :param endpoint_for: turns an endpoint string into a client endpoint.
    :param clock: schedules the polling.
    :param interval: seconds between looks at the registry.
    """

    _log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        static: list[tuple[str, IStreamClientEndpoint]],
        live_backends: Callable[[], Deferred[dict[str, dict[str, Any]]]] | None,
        endpoint_for: Callable[[str], IStreamClientEndpoint],
        clock: IReactorTime,
        interval: float = 1.0,
    ) -> None:
        self._pool = pool
        self._static = static
        self._live_backends = live_backends
        self._endpoint_for = endpoint_for
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._registered: set[str] = set()

    def startService(self) -> None:
        """
        Dial the static backends and start watching the registry.
        """
        super().startService()
        for description, endpoint in self._static:
            self._pool.add(description, endpoint)
        if self._live_backends is not None:
            self._loop = LoopingCall(self._look)
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred[None]:
        """
        Stop watching and drop every backend connection.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._pool.stop()

    def _look(self) -> Deferred[None]:
        def update(live: dict[str, dict[str, Any]]) -> None:
            for backend_id, info in live.items():
                if backend_id in self._registered:
                    continue
                try:
                    endpoint = self._endpoint_for(info["endpoint"])
                except Exception:
                    self._log.failure(
                        "backend {backend_id} registered an unusable endpoint {endpoint!r}",
                        backend_id=backend_id,
                        endpoint=info.get("endpoint"),
                    )
                    continue
                self._registered.add(backend_id)
                service = info.get("service")
                self._pool.add(
                    backend_id, endpoint, service if isinstance(service, str) else None
                )
            for backend_id in list(self._registered - set(live)):
                self._registered.discard(backend_id)
                self._pool.remove(backend_id)

        def failed(failure: Failure) -> None:
            # Keep dialling what we know; the registry will answer again.
            self._log.debug("could not read the backend registry: {error}",
                            error=failure.getErrorMessage())

        try:
            looked = self._live_backends()  # type: ignore[misc]
        except Exception:
            looked = fail()
        return looked.addCallbacks(update, failed)
