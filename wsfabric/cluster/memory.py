"""
In-memory implementations of the cluster seams: :class:`MemoryBus` (an
:class:`~wsfabric.interfaces.IBus`) and :class:`MemoryIndex` (an
:class:`~wsfabric.interfaces.IIndex`).

Standalone mode runs on these, and so do unit tests. They give the same
answers the Redis implementations give, with every ``Deferred`` already
fired.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from wsfabric.errors import ClientNotFound
from wsfabric.interfaces import IBus, IIndex, ISubscription

_log = Logger()

Receiver = Callable[[str, bytes], object]


@implementer(ISubscription)
class MemorySubscription:
    """
    One receiver subscribed to one channel of a :class:`MemoryBus`.

    :param bus: the bus.
    :param channel: the channel.
    :param receiver: the callable that receives ``(channel, payload)``.
    """

    __slots__ = ("_bus", "channel", "receiver")

    def __init__(self, bus: MemoryBus, channel: str, receiver: Receiver) -> None:
        self._bus = bus
        self.channel = channel
        self.receiver = receiver

    def when_ready(self) -> Deferred[None]:
        """
        A memory subscription is ready as soon as it exists.
        """
        return succeed(None)

    def cancel(self) -> Deferred[None]:
        """
        Stop receiving; cancelling twice is harmless.
        """
        self._bus._remove(self)
        return succeed(None)


@implementer(IBus)
class MemoryBus:
    """
    A bus that delivers each publish at once to the receivers subscribed in
    this process. A receiver that raises is logged and does not keep the
    message from the others.
    """

    def __init__(self) -> None:
        self._channels: dict[str, list[MemorySubscription]] = {}

    def publish(self, channel: str, payload: bytes) -> Deferred[None]:
        """
        Deliver ``payload`` to every receiver of ``channel`` now.
        """
        subscriptions = self._channels.get(channel)
        if subscriptions:
            for subscription in tuple(subscriptions):
                try:
                    subscription.receiver(channel, payload)
                except Exception:
                    _log.failure(
                        "bus receiver failed on channel {channel}", channel=channel
                    )
        return succeed(None)

    def subscribe(self, channel: str, receiver: Receiver) -> ISubscription:
        """
        Add ``receiver`` to ``channel``.
        """
        subscription = MemorySubscription(self, channel, receiver)
        self._channels.setdefault(channel, []).append(subscription)
        return subscription

    def channels(self) -> list[str]:
        """
        :return: the channels that have at least one receiver (for tests and
            the dashboard).
        """
        return list(self._channels)

    def _remove(self, subscription: MemorySubscription) -> None:
        subscriptions = self._channels.get(subscription.channel)
        if subscriptions and subscription in subscriptions:
            subscriptions.remove(subscription)
            if not subscriptions:
                del self._channels[subscription.channel]


class _Entry:
    """
    What the index records of one client.
    """

    __slots__ = ("gate_id", "uid", "groups", "info")

    def __init__(self, gate_id: str) -> None:
        self.gate_id = gate_id
        self.uid: str | None = None
        self.groups: set[str] | None = None
        self.info: dict[str, Any] | None = None


@implementer(IIndex)
class MemoryIndex:
    """
    The index held in this process's memory.
    """

    def __init__(self) -> None:
        self._clients: dict[str, _Entry] = {}
        self._uids: dict[str, set[str]] = {}
        self._groups: dict[str, set[str]] = {}

    def _entry(self, gate_id: str, client_id: str) -> _Entry | None:
        entry = self._clients.get(client_id)
        if entry is None or entry.gate_id != gate_id:
            return None
        return entry

    # -- writes ---------------------------------------------------------

    def add_client(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Record ``client_id`` as online on ``gate_id`` (afresh, if it was
        recorded already).
        """
        if client_id in self._clients:
            self.remove_client(self._clients[client_id].gate_id, client_id)
        self._clients[client_id] = _Entry(gate_id)
        return succeed(None)

    def remove_client(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Remove ``client_id`` and everything recorded about it.
        """
        entry = self._clients.get(client_id)
        if entry is None or entry.gate_id != gate_id:
            return succeed(None)
        del self._clients[client_id]
        if entry.uid is not None:
            _discard(self._uids, entry.uid, client_id)
        if entry.groups:
            for group in entry.groups:
                _discard(self._groups, group, client_id)
        return succeed(None)

    def bind_uid(self, gate_id: str, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind ``client_id`` to ``uid``, replacing an earlier binding.
        """
        entry = self._entry(gate_id, client_id)
        if entry is None:
            return fail(ClientNotFound(client_id))
        if entry.uid is not None:
            _discard(self._uids, entry.uid, client_id)
        entry.uid = uid
        self._uids.setdefault(uid, set()).add(client_id)
        return succeed(None)

    def unbind_uid(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Remove the uid binding of ``client_id``.
        """
        entry = self._entry(gate_id, client_id)
        if entry is None:
            return fail(ClientNotFound(client_id))
        if entry.uid is not None:
            _discard(self._uids, entry.uid, client_id)
            entry.uid = None
        return succeed(None)

    def join_group(self, gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Add ``client_id`` to ``group``.
        """
        entry = self._entry(gate_id, client_id)
        if entry is None:
            return fail(ClientNotFound(client_id))
        if entry.groups is None:
            entry.groups = set()
        entry.groups.add(group)
        self._groups.setdefault(group, set()).add(client_id)
        return succeed(None)

    def leave_group(self, gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Remove ``client_id`` from ``group``.
        """
        entry = self._entry(gate_id, client_id)
        if entry is None:
            return fail(ClientNotFound(client_id))
        if entry.groups and group in entry.groups:
            entry.groups.discard(group)
            _discard(self._groups, group, client_id)
        return succeed(None)

    def set_info(
        self, gate_id: str, client_id: str, info: dict[str, Any]
    ) -> Deferred[None]:
        """
        Replace the info of ``client_id``.
        """
        entry = self._entry(gate_id, client_id)
        if entry is None:
            return fail(ClientNotFound(client_id))
        entry.info = dict(info) if info else None
        return succeed(None)

    # -- reads ------------------------------------------------------------

    def is_online(self, client_id: str) -> Deferred[bool]:
        """
        Whether ``client_id`` is online.
        """
        return succeed(client_id in self._clients)

    def get_gate(self, client_id: str) -> Deferred[str | None]:
        """
        The gate of ``client_id``, or ``None``.
        """
        entry = self._clients.get(client_id)
        return succeed(entry.gate_id if entry is not None else None)

    def get_uid(self, client_id: str) -> Deferred[str | None]:
        """
        The uid of ``client_id``, or ``None``.
        """
        entry = self._clients.get(client_id)
        return succeed(entry.uid if entry is not None else None)

    def get_info(self, client_id: str) -> Deferred[dict[str, Any]]:
        """
        A copy of the info of ``client_id`` (``{}`` when none).
        """
        entry = self._clients.get(client_id)
        info = entry.info if entry is not None else None
        return succeed(_copy(info) if info else {})

    def get_client_ids_by_uid(self, uid: str) -> Deferred[list[str]]:
        """
        The clients bound to ``uid``.
        """
        return succeed(list(self._uids.get(uid, ())))

    def get_client_ids_by_group(self, group: str) -> Deferred[list[str]]:
        """
        The members of ``group``.
        """
        return succeed(list(self._groups.get(group, ())))

    def get_client_count_by_group(self, group: str) -> Deferred[int]:
        """
        The number of members of ``group``.
        """
        return succeed(len(self._groups.get(group, ())))

    def get_uids_by_group(self, group: str) -> Deferred[list[str]]:
        """
        The distinct uids of the members of ``group``.
        """
        uids = {
            self._clients[client_id].uid for client_id in self._groups.get(group, ())
        }
        uids.discard(None)
        return succeed(list(uids))  # type: ignore[arg-type]

    def get_all_uids(self) -> Deferred[list[str]]:
        """
        Every bound uid.
        """
        return succeed(list(self._uids))

    def get_all_groups(self) -> Deferred[list[str]]:
        """
        Every group with members.
        """
        return succeed(list(self._groups))

    def get_all_client_count(self) -> Deferred[int]:
        """
        The number of clients online.
        """
        return succeed(len(self._clients))


def _discard(mapping: dict[str, set[str]], key: str, client_id: str) -> None:
    members = mapping.get(key)
    if members is not None:
        members.discard(client_id)
        if not members:
            del mapping[key]


def _copy(info: dict[str, Any]) -> dict[str, Any]:
    # Info is JSON data; a deep copy keeps callers from mutating the index, as
    # a round trip through Redis would.
    return copy.deepcopy(info)
