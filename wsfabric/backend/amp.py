"""
The backend's end of the gate-backend AMP connections.

Gates dial the backend. Each connection first authenticates (the gate proves
it holds the cluster secret, then the backend does); until then every other
command closes the connection. Afterwards the connection carries the gate's
client events to the :class:`~wsfabric.backend.dispatcher.Dispatcher`, and
the application's per-client calls back to that gate: the connection is the
backend's :class:`~wsfabric.interfaces.IGateControl` for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.amplink import Batcher, RemoteCaller, contained, send_without_delay
from wsfabric.backend.dispatcher import Dispatcher
from wsfabric.commands import (
    CLOSED,
    PROTOCOL_VERSION,
    AuthenticationFailed,
    BindUid,
    Challenge,
    ClientConnected,
    ClientEvents,
    CloseClient,
    Deliver,
    DeliveryBatch,
    Draining,
    Hello,
    JoinGroup,
    LeaveGroup,
    Ping,
    SetInfo,
    Throttle,
    UnbindUid,
    UpdateInfo,
    decode_events,
    proof,
    proofs_match,
)
from wsfabric.errors import Reject
from wsfabric.ids import gate_of, is_gate_id
from wsfabric.interfaces import IGateControl
from wsfabric.message import ConnectRequest
from wsfabric.metrics import Metrics

_OPEN_COMMANDS = frozenset((b"Challenge", b"Hello"))


class BackendContext:
    """
    What every gate connection of one backend shares.

    :param backend_id: this backend's id.
    :param service: this backend's service name.
    :param secret: the cluster secret.
    :param dispatcher: runs the application.
    :param clock: for batching and timeouts.
    :param metrics: the backend's counters.
    :param call_timeout: seconds a call to a gate may take.
    :param max_in_flight: calls to one gate that may wait at once.
    :param client_events: whether this backend wants its clients' connect
        and close events although its service is not ``default``.
    :param gate_alive: ``gate_id -> Deferred[bool]``, whether a gate still
        holds its lease; when given, the clients of a gate that disconnects
        and turns out dead get ``on_close`` here (the gate can no longer
        send their close events). ``None`` (static setups, tests): they
        don't.
    :param gate_grace: seconds after a gate disconnects before its lease is
        checked, and between checks while it still holds it.
    """

    _log = Logger()

    def __init__(
        self,
        backend_id: str,
        service: str,
        secret: bytes,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        metrics: Metrics,
        call_timeout: float = 10.0,
        max_in_flight: int = 10000,
        client_events: bool = False,
        gate_alive: Callable[[str], Deferred[bool]] | None = None,
        gate_grace: float = 5.0,
    ) -> None:
        self.backend_id = backend_id
        self.service = service
        self.client_events = client_events
        self.secret = secret
        self.dispatcher = dispatcher
        self.clock = clock
        self.metrics = metrics
        self.call_timeout = call_timeout
        self.max_in_flight = max_in_flight
        #: The authenticated connection of each gate, by gate id.
        self.gates: dict[str, GateConnection] = {}
        #: Whether the backend is shutting down.
        self.draining = False
        self._gate_alive = gate_alive
        self._gate_grace = gate_grace
        # The lease checks of gates that disconnected, by gate id.
        self._gate_checks: dict[str, IDelayedCall] = {}

    def flow_control(self, client_id: str, paused: bool) -> None:
        """
        Ask the client's gate to stop or resume reading from it (the
        dispatcher's backpressure).
        """
        gate_id = gate_of(client_id)
        connection = self.gates.get(gate_id) if gate_id is not None else None
        if connection is not None:
            connection.throttle(client_id, paused)

    def drain(self) -> None:
        """
        Tell every gate that this backend is shutting down.
        """
        self.draining = True
        for connection in list(self.gates.values()):
            connection.draining()

    def gate_disconnected(self, gate_id: str) -> None:
        """
        The connection of gate ``gate_id`` is gone: unless it comes back,
        check its lease after the grace period.
        """
        if self._gate_alive is not None and gate_id not in self._gate_checks:
            self._gate_checks[gate_id] = self.clock.callLater(
                self._gate_grace, self._check_gate, gate_id
            )

    def stop_gate_checks(self) -> None:
        """
        Cancel the pending lease checks (the backend is stopping).
        """
        for call in self._gate_checks.values():
            if call.active():
                call.cancel()
        self._gate_checks.clear()

    def _check_gate(self, gate_id: str) -> None:
        del self._gate_checks[gate_id]
        if gate_id in self.gates or self.draining or self._gate_alive is None:
            return

        def decided(alive: bool) -> None:
            if gate_id in self.gates or self.draining:
                return
            if alive:
                # Still leased (a network cut, or a restart under way).
                self.gate_disconnected(gate_id)
                return
            closed = self.dispatcher.forget_gate(gate_id)
            self._log.info(
                "gate {gate_id} is dead: ran on_close for its {count} clients",
                gate_id=gate_id,
                count=closed,
            )

        def failed(failure: Failure) -> None:
            self._log.warn(
                "could not check the lease of gate {gate_id} ({error}); retrying",
                gate_id=gate_id,
                error=failure.getErrorMessage(),
            )
            self.gate_disconnected(gate_id)

        self._gate_alive(gate_id).addCallbacks(decided, failed)

    def locate_gate(self, gate_id: str) -> IGateControl | None:
        """
        :return: the connection of gate ``gate_id``, or ``None``.
        """
        return self.gates.get(gate_id)


@implementer(IGateControl)
class GateConnection(amp.AMP):
    """
    One gate's connection to this backend.

    :param context: what the backend's connections share.
    """

    _log = Logger()

    def __init__(self, context: BackendContext) -> None:
        super().__init__()
        self._context = context
        self.gate_id: str | None = None
        self._nonce: bytes | None = None
        self._deliveries = Batcher(context.clock, DeliveryBatch, self._send_deliveries)
        self._caller = RemoteCaller(
            self, context.clock, context.call_timeout, context.max_in_flight, "gate",
            metrics=context.metrics,
        )

    # -- AMP plumbing --------------------------------------------------------------

    def connectionMade(self) -> None:
        """
        A gate has dialled in: send small boxes without delay.
        """
        super().connectionMade()
        send_without_delay(self.transport)

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Run no command but the handshake until the gate has authenticated:
        a peer that tries is disconnected at once.
        """
        if self.gate_id is None and amp.COMMAND in box and box[amp.COMMAND] not in _OPEN_COMMANDS:
            self._log.warn(
                "closing an unauthenticated connection from {peer} that sent {command}",
                peer=self._peer(),
                command=box[amp.COMMAND],
            )
            self.transport.abortConnection()
            return
        super().ampBoxReceived(box)

    def connectionLost(self, reason: Failure) -> None:
        """
        Forget the gate; sends still queued for it are dropped and counted.
        """
        dropped = self._deliveries.discard()
        if dropped:
            self._context.metrics.dropped("gate_gone", dropped)
        if self.gate_id is not None and self._context.gates.get(self.gate_id) is self:
            del self._context.gates[self.gate_id]
            self._log.info("gate {gate_id} disconnected", gate_id=self.gate_id)
            self._context.gate_disconnected(self.gate_id)
        super().connectionLost(reason)

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    # -- authentication ------------------------------------------------------------

    @Challenge.responder
    def challenge(self) -> dict[str, bytes]:
        """
        Give the gate a fresh nonce to prove the secret with.
        """
        self._nonce = os.urandom(16)
        return {"nonce": self._nonce}

    @Hello.responder
    def hello(self, version: int, gate_id: str, nonce: bytes, proof: bytes) -> dict[str, Any]:
        """
        Check the gate's proof, then prove the secret in turn.
        """
        context = self._context
        if (
            self._nonce is None
            or version != PROTOCOL_VERSION
            or not is_gate_id(gate_id)
            or len(nonce) != 16
            or not proofs_match(
                _proof(context.secret, b"gate", self._nonce, nonce, gate_id), proof
            )
        ):
            self._log.warn(
                "gate at {peer} failed to authenticate (wrong cluster secret or version)",
                peer=self._peer(),
            )
            raise AuthenticationFailed("wrong cluster secret or protocol version")
        self.gate_id = gate_id
        earlier = context.gates.get(gate_id)
        context.gates[gate_id] = self
        if earlier is not None and earlier is not self:
            earlier.transport.loseConnection()
        if context.draining:
            self.draining()
        self._log.info("gate {gate_id} connected from {peer}", gate_id=gate_id,
                       peer=self._peer())
        return {
            "backend_id": context.backend_id,
            "service": context.service,
            "client_events": context.client_events,
            "proof": _proof(context.secret, b"backend", nonce, self._nonce, context.backend_id),
        }

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        """
        Answer at once.
        """
        return {}

    # -- events from the gate ------------------------------------------------------------

    @ClientConnected.responder
    @contained
    def client_connected(self, client_id: str, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Run ``on_connect``; answer with the rejection, if any.
        """
        outcome = self._context.dispatcher.client_connected(
            client_id, ConnectRequest.from_dict(request)
        )
        return outcome.addCallbacks(lambda _: {}, _rejection)

    @ClientEvents.responder
    def client_events(self, events: bytes) -> dict[str, Any]:
        """
        Hand a batch of messages and closes to the dispatcher, in order.
        """
        dispatcher = self._context.dispatcher
        try:
            for kind, client_id, message in decode_events(events):
                if kind == CLOSED:
                    dispatcher.client_closed(client_id)
                else:
                    dispatcher.client_message(client_id, message)  # type: ignore[arg-type]
        except ValueError:
            self._context.metrics.dropped("malformed_batch")
            self._log.failure("dropped the rest of a malformed event batch from {gate_id}",
                              gate_id=self.gate_id)
        return {}

    # -- IGateControl: the application's calls to this gate ---------------------------------

    def _send_deliveries(self, data: bytes) -> None:
        try:
            self.callRemote(Deliver, deliveries=data)
        except Exception:
            self._context.metrics.dropped("gate_gone")
            self._log.failure("could not send to gate {gate_id}", gate_id=self.gate_id)

    def send_to_clients(self, client_ids: Sequence[str], message: str | bytes) -> Deferred[None]:
        """
        Queue ``message`` for the gate's clients; sent at the end of the turn.
        """
        self._deliveries.batch().send(tuple(client_ids), message)
        return succeed(None)

    def _call(self, command: type[amp.Command], client_id: str, **arguments: Any) -> Deferred[None]:
        # Sends queued before this call go first: one connection, one order.
        self._deliveries.flush()
        called = self._caller.call(command, about=client_id, client_id=client_id, **arguments)
        return called.addCallback(_nothing)

    def throttle(self, client_id: str, paused: bool) -> None:
        """
        Ask the gate to stop or resume reading from a client.
        """
        self._deliveries.flush()
        try:
            self.callRemote(Throttle, client_id=client_id, paused=paused)
        except Exception:
            self._log.failure("could not throttle client {client_id}", client_id=client_id)

    def draining(self) -> None:
        """
        Tell the gate this backend is shutting down.
        """
        self._deliveries.flush()
        try:
            self.callRemote(Draining)
        except Exception:
            self._log.failure("could not tell gate {gate_id} we are leaving",
                              gate_id=self.gate_id)

    def close_client(self, client_id: str, code: int, reason: str) -> Deferred[None]:
        """
        Close a client of the gate.
        """
        return self._call(CloseClient, client_id, code=code, reason=reason)

    def bind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind a client of the gate to ``uid``.
        """
        return self._call(BindUid, client_id, uid=uid)

    def unbind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Unbind a client of the gate from ``uid``.
        """
        return self._call(UnbindUid, client_id, uid=uid)

    def join_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Add a client of the gate to ``group``.
        """
        return self._call(JoinGroup, client_id, group=group)

    def leave_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Remove a client of the gate from ``group``.
        """
        return self._call(LeaveGroup, client_id, group=group)

    def set_info(self, client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Replace the info of a client of the gate.
        """
        return self._call(SetInfo, client_id, info=info)

    def update_info(self, client_id: str, partial: dict[str, Any]) -> Deferred[None]:
        """
        Merge into the info of a client of the gate.
        """
        return self._call(UpdateInfo, client_id, info=partial)


def _proof(secret: bytes, role: bytes, first: bytes, second: bytes, node_id: str) -> bytes:
    return proof(secret, role, first, second, node_id.encode("ascii"))


def _rejection(failure: Failure) -> dict[str, Any]:
    if failure.check(Reject):
        reject: Reject = failure.value  # type: ignore[assignment]
        return {"reject_code": reject.code, "reject_reason": reject.reason}
    # The dispatcher has logged the hook's traceback.
    raise failure.value


def _nothing(_: object) -> None:
    return None


class BackendServerFactory(Factory):
    """
    Builds a :class:`GateConnection` for each gate that dials in.

    :param context: what the connections share.
    """

    noisy = False

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    def buildProtocol(self, addr: Any) -> GateConnection:
        """
        :return: a connection that must authenticate first.
        """
        protocol = GateConnection(self.context)
        protocol.factory = self
        return protocol
