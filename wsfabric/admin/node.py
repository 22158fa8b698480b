"""
What the admin listener knows about the node it serves: one object that
the roles fill in and the admin resources read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsfabric.interfaces import IFabric
from wsfabric.metrics import Metrics


class AdminNode:
    """
    The parts of one node the admin listener reports on. Every part but the
    role, the id and the counters is optional: a standalone node has no
    Redis, a backend no gate, and so on.

    :param role: ``"standalone"``, ``"gate"`` or ``"backend"``.
    :param node_id: returns the node's current id (a gate's changes when it
        starts a new incarnation).
    :param metrics: the node's counters.
    :param service: the node's root service (not running: shutting down).
    :param fabric: the node's IFabric, for the HTTP API.
    :param redis: the node's :class:`~wsfabric.cluster.redis.RedisService`.
    :param pool: a gate's :class:`~wsfabric.gate.backends.BackendPool`.
    :param gate: the node's :class:`~wsfabric.gate.gate.Gate`.
    :param gates: a backend's connected gates (``{gate_id: connection}``).
    :param bus: the in-memory bus of a standalone node (probed for
        readiness).
    """

    def __init__(
        self,
        role: str,
        node_id: Callable[[], str],
        metrics: Metrics,
        service: Any,
        *,
        fabric: IFabric | None = None,
        redis: Any = None,
        pool: Any = None,
        gate: Any = None,
        gates: dict[str, Any] | None = None,
        bus: Any = None,
    ) -> None:
        self.role = role
        self._node_id = node_id
        self.metrics = metrics
        self.service = service
        self.fabric = fabric
        self.redis = redis
        self.pool = pool
        self.gate = gate
        self.gates = gates
        self.bus = bus

    @property
    def node_id(self) -> str:
        """
        The node's id now.
        """
        return self._node_id()

    @property
    def stopping(self) -> bool:
        """
        Whether the node has begun to shut down.
        """
        return self.service is not None and not self.service.running

    def backends_connected(self) -> int | None:
        """
        :return: how many backends a gate has a working link to, or ``None``
            on other roles.
        """
        if self.pool is None:
            return None
        return sum(1 for c in self.pool.connected() if not (c.gone or c.draining))

    def gates_connected(self) -> int | None:
        """
        :return: how many gates a backend is linked with, or ``None`` on
            other roles.
        """
        if self.gates is None:
            return None
        return len(self.gates)
