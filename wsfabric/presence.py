"""
Presence events: who joins and leaves groups, which uids come online and go
offline, anywhere in the cluster (docs/services.md).

Where events come from
----------------------
Only the writers of the index know when membership changes, so they publish
the events, on the bus channel :data:`PRESENCE_CHANNEL`:

- in a cluster, the gates' index scripts in Redis
  (:mod:`wsfabric.cluster.redis`) publish from inside the same atomic script
  that changes the index, so the events are in exactly the order of the
  changes, and a uid goes online (offline) exactly when its first (last)
  client is bound (unbound, closed, or swept after its gate died). They do so
  only while some node wants events (the key ``{ns}:presence`` exists, kept
  alive by :class:`PresenceDispatcher`), so a cluster without listeners pays
  nothing;
- in standalone mode, :class:`PresenceIndex` wraps the in-memory index and
  publishes the same events.

An event is a JSON object: ``{"e": "join" | "leave", "g": group, "c":
client_id, "u": uid or null}`` or ``{"e": "online" | "offline", "u": uid}``.

Who hears them
--------------
Every backend whose application provides
:class:`~wsfabric.interfaces.IPresenceListener` runs a
:class:`PresenceDispatcher`. Each event is handled by one backend per
service: the events of a group (join, leave) or of a uid (online, offline)
belong to the backend at ``crc32(key) % n`` among the service's live
backends sorted by id, so one backend sees all the events of one group, in
order. The dispatcher runs hooks one at a time, in arrival order.

While the backends of a service change (one starts, stops or dies), their
views of the membership differ for up to about a second: an event may then
be handled twice or not at all. A listener that must be exact re-reads the
fabric (``get_client_ids_by_group``) when it matters.

Pushes to clients
-----------------
The application of the ``default`` service may name groups whose members
receive join and leave pushes: ``presence_push_groups`` (an attribute: group
names, or prefixes ending in ``*``). The backend that handles the event then
sends the routed push ``wsfabric.presence`` with ``{"group", "client_id",
"uid", "event"}`` to the group (the member who joined receives it too; the
one who left does not).
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from inspect import iscoroutine
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.interfaces import IBus, IIndex, IPresenceListener

#: The bus channel presence events travel on.
PRESENCE_CHANNEL = "presence"
#: The route of presence pushes to clients.
PUSH_ROUTE = "wsfabric.presence"
#: The service whose application sends presence pushes.
PUSH_SERVICE = "default"

_HOOKS = {
    "join": "on_group_join",
    "leave": "on_group_leave",
    "online": "on_uid_online",
    "offline": "on_uid_offline",
}


def encode_event(
    event: str, group: str | None = None, client_id: str | None = None, uid: str | None = None
) -> bytes:
    """
    :return: the bus payload of one event.
    """
    if event in ("online", "offline"):
        body: dict[str, Any] = {"e": event, "u": uid}
    else:
        body = {"e": event, "g": group, "c": client_id, "u": uid}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def event_key(event: dict[str, Any]) -> str:
    """
    :return: what an event is partitioned by: its group, or its uid.
    """
    if event.get("e") in ("join", "leave"):
        return "g:" + str(event.get("g"))
    return "u:" + str(event.get("u"))


def owner_of(key: str, members: list[str]) -> str | None:
    """
    :param members: the live backends of a service, sorted.
    :return: the backend that handles the events of ``key``.
    """
    if not members:
        return None
    return members[zlib.crc32(key.encode("utf-8")) % len(members)]


def matches(group: str, patterns: Iterable[str]) -> bool:
    """
    :return: whether ``group`` is one of ``patterns`` (names, or prefixes
        ending in ``*``).
    """
    for pattern in patterns:
        if pattern.endswith("*"):
            if group.startswith(pattern[:-1]):
                return True
        elif group == pattern:
            return True
    return False


def wants_presence(app: Any, service: str) -> bool:
    """
    :return: whether a backend running ``app`` for ``service`` must hear
        presence events (it listens, or it sends presence pushes).
    """
    return IPresenceListener.providedBy(app) or bool(
        service == PUSH_SERVICE and getattr(app, "presence_push_groups", ())
    )


# -- standalone: the in-memory index's events --------------------------------------


@implementer(IIndex)
class PresenceIndex:
    """
    An :class:`~wsfabric.interfaces.IIndex` that passes every call to
    ``index`` and publishes the presence events of its writes. It must be
    the only writer of ``index`` (standalone mode), as it keeps its own
    record of uids and groups to tell transitions.

    :param index: the index to wrap.
    :param bus: where events are published (:data:`PRESENCE_CHANNEL`).
    """

    def __init__(self, index: IIndex, bus: IBus) -> None:
        self._index = index
        self._bus = bus
        self._clients: dict[str, tuple[str | None, set[str]]] = {}
        self._uids: dict[str, set[str]] = {}

    def __getattr__(self, name: str) -> Any:
        # Reads go straight to the wrapped index.
        return getattr(self._index, name)

    def _emit(
        self,
        event: str,
        group: str | None = None,
        client_id: str | None = None,
        uid: str | None = None,
    ) -> None:
        self._bus.publish(PRESENCE_CHANNEL, encode_event(event, group, client_id, uid))

    def _then(self, deferred: Deferred[None], apply: Callable[[], None]) -> Deferred[None]:
        def applied(result: None) -> None:
            apply()
            return result

        return deferred.addCallback(applied)

    def _release(self, uid: str, client_id: str) -> None:
        members = self._uids.get(uid)
        if members is not None:
            members.discard(client_id)
            if not members:
                del self._uids[uid]
                self._emit("offline", uid=uid)

    def _unbind(self, client_id: str) -> None:
        uid, groups = self._clients.get(client_id, (None, set()))
        if uid is not None:
            self._clients[client_id] = (None, groups)
            self._release(uid, client_id)

    def _drop(self, client_id: str) -> None:
        uid, groups = self._clients.pop(client_id, (None, set()))
        for group in sorted(groups):
            self._emit("leave", group, client_id, uid)
        if uid is not None:
            self._release(uid, client_id)

    def add_client(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Record a client (dropping an earlier record of it).
        """

        def apply() -> None:
            self._drop(client_id)
            self._clients[client_id] = (None, set())

        return self._then(self._index.add_client(gate_id, client_id), apply)

    def remove_client(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Remove a client: it leaves its groups, and its uid may go offline.
        """
        return self._then(
            self._index.remove_client(gate_id, client_id), lambda: self._drop(client_id)
        )

    def bind_uid(self, gate_id: str, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind a uid; the first client of a uid brings it online.
        """

        def apply() -> None:
            old, groups = self._clients.get(client_id, (None, set()))
            if old == uid:
                return
            self._unbind(client_id)
            self._clients[client_id] = (uid, groups)
            members = self._uids.setdefault(uid, set())
            members.add(client_id)
            if len(members) == 1:
                self._emit("online", uid=uid)

        return self._then(self._index.bind_uid(gate_id, client_id, uid), apply)

    def unbind_uid(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Unbind; the last client of a uid takes it offline.
        """
        return self._then(
            self._index.unbind_uid(gate_id, client_id), lambda: self._unbind(client_id)
        )

    def join_group(self, gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Join; a new member is a join event.
        """

        def apply() -> None:
            uid, groups = self._clients.setdefault(client_id, (None, set()))
            if group not in groups:
                groups.add(group)
                self._emit("join", group, client_id, uid)

        return self._then(self._index.join_group(gate_id, client_id, group), apply)

    def leave_group(self, gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Leave; a member leaving is a leave event.
        """

        def apply() -> None:
            uid, groups = self._clients.get(client_id, (None, set()))
            if group in groups:
                groups.discard(group)
                self._emit("leave", group, client_id, uid)

        return self._then(self._index.leave_group(gate_id, client_id, group), apply)

    def set_info(self, gate_id: str, client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Info is no presence: passed on.
        """
        return self._index.set_info(gate_id, client_id, info)


# -- the listening side --------------------------------------------------------------------


class PresenceDispatcher(Service):
    """
    Hears presence events on a backend, keeps those of its partition, runs
    the application's :class:`~wsfabric.interfaces.IPresenceListener` hooks
    one at a time in arrival order, and sends the presence pushes of the
    ``default`` service.

    :param clock: for refreshing the membership and the flag.
    :param bus: the bus.
    :param node_id: this backend's id.
    :param service: its service.
    :param app: the application.
    :param directory: ``backends(service) -> Deferred[list[str]]`` (as in
        :mod:`wsfabric.rpc`).
    :param fabric: the fabric, for pushes.
    :param keep_flag: called every ``refresh`` seconds to keep the cluster
        publishing events (``None`` in standalone mode); returns a Deferred.
    :param refresh: seconds between membership reads (``None``: the
        membership is this node alone, standalone mode).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        bus: IBus,
        node_id: str,
        service: str,
        app: Any,
        directory: Any,
        fabric: Any = None,
        keep_flag: Callable[[], Deferred[Any]] | None = None,
        refresh: float | None = 1.0,
    ) -> None:
        self._clock = clock
        self._bus = bus
        self.node_id = node_id
        self.service = service
        self._app = app
        self._directory = directory
        self._fabric = fabric
        self._keep_flag = keep_flag
        self.refresh = refresh
        self._listener = IPresenceListener.providedBy(app)
        self._push_groups = tuple(
            getattr(app, "presence_push_groups", ()) if service == PUSH_SERVICE else ()
        )
        self.members: list[str] = [node_id]
        self._subscription: Any = None
        self._loop: LoopingCall | None = None
        self._queue: deque[dict[str, Any]] = deque()
        self._busy = False
        #: Events handled here (for tests and metrics).
        self.handled = 0

    def startService(self) -> None:
        """
        Subscribe, and start refreshing the membership and the flag.
        """
        super().startService()
        self._subscription = self._bus.subscribe(PRESENCE_CHANNEL, self.received)
        if self.refresh is not None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self.refresh, now=True)

    def stopService(self) -> Deferred[None]:
        """
        Stop hearing events.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        return succeed(None)

    def _tick(self) -> None:
        if self._keep_flag is not None:
            self._keep_flag().addErrback(
                lambda f: self._log.debug("presence flag not set: {e}", e=f.getErrorMessage())
            )
        self._directory.backends(self.service).addCallbacks(self._members_read, lambda _: None)

    def _members_read(self, members: list[str]) -> None:
        if self.node_id not in members:
            # Not registered yet (or just re-registering): count ourselves.
            members = sorted([*members, self.node_id])
        self.members = list(members)

    def received(self, channel: str, payload: bytes) -> None:
        """
        One event from the bus.
        """
        try:
            event = json.loads(payload)
        except ValueError:
            self._log.warn("dropped a malformed presence event")
            return
        if not isinstance(event, dict) or event.get("e") not in _HOOKS:
            return
        if owner_of(event_key(event), self.members) != self.node_id:
            return
        self._queue.append(event)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        # Busy while running: a hook that causes an event (the in-memory
        # bus delivers at once) only queues it.
        self._busy = True
        while self._queue:
            event = self._queue.popleft()
            self.handled += 1
            running = self._handle(event)
            if not running.called:
                self._busy = True
                running.addBoth(self._done)
                return
        self._busy = False

    def _done(self, _: object) -> None:
        self._busy = False
        self._next()

    def _handle(self, event: dict[str, Any]) -> Deferred[None]:
        kind = event["e"]
        group = event.get("g")
        if self._push_groups and kind in ("join", "leave") and isinstance(group, str):
            if matches(group, self._push_groups):
                self._push(group, event)
        if not self._listener:
            return succeed(None)
        hook = getattr(self._app, _HOOKS[kind])
        args = (group, event.get("c")) if kind in ("join", "leave") else (event.get("u"),)

        def call() -> Any:
            result = hook(*args)
            return Deferred.fromCoroutine(result) if iscoroutine(result) else result

        return maybeDeferred(call).addErrback(self._hook_failed, kind, args)

    def _hook_failed(self, failure: Failure, kind: str, args: tuple[Any, ...]) -> None:
        self._log.failure(
            "presence hook {hook}{args!r} failed", failure, hook=_HOOKS[kind], args=args
        )

    def _push(self, group: str, event: dict[str, Any]) -> None:
        from wsfabric.message import Variants
        from wsfabric.routing.codec import JSON_CODEC, PROTO_CODEC

        data = {
            "group": group,
            "client_id": event.get("c"),
            "uid": event.get("u"),
            "event": event["e"],
        }
        push = Variants(
            JSON_CODEC.encode_push(PUSH_ROUTE, data),
            PROTO_CODEC.encode_push(PUSH_ROUTE, PROTO_CODEC.encode_data(data)),
        )
        self._fabric.send_to_group(group, push).addErrback(
            lambda f: self._log.warn(
                "presence push to group {group} failed: {error}",
                group=group,
                error=f.getErrorMessage(),
            )
        )


def standalone_presence(bus: IBus, index: IIndex, node_id: str, app: Any, fabric: Any) -> IIndex:
    """
    Presence in standalone mode: when the application wants events, start
    its dispatcher and return the index the gate must write to (wrapped by
    :class:`PresenceIndex`); else return ``index`` unchanged.
    """
    if not wants_presence(app, PUSH_SERVICE):
        return index
    from wsfabric.rpc import StaticDirectory

    PresenceDispatcher(
        None,
        bus,
        node_id,
        PUSH_SERVICE,
        app,
        StaticDirectory(serve_all=[node_id]),
        fabric,
        refresh=None,
    ).startService()
    return PresenceIndex(index, bus)


def cluster_presence(
    clock: IReactorTime, redis: Any, node_id: str, service: str, app: Any, fabric: Any
) -> PresenceDispatcher | None:
    """
    Presence on a backend of a cluster: a dispatcher when the application
    wants events (``None`` otherwise). It keeps the key ``{ns}:presence``
    alive (three seconds, renewed every second) so that the index scripts
    publish events.
    """
    if not wants_presence(app, service):
        return None
    from wsfabric.rpc import RegistryDirectory

    key = redis.namespace + ":presence"

    def keep_flag() -> Deferred[Any]:
        return redis.command.execute(["SET", key, "1", "PX", "3000"], write=True)

    directory = RegistryDirectory(clock, lambda: redis.registry.live_nodes("backend"))
    return PresenceDispatcher(
        clock, redis.bus, node_id, service, app, directory, fabric, keep_flag=keep_flag
    )


__all__ = [
    "PRESENCE_CHANNEL",
    "PUSH_ROUTE",
    "PUSH_SERVICE",
    "PresenceDispatcher",
    "PresenceIndex",
    "cluster_presence",
    "encode_event",
    "event_key",
    "matches",
    "owner_of",
    "standalone_presence",
    "wants_presence",
]
