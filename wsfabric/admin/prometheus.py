"""
``/metrics``: the node's counters in the Prometheus text format.

The hot paths only bump plain integers on :class:`~wsfabric.metrics.Metrics`;
:class:`NodeCollector` turns them into metric families when Prometheus
scrapes. Each node has its own ``CollectorRegistry`` (never the global
default one), so several nodes can live in one process (as in the tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from wsfabric.admin.node import AdminNode
from wsfabric.metrics import AMP_LATENCY_BUCKETS

#: Drop causes always exported (at 0 until something is dropped), so that
#: alert rules can refer to them from the start.
DROP_CAUSES = (
    "slow_consumer",
    "rate_limit",
    "oversize",
    "redis_gap",
    "no_backend",
    "service_unavailable",
)

#: The close code of a client whose message was too big.
CLOSE_MESSAGE_TOO_BIG = 1009


class NodeCollector:
    """
    A Prometheus collector reading one node's counters at scrape time.

    :param node: the node.
    :param ready: returns whether the node is ready (``/health/ready``).
    """

    def __init__(self, node: AdminNode, ready: Any) -> None:
        self._node = node
        self._ready = ready

    def describe(self) -> list[Metric]:
        """
        Nothing up front: the families depend on the role.
        """
        return []

    def collect(self) -> Iterator[Metric]:
        """
        :return: the node's metric families, now.
        """
        node = self._node
        m = node.metrics
        info = GaugeMetricFamily(
            "wsfabric_node_info", "The node's role and id (always 1).",
            labels=["role", "node_id"],
        )
        info.add_metric([node.role, node.node_id], 1)
        yield info
        yield GaugeMetricFamily(
            "wsfabric_ready", "1 when /health/ready answers 200, else 0.",
            value=1 if self._ready() else 0,
        )
        yield GaugeMetricFamily(
            "wsfabric_connections", "Clients connected to this node now.",
            value=m.connections,
        )
        yield CounterMetricFamily(
            "wsfabric_connects", "Clients accepted since start.", value=m.connections_opened
        )
        yield CounterMetricFamily(
            "wsfabric_rejected_connects",
            "Clients refused by the application's on_connect since start.",
            value=m.rejected_total,
        )
        closes = CounterMetricFamily(
            "wsfabric_disconnects",
            "Client connections closed since start, by WebSocket close code "
            "(1006: no close frame).",
            labels=["code"],
        )
        for code, count in sorted(m.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        yield CounterMetricFamily(
            "wsfabric_messages_in", "Messages received from clients.", value=m.messages_in
        )
        yield CounterMetricFamily(
            "wsfabric_bytes_in", "Payload bytes received from clients.", value=m.bytes_in
        )
        yield CounterMetricFamily(
            "wsfabric_messages_out", "Messages written to clients.", value=m.messages_out
        )
        yield CounterMetricFamily(
            "wsfabric_bytes_out", "Payload bytes written to clients.", value=m.bytes_out
        )
        yield CounterMetricFamily(
            "wsfabric_fanout_deliveries",
            "Messages handed to client connections (one per recipient).",
            value=m.deliveries,
        )
        yield self._drops()
        yield CounterMetricFamily(
            "wsfabric_hook_errors", "Exceptions raised by application hooks.",
            value=m.hook_errors,
        )
        yield self._amp_latency()
        backends = node.backends_connected()
        if backends is not None:
            yield GaugeMetricFamily(
                "wsfabric_backends_connected", "Backends this gate has a working link to.",
                value=backends,
            )
        gates = node.gates_connected()
        if gates is not None:
            yield GaugeMetricFamily(
                "wsfabric_gates_connected", "Gates linked with this backend.", value=gates
            )
        redis = node.redis
        if redis is not None:
            yield CounterMetricFamily(
                "wsfabric_redis_reconnects",
                "Times a Redis connection came back after being up.",
                value=redis.reconnects,
            )
            yield GaugeMetricFamily(
                "wsfabric_redis_connected", "1 while both Redis connections are up.",
                value=1 if redis.connected else 0,
            )
            if redis.probe_rtt is not None:
                yield GaugeMetricFamily(
                    "wsfabric_redis_probe_rtt_seconds",
                    "Round trip of the last Redis pub/sub liveness probe.",
                    value=redis.probe_rtt,
                )

    def _drops(self) -> Metric:
        m = self._node.metrics
        counts = dict.fromkeys(DROP_CAUSES, 0)
        counts.update(m.drops)
        # A message over --max-message-size closes its client with 1009; the
        # close is where it is counted.
        counts["oversize"] = max(counts["oversize"], m.closes.get(CLOSE_MESSAGE_TOO_BIG, 0))
        if self._node.redis is not None:
            # A pub/sub gap (subscriber connection lost, probe failed) may
            # have lost fan-out messages: each counts once.
            counts["redis_gap"] += self._node.redis.gaps
        drops = CounterMetricFamily(
            "wsfabric_drops",
            "Messages or clients dropped, by cause (every loss the node can detect).",
            labels=["cause"],
        )
        for cause, count in sorted(counts.items()):
            drops.add_metric([cause], count)
        return drops

    def _amp_latency(self) -> Metric:
        m = self._node.metrics
        buckets = []
        total = 0
        for bound, count in zip(AMP_LATENCY_BUCKETS, m.amp_call_buckets, strict=False):
            total += count
            buckets.append((repr(bound), total))
        buckets.append(("+Inf", m.amp_calls))
        family = HistogramMetricFamily(
            "wsfabric_amp_call_seconds",
            "Duration of the AMP calls this node made to its peers (answered or failed).",
        )
        family.add_metric([], buckets, sum_value=m.amp_call_seconds)
        return family


def make_registry(node: AdminNode, ready: Any) -> CollectorRegistry:
    """
    :param node: the node.
    :param ready: returns whether the node is ready.
    :return: a registry of this node's metrics and its process's (CPU,
        memory, file descriptors).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, ready))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    return registry
