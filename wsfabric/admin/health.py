"""
Liveness and readiness.

- live: the process runs its reactor (anything that answers HTTP is live).
- ready: a probe has made the round trip through the fan-out bus recently
  (Redis pub/sub in a cluster, the in-memory bus in standalone mode), the
  node is not shutting down, and on a gate at least one backend is linked.

A cluster node's probe is the one :class:`~wsfabric.cluster.redis.RedisService`
runs anyway; a standalone node runs a :class:`BusProbe` of its own.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wsfabric.admin.node import AdminNode

#: The bus channel of a standalone node's probe.
PROBE_CHANNEL = "admin:probe"


class BusProbe(Service):
    """
    Publishes a fresh nonce on the bus every ``interval`` seconds and notes
    when it comes back.

    :param bus: the bus to probe (an :class:`~wsfabric.interfaces.IBus`).
    :param clock: for the interval and the timestamps.
    :param interval: seconds between probes.
    :param timeout: seconds after a probe came back during which the bus
        counts as healthy, beyond ``interval``.

    :ivar last_ok: when (clock seconds) a probe last came back, or ``None``.
    :ivar rtt: the round trip of the last probe, in seconds.
    """

    _log = Logger()

    def __init__(
        self, bus: Any, clock: IReactorTime, interval: float = 1.0, timeout: float = 2.0
    ) -> None:
        self._bus = bus
        self._clock = clock
        self.interval = interval
        self.timeout = timeout
        self.last_ok: float | None = None
        self.rtt: float | None = None
        self._nonce: bytes | None = None
        self._sent = 0.0
        self._subscription: Any = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """
        Subscribe, probe once now and then every ``interval``.
        """
        super().startService()
        self._subscription = self._bus.subscribe(PROBE_CHANNEL, self._received)
        self._loop = LoopingCall(self.probe)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        """
        Stop probing.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def probe(self) -> None:
        """
        Send one probe.
        """
        self._nonce = os.urandom(8)
        self._sent = self._clock.seconds()
        self._bus.publish(PROBE_CHANNEL, self._nonce).addErrback(
            lambda failure: self._log.warn(
                "bus probe could not be published: {error}", error=failure.getErrorMessage()
            )
        )

    def _received(self, channel: str, payload: bytes) -> None:
        if payload == self._nonce:
            now = self._clock.seconds()
            self.last_ok = now
            self.rtt = now - self._sent
            self._nonce = None

    def healthy(self) -> bool:
        """
        :return: whether a probe came back within ``interval + timeout``.
        """
        if self.last_ok is None:
            return False
        return self._clock.seconds() - self.last_ok <= self.interval + self.timeout


def readiness(node: AdminNode, probe: BusProbe | None, clock: IReactorTime) -> dict[str, Any]:
    """
    Decide whether the node is ready for traffic.

    :param node: the node.
    :param probe: the standalone node's bus probe, or ``None``.
    :param clock: for the age of the last probe.
    :return: ``{"status": "ready" | "unavailable", "reason": ..., "checks":
        {...}}``; ``reason`` names the first check that failed.
    """
    checks: dict[str, Any] = {}
    reasons: list[str] = []
    now = clock.seconds()
    if node.stopping:
        reasons.append("the node is shutting down")
    if node.redis is not None:
        redis = node.redis
        last = redis.last_probe_ok
        age = None if last is None else round(now - last, 3)
        limit = redis.probe_interval + redis.probe_timeout
        checks["redis"] = {
            "connected": bool(redis.connected),
            "probe_age_seconds": age,
            "probe_rtt_seconds": redis.probe_rtt,
            "probe_max_age_seconds": limit,
        }
        if not redis.connected:
            reasons.append("Redis is not connected")
        elif not redis.healthy():
            reasons.append(
                f"no probe has made the round trip through Redis pub/sub in the last "
                f"{limit:g} s"
            )
    if probe is not None:
        last = probe.last_ok
        limit = probe.interval + probe.timeout
        checks["bus"] = {
            "probe_age_seconds": None if last is None else round(now - last, 3),
            "probe_rtt_seconds": probe.rtt,
            "probe_max_age_seconds": limit,
        }
        if not probe.healthy():
            reasons.append(
                f"no probe has made the round trip through the in-memory bus in the last "
                f"{limit:g} s"
            )
    backends = node.backends_connected()
    if backends is not None:
        checks["backends_connected"] = backends
        if backends == 0:
            reasons.append("no backend is connected")
    gates = node.gates_connected()
    if gates is not None:
        checks["gates_connected"] = gates
    if reasons:
        return {"status": "unavailable", "reason": "; ".join(reasons), "checks": checks}
    return {"status": "ready", "checks": checks}
