"""
The gate's logic: the clients it owns, their uid, groups and info, the bus
channels it listens on, and delivery to its connections.

The gate is the source of truth for its own clients. Only it writes their
index entries, and it subscribes to a group's, a uid's or the all-clients
channel exactly while it has local clients interested in it. The gate holds
no sockets itself: it talks to :class:`~wsfabric.interfaces.IClientConnection`
providers, which the transports implement, and hands client events to an
:class:`~wsfabric.interfaces.IClientEvents` provider (the backend side).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.errors import ClientNotFound, Reject
from wsfabric.ids import ClientIdIssuer
from wsfabric.interfaces import (
    IBus,
    IClientConnection,
    IClientEvents,
    IGateControl,
    IIndex,
    ISubscription,
)
from wsfabric.message import (
    ConnectRequest,
    SharedMessage,
    SharedVariants,
    Variants,
    check_info,
    decode_fanout,
    variant_of,
)
from wsfabric.metrics import Metrics

ALL_CHANNEL = "all"

# Close codes the gate itself uses.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012

#: Messages a client may send while its on_connect runs before the gate stops
#: reading from it.
MAX_BACKLOG = 64


def group_channel(group: str) -> str:
    """
    :return: the bus channel of ``group``.
    """
    return "group:" + group


def uid_channel(uid: str) -> str:
    """
    :return: the bus channel of ``uid``.
    """
    return "uid:" + uid


def valid_close_code(code: int) -> bool:
    """
    :return: whether an application may close a client with ``code``
        (1000, or the registered and private range 3000-4999 of RFC 6455).
    """
    return code == CLOSE_NORMAL or 3000 <= code <= 4999


class _LocalClient:
    """
    What the gate keeps for one of its clients.

    ``backlog`` holds the client's messages until ``on_connect`` has
    finished (its index entry is written first); ``None`` means messages go
    straight through. ``variant`` is the form of a
    :class:`~wsfabric.message.Variants` message it receives, fixed by its
    handshake.
    """

    __slots__ = (
        "conn", "uid", "groups", "info", "backlog", "announced", "gone", "held", "variant",
    )

    def __init__(self, conn: IClientConnection, variant: int = 0) -> None:
        self.conn = conn
        self.variant = variant
        self.uid: str | None = None
        self.groups: set[str] | None = None
        self.info: dict[str, Any] | None = None
        self.backlog: list[str | bytes] | None = []
        self.announced = False
        self.gone = False
        self.held = False


class _Channel:
    """
    One bus channel the gate listens on, shared by its local members.
    """

    __slots__ = ("subscription", "members")

    def __init__(self, subscription: ISubscription) -> None:
        self.subscription = subscription
        self.members = 0


@implementer(IGateControl)
class Gate:
    """
    The clients of one gate incarnation.

    :param gate_id: this gate's id (its incarnation).
    :param index: the cluster index, written for this gate's clients only.
    :param bus: the fan-out bus.
    :param events: where client events go (the backend side).
    :param metrics: the counters to update.
    """

    _log = Logger()

    def __init__(
        self,
        gate_id: str,
        index: IIndex,
        bus: IBus,
        events: IClientEvents,
        metrics: Metrics,
    ) -> None:
        self.gate_id = gate_id
        self._issuer = ClientIdIssuer(gate_id)
        self._index = index
        self._bus = bus
        self._events = events
        self._metrics = metrics
        self._clients: dict[str, _LocalClient] = {}
        self._groups: dict[str, set[str]] = {}
        self._uids: dict[str, set[str]] = {}
        self._channels: dict[str, _Channel] = {}
        self._all: _Channel | None = None
        #: Index writes that failed (the index may disagree with the gate
        #: until it is rewritten from :meth:`records`).
        self.index_failures = 0

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Listen on the all-clients channel. Fires once subscribed.
        """
        self._all = self._listen(ALL_CHANNEL)
        return self._ready(self._all)

    def stop(self) -> Deferred[None]:
        """
        Stop listening on the all-clients channel.
        """
        if self._all is not None:
            self._release(ALL_CHANNEL)
            self._all = None
        return succeed(None)

    def client_ids(self) -> list[str]:
        """
        :return: the ids of the clients this gate holds.
        """
        return list(self._clients)

    def records(
        self, client_ids: Iterable[str] | None = None
    ) -> list[tuple[str, str | None, tuple[str, ...], dict[str, Any] | None]]:
        """
        :param client_ids: the clients wanted (those the gate still holds),
            or ``None`` for all.
        :return: ``(client_id, uid, groups, info)`` of those clients: what the
            index must say about them now (used to rewrite the index after
            the cluster state lost data or writes failed).
        """
        clients = self._clients
        if client_ids is None:
            selected: Iterable[tuple[str, _LocalClient]] = clients.items()
        else:
            selected = ((cid, clients[cid]) for cid in client_ids if cid in clients)
        return [
            (client_id, client.uid, tuple(client.groups or ()), client.info)
            for client_id, client in selected
        ]

    def reincarnate(self, gate_id: str) -> int:
        """
        Carry on under a new gate id after the cluster declared this
        incarnation dead (it was paused past its lease, and its entries were
        or will be swept). Its clients are closed with 1012 so that they
        reconnect; nothing is written to the index under the old id.

        :param gate_id: the new incarnation's id.
        :return: how many clients were closed.
        """
        clients = list(self._clients.items())
        for client_id, client in clients:
            self._drop(client_id, client, announce=True, write_index=False)
            client.conn.close(CLOSE_SERVICE_RESTART, "gate restarted")
        self.gate_id = gate_id
        self._issuer = ClientIdIssuer(gate_id)
        return len(clients)

    def __len__(self) -> int:
        return len(self._clients)

    # -- events from the transports -----------------------------------------

    def client_opened(self, conn: IClientConnection, request: ConnectRequest) -> str:
        """
        A transport has accepted a client. Issues its id, records it in the
        index, then hands the connect event on.

        :param conn: the client's connection.
        :param request: what the handshake knew.
        :return: the new client id.
        """
        client_id = self._issuer.issue()
        client = _LocalClient(conn, variant_of(request))
        self._clients[client_id] = client
        self._metrics.connection_opened()
        try:
            written = self._index.add_client(self.gate_id, client_id)
            if request.uid is not None:
                # Authentication bound a uid: it is in place (and visible to
                # queries) before on_connect runs, as if bound by the app.
                written = self._both(written, self.bind_uid(client_id, request.uid))
        except Exception:
            written = fail()
        written.addCallbacks(
            self._announce,
            self._index_failed,
            callbackArgs=(client_id, client, request),
            errbackArgs=(client_id, client),
        )
        return client_id

    def _announce(
        self, _: object, client_id: str, client: _LocalClient, request: ConnectRequest
    ) -> None:
        if client.gone:
            return
        client.announced = True
        try:
            connected = self._events.client_connected(client_id, request)
        except Exception:
            connected = fail()
        # The client's messages wait until on_connect has finished, so that a
        # client the application refuses, or failed to set up, never reaches
        # on_message.
        connected.addCallbacks(
            self._accepted,
            self._connect_refused,
            callbackArgs=(client_id, client),
            errbackArgs=(client_id, client),
        )

    def _accepted(self, _: object, client_id: str, client: _LocalClient) -> None:
        backlog, client.backlog = client.backlog, None
        if client.gone:
            return
        for message in backlog or ():
            self._events.client_message(client_id, message)
        if client.held:
            client.held = False
            client.conn.resume_reading()

    def _index_failed(self, failure: Failure, client_id: str, client: _LocalClient) -> None:
        self.index_failures += 1
        self._log.failure(
            "could not record client {client_id} in the index; closing it",
            failure,
            client_id=client_id,
        )
        self._drop(client_id, client, announce=False)
        client.conn.close(CLOSE_INTERNAL_ERROR, "cluster unavailable")

    def _connect_refused(
        self, failure: Failure, client_id: str, client: _LocalClient
    ) -> None:
        client.backlog = None
        if failure.check(Reject):
            reject: Reject = failure.value  # type: ignore[assignment]
            code = reject.code if valid_close_code(reject.code) else CLOSE_POLICY
            self._metrics.rejected()
            # A rejected client never counts as online: it is removed, and the
            # application hears no on_close for it.
            self._drop(client_id, client, announce=False)
            client.conn.close(code, reject.reason)
        else:
            # The application failed to set the client up; the dispatcher has
            # logged the traceback. It still hears on_close, to clean up.
            self._drop(client_id, client, announce=True)
            client.conn.close(CLOSE_INTERNAL_ERROR, "internal error")

    def client_message(self, client_id: str, message: str | bytes) -> None:
        """
        A client sent ``message``.
        """
        client = self._clients.get(client_id)
        if client is None:
            return
        self._metrics.message_in(len(message))
        backlog = client.backlog
        if backlog is None:
            self._events.client_message(client_id, message)
            return
        backlog.append(message)
        if len(backlog) >= MAX_BACKLOG and not client.held:
            # on_connect is slow: stop reading until it has finished.
            client.held = True
            client.conn.pause_reading()

    def client_closed(self, client_id: str) -> None:
        """
        A client's connection has gone (cleanly or not).
        """
        client = self._clients.get(client_id)
        if client is not None:
            self._drop(client_id, client, announce=True)

    def _drop(
        self, client_id: str, client: _LocalClient, announce: bool, write_index: bool = True
    ) -> Deferred[None]:
        """
        Forget a client: local membership, channels, then its index entries
        (unless ``write_index`` is false); then, if the application heard of
        it, its close event. Fires once the index no longer reports the
        client.
        """
        if client.gone:
            return succeed(None)
        client.gone = True
        del self._clients[client_id]
        self._metrics.connection_closed()
        if client.uid is not None:
            self._forget_uid(client_id, client.uid)
        if client.groups:
            for group in client.groups:
                self._forget_group(client_id, group)
        if not write_index:
            removed: Deferred[None] = succeed(None)
        else:
            try:
                removed = self._written(self._index.remove_client(self.gate_id, client_id))
            except Exception:
                removed = fail()
        removed.addErrback(
            self._log_failure,
            "could not remove client {client_id} from the index",
            client_id=client_id,
        )
        if announce and client.announced:
            removed.addCallback(lambda _: self._events.client_closed(client_id))
        return removed

    # -- IGateControl ---------------------------------------------------------

    def send_to_clients(
        self, client_ids: Sequence[str], message: str | bytes | Variants
    ) -> Deferred[None]:
        """
        Deliver ``message`` to each of ``client_ids`` that this gate holds
        (for :class:`~wsfabric.message.Variants`, each client gets its form).
        """
        if type(message) is Variants:
            return self._send_variants(client_ids, message)
        if len(client_ids) == 1:
            client = self._clients.get(client_ids[0])
            if client is not None:
                client.conn.deliver(message)
                self._metrics.delivered(1)
            return succeed(None)
        shared = SharedMessage.of(message)
        count = 0
        for client_id in client_ids:
            client = self._clients.get(client_id)
            if client is not None:
                client.conn.deliver_shared(shared)
                count += 1
        self._metrics.delivered(count)
        return succeed(None)

    def _send_variants(self, client_ids: Sequence[str], variants: Variants) -> Deferred[None]:
        if len(client_ids) == 1:
            client = self._clients.get(client_ids[0])
            if client is not None:
                client.conn.deliver(variants.messages[client.variant])
                self._metrics.delivered(1)
            return succeed(None)
        shared = SharedVariants(variants).shared
        count = 0
        for client_id in client_ids:
            client = self._clients.get(client_id)
            if client is not None:
                client.conn.deliver_shared(shared[client.variant])
                count += 1
        self._metrics.delivered(count)
        return succeed(None)

    def close_client(self, client_id: str, code: int, reason: str) -> Deferred[None]:
        """
        Close ``client_id``; fires once the index no longer reports it.
        """
        client = self._clients.get(client_id)
        if client is None:
            return succeed(None)
        removed = self._drop(client_id, client, announce=True)
        client.conn.close(code, reason)
        return removed

    def bind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind ``client_id`` to ``uid``, replacing an earlier binding.
        """
        client = self._clients.get(client_id)
        if client is None:
            return fail(ClientNotFound(client_id))
        if client.uid == uid:
            return succeed(None)
        if client.uid is not None:
            self._forget_uid(client_id, client.uid)
        client.uid = uid
        members = self._uids.get(uid)
        if members is None:
            members = self._uids[uid] = set()
        members.add(client_id)
        channel = self._listen(uid_channel(uid))
        return self._both(
            self._ready(channel), self._written(self._index.bind_uid(self.gate_id, client_id, uid))
        )

    def unbind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Unbind ``client_id`` from ``uid`` if it is bound to it.
        """
        client = self._clients.get(client_id)
        if client is None:
            return fail(ClientNotFound(client_id))
        if client.uid != uid:
            return succeed(None)
        client.uid = None
        self._forget_uid(client_id, uid)
        return self._written(self._index.unbind_uid(self.gate_id, client_id))

    def join_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Add ``client_id`` to ``group``.
        """
        client = self._clients.get(client_id)
        if client is None:
            return fail(ClientNotFound(client_id))
        if client.groups is None:
            client.groups = set()
        elif group in client.groups:
            return succeed(None)
        client.groups.add(group)
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = set()
        members.add(client_id)
        channel = self._listen(group_channel(group))
        return self._both(
            self._ready(channel),
            self._written(self._index.join_group(self.gate_id, client_id, group)),
        )

    def leave_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Remove ``client_id`` from ``group``.
        """
        client = self._clients.get(client_id)
        if client is None:
            return fail(ClientNotFound(client_id))
        if not client.groups or group not in client.groups:
            return succeed(None)
        client.groups.discard(group)
        self._forget_group(client_id, group)
        return self._written(self._index.leave_group(self.gate_id, client_id, group))

    def set_info(self, client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Replace the info of ``client_id``.
        """
        client = self._clients.get(client_id)
        if client is None:
            return fail(ClientNotFound(client_id))
        client.info = check_info(info) or None
        return self._written(self._index.set_info(self.gate_id, client_id, client.info or {}))

    def update_info(self, client_id: str, partial: dict[str, Any]) -> Deferred[None]:
        """
        Merge the top-level keys of ``partial`` into the info of ``client_id``.
        """
        client = self._clients.get(client_id)
        if client is None:
            return fail(ClientNotFound(client_id))
        merged = dict(client.info or ())
        merged.update(check_info(partial))
        client.info = merged or None
        return self._written(self._index.set_info(self.gate_id, client_id, merged))

    # -- flow control -----------------------------------------------------------

    def pause_client(self, client_id: str) -> None:
        """
        Stop reading from ``client_id``: its events are piling up behind the
        application.
        """
        client = self._clients.get(client_id)
        if client is not None:
            client.conn.pause_reading()

    def resume_client(self, client_id: str) -> None:
        """
        Read from ``client_id`` again.
        """
        client = self._clients.get(client_id)
        if client is not None:
            client.conn.resume_reading()

    def close_all(
        self,
        code: int,
        reason: str,
        clock: Any = None,
        per_turn: int = 500,
        window: float = 0.0,
    ) -> Deferred[None]:
        """
        Close every client (used when the gate shuts down); fires once the
        index no longer reports any of them.

        :param clock: if given, at most ``per_turn`` clients are closed per
            reactor turn: with thousands of clients, one long loop would
            leave their close handshakes and the index's replies unread
            until their timeouts had passed.
        :param window: with ``clock``, seconds over which the batches of
            ``per_turn`` clients are spread evenly (the first at once, the
            last at ``window * (n - 1) / n`` for n batches), so that the
            clients of a gate being restarted do not all reconnect to the
            other gates at the same moment.
        """
        removed: list[Deferred[None]] = []
        done: Deferred[None] = Deferred()
        interval = 0.0
        if clock is not None and window > 0 and len(self._clients) > per_turn:
            interval = window / -(-len(self._clients) // per_turn)

        def close_some() -> None:
            if clock is not None:
                clients = list(islice(self._clients.items(), per_turn))
            else:
                clients = list(self._clients.items())
            for client_id, client in clients:
                removed.append(self._drop(client_id, client, announce=True))
                client.conn.close(code, reason)
            if clock is not None and self._clients:
                clock.callLater(interval, close_some)
                return
            gatherResults(removed, consumeErrors=True).addCallback(_none).chainDeferred(done)

        close_some()
        return done

    # -- fan-out ------------------------------------------------------------------

    def _listen(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(
                self._bus.subscribe(name, self._received)
            )
        channel.members += 1
        return channel

    def _ready(self, channel: _Channel) -> Deferred[None]:
        return channel.subscription.when_ready()

    def _release(self, name: str) -> None:
        channel = self._channels.get(name)
        if channel is None:
            return
        channel.members -= 1
        if channel.members <= 0:
            del self._channels[name]
            channel.subscription.cancel().addErrback(
                self._log_failure,
                "could not unsubscribe from channel {channel}",
                channel=name,
            )

    def _forget_group(self, client_id: str, group: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.discard(client_id)
            if not members:
                del self._groups[group]
        self._release(group_channel(group))

    def _forget_uid(self, client_id: str, uid: str) -> None:
        members = self._uids.get(uid)
        if members is not None:
            members.discard(client_id)
            if not members:
                del self._uids[uid]
        self._release(uid_channel(uid))

    def _received(self, channel: str, payload: bytes) -> None:
        """
        A fan-out message arrived on ``channel``: deliver it to the local
        clients it concerns, framed once.
        """
        try:
            shared, exclude = decode_fanout(payload)
        except ValueError:
            self._metrics.dropped("malformed")
            self._log.warn(
                "dropped a malformed fan-out message on channel {channel}",
                channel=channel,
            )
            return
        if channel == ALL_CHANNEL:
            targets: Any = self._clients
        elif channel.startswith("group:"):
            targets = self._groups.get(channel[6:], ())
        elif channel.startswith("uid:"):
            targets = self._uids.get(channel[4:], ())
        else:
            return
        clients = self._clients
        count = 0
        if type(shared) is SharedVariants:
            # Each client gets the form of its codec, framed once per form.
            forms = shared.shared
            for client_id in tuple(targets):
                if exclude and client_id in exclude:
                    continue
                client = clients.get(client_id)
                if client is not None:
                    client.conn.deliver_shared(forms[client.variant])
                    count += 1
            self._metrics.delivered(count)
            return
        for client_id in tuple(targets):
            if exclude and client_id in exclude:
                continue
            client = clients.get(client_id)
            if client is not None:
                client.conn.deliver_shared(shared)  # type: ignore[arg-type]
                count += 1
        self._metrics.delivered(count)

    # -- helpers ------------------------------------------------------------------

    def _written(self, write: Deferred[None]) -> Deferred[None]:
        # The gate's state stands even when its index write fails; count the
        # failure so that the index gets rewritten from the gate.
        return write.addErrback(self._write_failed)

    def _write_failed(self, failure: Failure) -> Failure:
        self.index_failures += 1
        return failure

    def _both(self, first: Deferred[None], second: Deferred[None]) -> Deferred[None]:
        return (
            gatherResults([first, second], consumeErrors=True)
            .addCallback(_none)
            .addErrback(_first_error)
        )

    def _log_failure(self, failure: Failure, template: str, **fields: object) -> None:
        self._log.failure(template, failure, **fields)


def _none(_: object) -> None:
    return None


def _first_error(failure: Failure) -> Failure:
    # gatherResults wraps the first failure in a FirstError; callers want the
    # original (ClientNotFound, ClusterUnavailable, ...).
    if failure.check(FirstError):
        return failure.value.subFailure  # type: ignore[no-any-return,union-attr]
    return failure
