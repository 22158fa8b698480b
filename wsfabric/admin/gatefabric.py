"""
The IFabric of a gate, for its HTTP API.

A backend's fabric reaches every gate over the AMP links the gates dial; a
gate has links only to backends. So a gate's fabric carries out what goes
through Redis (group, uid and all-client sends, every query) and what
concerns its own clients, and refuses, with
:class:`~wsfabric.errors.ClusterUnavailable` naming the way out, a
per-client call for a client that another gate holds: that call belongs on
a backend's admin listener (or on the other gate's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from wsfabric.errors import ClientNotFound, ClusterUnavailable
from wsfabric.fabric import Fabric
from wsfabric.interfaces import IBus, IGateControl, IIndex


@implementer(IGateControl)
class UnreachableGate:
    """
    Stands for a gate this node has no link to. A call about a client that
    is not online behaves as IFabric says (sends are no-ops, mutations fail
    with ClientNotFound); one about a client that is online fails with
    ClusterUnavailable.

    :param gate_id: the other gate's id.
    :param index: the cluster index, to tell whether a client is online.
    """

    def __init__(self, gate_id: str, index: IIndex) -> None:
        self.gate_id = gate_id
        self._index = index

    def _refuse(self, client_id: str) -> ClusterUnavailable:
        return ClusterUnavailable(
            f"client {client_id!r} is held by gate {self.gate_id}, which this gate has no "
            "link to; make this call on a backend's admin listener (backends reach every "
            "gate) or on that gate's"
        )

    def _online(self, client_ids: Sequence[str]) -> Deferred[list[str]]:
        checks = [self._index.is_online(client_id) for client_id in client_ids]
        return gatherResults(checks, consumeErrors=True).addCallbacks(
            lambda online: [c for c, yes in zip(client_ids, online, strict=True) if yes],
            lambda failure: failure.value.subFailure,
        )

    def _mutate(self, client_id: str) -> Deferred[None]:
        def decide(online: list[str]) -> None:
            if online:
                raise self._refuse(client_id)
            raise ClientNotFound(client_id)

        return self._online([client_id]).addCallback(decide)

    def _send(self, client_ids: Sequence[str]) -> Deferred[None]:
        def decide(online: list[str]) -> None:
            if online:
                raise self._refuse(online[0])

        return self._online(list(client_ids)).addCallback(decide)

    def send_to_clients(self, client_ids: Sequence[str], message: str | bytes) -> Deferred[None]:
        """
        A no-op for clients that are offline; refused for online ones.
        """
        return self._send(client_ids)

    def close_client(self, client_id: str, code: int, reason: str) -> Deferred[None]:
        """
        A no-op for a client that is offline; refused for an online one.
        """
        return self._send([client_id])

    def bind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Refused (ClientNotFound when the client is offline).
        """
        return self._mutate(client_id)

    def unbind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Refused (ClientNotFound when the client is offline).
        """
        return self._mutate(client_id)

    def join_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Refused (ClientNotFound when the client is offline).
        """
        return self._mutate(client_id)

    def leave_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Refused (ClientNotFound when the client is offline).
        """
        return self._mutate(client_id)

    def set_info(self, client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Refused (ClientNotFound when the client is offline).
        """
        return self._mutate(client_id)

    def update_info(self, client_id: str, partial: dict[str, Any]) -> Deferred[None]:
        """
        Refused (ClientNotFound when the client is offline).
        """
        return self._mutate(client_id)


def gate_fabric(gate: Any, index: IIndex, bus: IBus) -> Fabric:
    """
    :param gate: the gate (its ``gate_id`` may change: a new incarnation).
    :param index: the cluster index.
    :param bus: the fan-out bus.
    :return: the gate's IFabric.
    """

    def locate(gate_id: str) -> IGateControl:
        if gate_id == gate.gate_id:
            return gate  # type: ignore[no-any-return]
        return UnreachableGate(gate_id, index)

    return Fabric(index, bus, locate)
