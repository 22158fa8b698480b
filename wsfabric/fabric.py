"""
The :class:`~wsfabric.interfaces.IFabric` an application calls.

One class serves standalone mode and the cluster alike; only its three
collaborators differ:

- a call that concerns one client goes to the gate that owns it (the client
  id names its gate): directly in standalone mode, over AMP in a cluster;
- a call that concerns many (a group, a uid, everyone) is one publish on the
  bus, which reaches exactly the gates with interested clients;
- queries read the index.

Every send takes ``str`` (a text message), ``bytes`` (binary) or a
:class:`~wsfabric.message.Variants` (one form per kind of client, from the
routing layer; each client receives its own form).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.errors import ClientNotFound, InvalidArgument, WsfabricError
from wsfabric.gate.gate import ALL_CHANNEL, group_channel, uid_channel, valid_close_code
from wsfabric.ids import gate_of
from wsfabric.interfaces import IBus, IFabric, IGateControl, IIndex
from wsfabric.message import (
    check_client_id,
    check_info,
    check_message,
    check_name,
    encode_fanout,
)

if TYPE_CHECKING:
    from wsfabric.message import Variants

#: Finds the gate that owns a client: given a gate id, the gate's
#: :class:`~wsfabric.interfaces.IGateControl`, or ``None`` if no such gate is
#: alive.
GateLocator = Callable[[str], IGateControl | None]


def _checked(function: Callable[..., Deferred[Any]]) -> Callable[..., Deferred[Any]]:
    """
    Turn an :class:`~wsfabric.errors.WsfabricError` raised while checking
    arguments into a failed Deferred: every IFabric method answers with a
    Deferred, never by raising.
    """

    def method(*args: Any, **kwargs: Any) -> Deferred[Any]:
        try:
            return function(*args, **kwargs)
        except WsfabricError:
            return fail()

    method.__name__ = function.__name__
    method.__qualname__ = function.__qualname__
    method.__doc__ = function.__doc__
    return method


@implementer(IFabric)
class Fabric:
    """
    The cluster API over a gate locator, an index and a bus.

    :param index: the cluster index (queries).
    :param bus: the fan-out bus (group, uid and all-client sends).
    :param locate_gate: finds the gate that owns a client, by gate id.
    """

    def __init__(self, index: IIndex, bus: IBus, locate_gate: GateLocator) -> None:
        self._index = index
        self._bus = bus
        self._locate_gate = locate_gate

    def _gate_of(self, client_id: str) -> IGateControl | None:
        gate_id = gate_of(client_id)
        return self._locate_gate(gate_id) if gate_id is not None else None

    def _owner(self, client_id: object) -> IGateControl:
        client_id = check_client_id(client_id)
        gate = self._gate_of(client_id)
        if gate is None:
            raise ClientNotFound(client_id)
        return gate

    # -- sends ------------------------------------------------------------------

    @_checked
    def send_to_client(self, client_id: str, message: str | bytes | Variants) -> Deferred[None]:
        """
        Send ``message`` to one client (a no-op if it is not online).
        """
        message = check_message(message)
        gate = self._gate_of(check_client_id(client_id))
        if gate is None:
            return succeed(None)
        return gate.send_to_clients((client_id,), message)

    @_checked
    def send_to_clients(
        self, client_ids: Iterable[str], message: str | bytes | Variants
    ) -> Deferred[None]:
        """
        Send ``message`` to each of ``client_ids`` that is online.
        """
        message = check_message(message)
        if isinstance(client_ids, str):
            raise InvalidArgument("client_ids must be a collection of client ids")
        by_gate: dict[str, list[str]] = {}
        for client_id in client_ids:
            gate_id = gate_of(check_client_id(client_id))
            if gate_id is not None:
                by_gate.setdefault(gate_id, []).append(client_id)
        sends = []
        for gate_id, members in by_gate.items():
            gate = self._locate_gate(gate_id)
            if gate is not None:
                sends.append(gate.send_to_clients(members, message))
        return _all_of(sends)

    @_checked
    def send_to_all(
        self, message: str | bytes | Variants, exclude: Iterable[str] = ()
    ) -> Deferred[None]:
        """
        Send ``message`` to every client except those in ``exclude``.
        """
        return self._bus.publish(
            ALL_CHANNEL, encode_fanout(check_message(message), _ids(exclude))
        )

    @_checked
    def send_to_uid(self, uid: str, message: str | bytes | Variants) -> Deferred[None]:
        """
        Send ``message`` to every client bound to ``uid``.
        """
        return self._bus.publish(
            uid_channel(check_name("uid", uid)), encode_fanout(check_message(message))
        )

    @_checked
    def send_to_group(
        self, group: str, message: str | bytes | Variants, exclude: Iterable[str] = ()
    ) -> Deferred[None]:
        """
        Send ``message`` to every member of ``group`` except those in
        ``exclude``.
        """
        return self._bus.publish(
            group_channel(check_name("group", group)),
            encode_fanout(check_message(message), _ids(exclude)),
        )

    # -- uids ---------------------------------------------------------------------

    @_checked
    def bind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind ``client_id`` to ``uid``.
        """
        uid = check_name("uid", uid)
        return self._owner(client_id).bind_uid(client_id, uid)

    @_checked
    def unbind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Unbind ``client_id`` from ``uid``.
        """
        uid = check_name("uid", uid)
        return self._owner(client_id).unbind_uid(client_id, uid)

    @_checked
    def is_uid_online(self, uid: str) -> Deferred[bool]:
        """
        Whether any client is bound to ``uid``.
        """
        return self._index.get_client_ids_by_uid(check_name("uid", uid)).addCallback(
            bool
        )

    @_checked
    def get_uid_by_client_id(self, client_id: str) -> Deferred[str | None]:
        """
        The uid of ``client_id``, or ``None``.
        """
        return self._index.get_uid(check_client_id(client_id))

    @_checked
    def get_client_ids_by_uid(self, uid: str) -> Deferred[list[str]]:
        """
        The clients bound to ``uid``.
        """
        return self._index.get_client_ids_by_uid(check_name("uid", uid))

    # -- groups -------------------------------------------------------------------

    @_checked
    def join_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Add ``client_id`` to ``group``.
        """
        group = check_name("group", group)
        return self._owner(client_id).join_group(client_id, group)

    @_checked
    def leave_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Remove ``client_id`` from ``group``.
        """
        group = check_name("group", group)
        return self._owner(client_id).leave_group(client_id, group)

    @_checked
    def ungroup(self, group: str) -> Deferred[None]:
        """
        Make every member leave ``group``; each owning gate removes its own
        members, so the index stays written by owners only.
        """
        group = check_name("group", group)

        def leave_all(members: list[str]) -> Deferred[None]:
            leaves = []
            for client_id in members:
                gate = self._gate_of(client_id)
                if gate is not None:
                    leaves.append(
                        gate.leave_group(client_id, group).addErrback(_gone_is_fine)
                    )
            return _all_of(leaves)

        return self._index.get_client_ids_by_group(group).addCallback(leave_all)

    @_checked
    def get_client_count_by_group(self, group: str) -> Deferred[int]:
        """
        The number of members of ``group``.
        """
        return self._index.get_client_count_by_group(check_name("group", group))

    @_checked
    def get_uid_count_by_group(self, group: str) -> Deferred[int]:
        """
        The number of distinct uids among the members of ``group``.
        """
        return self._index.get_uids_by_group(check_name("group", group)).addCallback(
            len
        )

    @_checked
    def get_client_ids_by_group(self, group: str) -> Deferred[list[str]]:
        """
        The members of ``group``.
        """
        return self._index.get_client_ids_by_group(check_name("group", group))

    @_checked
    def get_uids_by_group(self, group: str) -> Deferred[list[str]]:
        """
        The distinct uids among the members of ``group``.
        """
        return self._index.get_uids_by_group(check_name("group", group))

    def get_all_uids(self) -> Deferred[list[str]]:
        """
        Every uid with a client bound to it.
        """
        return self._index.get_all_uids()

    def get_all_groups(self) -> Deferred[list[str]]:
        """
        Every group with members.
        """
        return self._index.get_all_groups()

    def get_all_client_count(self) -> Deferred[int]:
        """
        The number of clients online.
        """
        return self._index.get_all_client_count()

    # -- clients --------------------------------------------------------------------

    @_checked
    def is_online(self, client_id: str) -> Deferred[bool]:
        """
        Whether ``client_id`` is online.
        """
        return self._index.is_online(check_client_id(client_id))

    @_checked
    def close_client(
        self, client_id: str, code: int = 1000, reason: str = ""
    ) -> Deferred[None]:
        """
        Close ``client_id`` (a no-op if it is not online).
        """
        if not isinstance(code, int) or not valid_close_code(code):
            raise InvalidArgument(
                f"close code must be 1000 or from 3000 to 4999, not {code!r}"
            )
        if not isinstance(reason, str):
            raise InvalidArgument("close reason must be a str")
        gate = self._gate_of(check_client_id(client_id))
        if gate is None:
            return succeed(None)
        return gate.close_client(client_id, code, reason)

    @_checked
    def get_info(self, client_id: str) -> Deferred[dict[str, Any]]:
        """
        The info of ``client_id`` (``{}`` when none).
        """
        return self._index.get_info(check_client_id(client_id))

    @_checked
    def set_info(self, client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Replace the info of ``client_id``.
        """
        info = check_info(info)
        return self._owner(client_id).set_info(client_id, info)

    @_checked
    def update_info(self, client_id: str, partial: dict[str, Any]) -> Deferred[None]:
        """
        Merge the top-level keys of ``partial`` into the info of
        ``client_id``.
        """
        partial = check_info(partial)
        return self._owner(client_id).update_info(client_id, partial)

    # -- services (wsfabric.rpc; docs/services.md) ---------------------------------

    #: The node's :class:`wsfabric.rpc.RpcEndpoint`, set when the node is wired.
    rpc: Any = None

    def call(
        self, service: str, route: str, data: Any = None, timeout: float = 10.0
    ) -> Deferred[Any]:
        """
        Call ``route`` on a backend of ``service``; see
        :meth:`wsfabric.rpc.RpcEndpoint.call`.
        """
        if self.rpc is None:
            return fail(RuntimeError("this fabric has no RPC endpoint"))
        return self.rpc.call(service, route, data, timeout)

    def notify(self, service: str, route: str, data: Any = None) -> Deferred[None]:
        """
        Run ``route`` on a backend of ``service`` without waiting for a
        result; see :meth:`wsfabric.rpc.RpcEndpoint.notify`.
        """
        if self.rpc is None:
            return fail(RuntimeError("this fabric has no RPC endpoint"))
        return self.rpc.notify(service, route, data)


def _ids(client_ids: Iterable[str]) -> list[str]:
    if isinstance(client_ids, str):
        raise InvalidArgument("exclude must be a collection of client ids")
    return [check_client_id(client_id) for client_id in client_ids]


def _gone_is_fine(failure: Failure) -> None:
    # A member that left or closed meanwhile has left the group anyway.
    failure.trap(ClientNotFound)


def _all_of(deferreds: list[Deferred[Any]]) -> Deferred[None]:
    if not deferreds:
        return succeed(None)
    if len(deferreds) == 1:
        return deferreds[0].addCallback(lambda _: None)
    return gatherResults(deferreds, consumeErrors=True).addCallbacks(
        lambda _: None, lambda failure: failure.value.subFailure
    )
