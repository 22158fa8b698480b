"""
``/admin/state``: what the dashboard shows, as one JSON document.

The node's own counters, its readiness, the cluster's nodes (from the Redis
registry; a standalone node lists itself), the number of clients online and
the largest groups. The dashboard polls it and derives rates from successive
counters.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults, inlineCallbacks, succeed

from wsfabric.admin.node import AdminNode

#: Most groups whose size one state document reports (the largest first).
MAX_GROUPS = 50


def local_state(node: AdminNode, ready: dict[str, Any], started: float) -> dict[str, Any]:
    """
    :param node: the node.
    :param ready: its readiness (see :func:`~wsfabric.admin.health.readiness`).
    :param started: when it started (Unix time).
    :return: the node's own figures.
    """
    m = node.metrics
    local: dict[str, Any] = {
        "role": node.role,
        "id": node.node_id,
        "ready": ready["status"] == "ready",
        "reason": ready.get("reason"),
        "checks": ready.get("checks", {}),
        "uptime_seconds": round(time.time() - started, 1),
        "connections": m.connections,
        "connects": m.connections_opened,
        "disconnects": m.connections_closed,
        "messages_in": m.messages_in,
        "messages_out": m.messages_out,
        "bytes_in": m.bytes_in,
        "bytes_out": m.bytes_out,
        "deliveries": m.deliveries,
        "drops": dict(m.drops),
        "closes": {str(code): count for code, count in m.closes.items()},
        "hook_errors": m.hook_errors,
        "amp_calls": m.amp_calls,
    }
    backends = node.backends_connected()
    if backends is not None:
        local["backends_connected"] = backends
    gates = node.gates_connected()
    if gates is not None:
        local["gates_connected"] = gates
    if node.redis is not None:
        local["drops"]["redis_gap"] = local["drops"].get("redis_gap", 0) + node.redis.gaps
        local["redis_reconnects"] = node.redis.reconnects
    return local


@inlineCallbacks
def cluster_state(node: AdminNode) -> Any:
    """
    :param node: the node.
    :return: a Deferred of ``{"nodes": [...], "clients": N, "groups":
        [...], "group_count": N}``; parts that cannot be read are ``None``
        with an ``"errors"`` entry saying why.
    """
    errors: list[str] = []
    nodes = yield _nodes(node).addErrback(_note, errors, "nodes")
    fabric = node.fabric
    clients = groups = group_count = None
    if fabric is not None:
        clients = yield fabric.get_all_client_count().addErrback(_note, errors, "clients")
        names = yield fabric.get_all_groups().addErrback(_note, errors, "groups")
        if names is not None:
            group_count = len(names)
            names = sorted(names)[: MAX_GROUPS * 4]
            sizes = yield gatherResults(
                [fabric.get_client_count_by_group(name) for name in names], consumeErrors=True
            ).addErrback(_note, errors, "group sizes")
            if sizes is not None:
                ranked = sorted(zip(names, sizes, strict=True), key=lambda g: (-g[1], g[0]))
                groups = [{"name": n, "size": s} for n, s in ranked[:MAX_GROUPS]]
    return {
        "nodes": nodes,
        "clients": clients,
        "groups": groups,
        "group_count": group_count,
        "errors": errors,
    }


def _note(failure: Any, errors: list[str], what: str) -> None:
    if failure.check(FirstError):
        failure = failure.value.subFailure
    errors.append(f"{what}: {failure.getErrorMessage()}")
    return None


def _nodes(node: AdminNode) -> Deferred[list[dict[str, Any]]]:
    me = node.node_id
    if node.redis is None:
        return succeed([{"id": me, "role": node.role, "self": True,
                         "clients": node.metrics.connections, "info": {}}])
    registry = node.redis.registry
    index = node.redis.index

    @inlineCallbacks
    def read() -> Any:
        gates, backends = yield gatherResults(
            [registry.live_nodes("gate"), registry.live_nodes("backend")], consumeErrors=True
        )
        listed = []
        for role, found in (("gate", gates), ("backend", backends)):
            for node_id in sorted(found):
                listed.append({"id": node_id, "role": role, "self": node_id == me,
                               "info": found[node_id], "clients": None})
        gate_ids = [entry["id"] for entry in listed if entry["role"] == "gate"]
        counts = yield gatherResults(
            [index.gate_client_ids(gate_id) for gate_id in gate_ids], consumeErrors=True
        )
        by_gate = dict(zip(gate_ids, counts, strict=True))
        for entry in listed:
            if entry["id"] in by_gate:
                entry["clients"] = len(by_gate[entry["id"]])
        return listed

    return read()  # type: ignore[no-any-return]
