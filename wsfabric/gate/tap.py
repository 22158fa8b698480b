"""
``twistd wsfabric-gate``: a gate of a cluster.

It holds client connections, sends their events to backends over AMP (it
dials every live backend), writes its clients' entries in the Redis index,
and delivers the fan-out that arrives over Redis pub/sub::

    twistd -n wsfabric-gate --listen tcp:8080 --redis redis://127.0.0.1:6379/0

What it does when things fail:

- Redis loses its data (restarted empty): the gate rewrites all its
  clients' entries; the bus restores its subscriptions itself.
- The gate was paused past its lease and declared dead: it closes its
  clients with 1012 (they reconnect) and carries on under a new incarnation;
  it never writes under the dead one again.
- A backend dies or hangs: its clients move to the other backends.
- SIGTERM: it stops accepting, closes its clients with 1001, removes its
  entries and lease, and exits 0.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from wsfabric.admin.gatefabric import gate_fabric
from wsfabric.admin.node import AdminNode
from wsfabric.admin.options import admin_parameters, check_admin_options
from wsfabric.admin.service import make_admin_service
from wsfabric.cluster.options import CLUSTER_PARAMETERS, check_cluster_options
from wsfabric.gate.backends import BackendDiscovery, BackendPool, LinkSettings
from wsfabric.gate.control import GateControlService
from wsfabric.gate.edge import (
    ALLOWED_ORIGIN_HELP,
    EDGE_FLAGS,
    EDGE_PARAMETERS,
    TRUSTED_PROXY_HELP,
    GateService,
    check_edge_options,
    make_client_listener,
    make_tcp_listener,
)
from wsfabric.gate.gate import Gate
from wsfabric.ids import new_gate_id
from wsfabric.metrics import Metrics
from wsfabric.options import WsfabricOptions
from wsfabric.service import NodeService, daemonized, fatal


class Options(WsfabricOptions):
    """
    Options of ``twistd wsfabric-gate``.
    """

    command = "wsfabric-gate"
    synopsis = "--listen ENDPOINT --redis URL [options]"
    longdesc = (
        "Run a wsfabric gate: hold client connections, route their events to "
        "backends over AMP, and deliver fan-out that arrives over Redis."
    )
    optParameters = (
        WsfabricOptions.optParameters + EDGE_PARAMETERS + CLUSTER_PARAMETERS
        + admin_parameters("gate")
    )
    optFlags = EDGE_FLAGS
    repeatable = ("allowed-origin", "backend", "trusted-proxy")

    def opt_allowed_origin(self, origin: str) -> None:  # noqa: D102 (set below)
        self.append("allowed-origin", origin)

    opt_allowed_origin.__doc__ = ALLOWED_ORIGIN_HELP

    def opt_trusted_proxy(self, proxy: str) -> None:  # noqa: D102 (set below)
        self.append("trusted-proxy", proxy)

    opt_trusted_proxy.__doc__ = TRUSTED_PROXY_HELP

    def opt_backend(self, endpoint: str) -> None:
        """
        A backend to dial (tcp:HOST:PORT), instead of finding them in Redis (repeatable).
        """
        self.append("backend", endpoint)

    def postOptions(self) -> None:
        """
        Check the options.
        """
        super().postOptions()
        check_edge_options(self)
        check_cluster_options(self)
        check_admin_options(self, "gate")


class GateMembership(Service):
    """
    Keeps the gate registered in the cluster (its lease), and handles what
    the cluster state tells it: data lost (rewrite every entry) and lease
    lost (start a new incarnation).

    :param gate: the gate.
    :param redis: the node's Redis service.
    :param pool: the backend pool (re-authenticated under a new incarnation).
    :param clock: for retries.
    """

    _log = Logger()

    def __init__(
        self, gate: Gate, redis: Any, pool: BackendPool, clock: Any, repair_interval: float = 5.0
    ) -> None:
        self._gate = gate
        self._redis = redis
        self._pool = pool
        self._clock = clock
        self._repair_interval = repair_interval
        self._remove_listener: Any = None
        self._retry: Any = None
        self._repairer: LoopingCall | None = None
        self._failures_seen = 0
        self._repairing = False

    def startService(self) -> None:
        """
        Register, and listen for the cluster state's news.
        """
        super().startService()
        self._remove_listener = self._redis.add_listener(
            on_data_lost=self._data_lost,
            on_lease_lost=self._lease_lost,
            on_connected=self._connected,
        )
        self._register()
        self._repairer = LoopingCall(self._repair_if_needed)
        self._repairer.clock = self._clock
        self._repairer.start(self._repair_interval, now=False)

    def _connected(self, link: str, reconnected: bool) -> None:
        # Writes refused while Redis was away left the index behind.
        if link == "command" and reconnected:
            self._repair("Redis came back")

    def _repair_if_needed(self) -> None:
        failures = self._gate.index_failures
        if failures != self._failures_seen:
            self._repair(f"{failures - self._failures_seen} index writes failed")

    def _repair(self, why: str) -> None:
        """
        Rewrite the gate's entries in the index from what the gate holds.
        """
        from wsfabric.cluster.redis import ClientRecord

        if self._repairing:
            return
        self._repairing = True
        self._failures_seen = self._gate.index_failures

        def current(client_ids: Any) -> list[ClientRecord]:
            return [ClientRecord(*record) for record in self._gate.records(client_ids)]

        def done(counts: Any) -> None:
            self._log.info(
                "rewrote the index entries of {count} clients and removed {removed} "
                "stale ones ({why})",
                count=counts[0],
                removed=counts[1],
                why=why,
            )

        def failed(failure: Failure) -> None:
            # Try again at the next tick.
            self._failures_seen = -1
            self._log.warn("could not rewrite the index ({why}): {error}", why=why,
                           error=failure.getErrorMessage())

        def finished(result: object) -> object:
            self._repairing = False
            return result

        try:
            rewriting = self._redis.index.resync_gate(self._gate.gate_id, current)
        except Exception:
            rewriting = fail()
        rewriting.addCallbacks(done, failed).addBoth(finished)

    def _register(self) -> None:
        self._retry = None
        if not self.running:
            return

        def failed(failure: Failure) -> None:
            self._log.warn(
                "could not register gate {gate_id} in Redis ({error}); retrying",
                gate_id=self._gate.gate_id,
                error=failure.getErrorMessage(),
            )
            if self.running:
                self._retry = self._clock.callLater(1.0, self._register)

        self._redis.registry.register(self._gate.gate_id, "gate", {}).addErrback(failed)

    def _data_lost(self, *args: Any) -> None:
        self._log.warn("Redis lost its data; rewriting this gate's index entries")
        self._repairing = False
        self._repair("Redis lost its data")

    def _lease_lost(self, node_id: Any = None, *args: Any) -> None:
        if node_id is not None and node_id != self._gate.gate_id:
            return
        old = self._gate.gate_id
        new = new_gate_id()
        closed = self._gate.reincarnate(new)
        self._log.error(
            "gate {old} was declared dead by the cluster (paused past its lease?); "
            "closed its {count} clients and continues as gate {new}",
            old=old,
            new=new,
            count=closed,
        )
        self._redis.registry.unregister(old).addErrback(lambda _: None)
        self._register()
        # The backends know the gate by id: authenticate again under the new one.
        self._pool.reconnect_all()

    def stopService(self) -> Deferred[None]:
        """
        Leave the cluster: remove the lease and whatever entries are left.
        """
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._repairer is not None and self._repairer.running:
            self._repairer.stop()
        if self._remove_listener is not None:
            self._remove_listener()
        try:
            left = self._redis.registry.unregister(self._gate.gate_id)
        except Exception:
            return succeed(None)
        return left.addErrback(
            lambda failure: self._log.warn(
                "could not remove gate {gate_id} from Redis: {error}",
                gate_id=self._gate.gate_id,
                error=failure.getErrorMessage(),
            )
        )


def makeService(options: Options) -> IService:
    """
    Build the service tree of ``twistd wsfabric-gate``.
    """
    from twisted.internet import reactor

    return make_service(options, reactor)


def make_service(options: Options, reactor: Any) -> NodeService:
    """
    :param options: parsed options.
    :param reactor: the reactor to run on.
    :return: the service tree, started in this order (and stopped in the
        reverse): Redis, membership, backend links, the gate, the client
        listener.
    """
    from wsfabric.cluster.redis import RedisService, check_reachable

    metrics = Metrics()
    gate_id = new_gate_id()
    try:
        redis = RedisService(
            reactor,
            options["redis"],
            gate_id,
            namespace=options["namespace"],
            lease=options["lease"],
            command_timeout=options["redis-timeout"],
        )
    except Exception as e:
        fatal(f"--redis: {e}")
    pool = BackendPool.__new__(BackendPool)
    gate = Gate(gate_id, redis.index, redis.bus, pool, metrics)
    settings = LinkSettings(
        gate, options["secret"], reactor, metrics, call_timeout=options["call-timeout"]
    )
    BackendPool.__init__(pool, settings, reactor)
    static = []
    for description in options["backend"]:
        try:
            static.append((description, clientFromString(reactor, description)))
        except (ValueError, KeyError, TypeError) as e:
            fatal(f"--backend {description}: not a valid client endpoint ({e})")
    discovery = BackendDiscovery(
        pool,
        static,
        None if static else (lambda: redis.registry.live_nodes("backend")),
        lambda description: clientFromString(reactor, description),
        reactor,
    )
    listener, factory = make_client_listener(options, gate, metrics, reactor)
    # Accept clients once Redis answers (or after 5 s, when they get a clear
    # 1011 rather than a hang).
    listener.accept_when(redis.when_connected(timeout=5.0))
    tcp = make_tcp_listener(options, gate, metrics, reactor, factory.gatekeeper)
    if tcp is not None:
        tcp[0].accept_when(redis.when_connected(timeout=5.0))

    root = ClusterNodeService(reactor, options["redis"], check_reachable, daemonized(options))
    root.gate = gate  # type: ignore[attr-defined]
    root.metrics = metrics  # type: ignore[attr-defined]
    root.redis = redis  # type: ignore[attr-defined]
    root.pool = pool  # type: ignore[attr-defined]
    # First: it starts first and stops last, so health answers while draining.
    admin = make_admin_service(
        options,
        AdminNode("gate", lambda: gate.gate_id, metrics, root,
                  fabric=gate_fabric(gate, redis.index, redis.bus),
                  redis=redis, pool=pool, gate=gate),
        reactor,
        daemonized(options),
    )
    if admin is not None:
        admin.setServiceParent(root)
    redis.setServiceParent(root)
    GateMembership(gate, redis, pool, reactor).setServiceParent(root)
    # Per-client commands from outside processes (wsfabric.connect).
    GateControlService(reactor, redis.bus, gate, options["secret"]).setServiceParent(root)
    discovery.setServiceParent(root)
    gate_service = GateService(gate, factory, reactor, options["shutdown-timeout"])
    gate_service.setServiceParent(root)
    listener.setServiceParent(root)
    if tcp is not None:
        gate_service.add_transport(tcp[1])
        tcp[0].setServiceParent(root)
    return root


class ClusterNodeService(NodeService):
    """
    The root of a cluster role: before the reactor runs, checks that Redis
    answers, so that an unreachable Redis is a one-line start-up error.

    :param redis_url: the Redis URL.
    :param check: ``check(url, timeout)`` raises with the reason when Redis
        does not answer.
    :param daemon: whether twistd daemonizes.
    """

    def __init__(self, reactor: Any, redis_url: str, check: Any, daemon: bool = False) -> None:
        super().__init__(reactor)
        self._redis_url = redis_url
        self._check = check
        self._daemon = daemon

    def privilegedStartService(self) -> None:
        """
        Check Redis, then let the children bind their ports.
        """
        try:
            self._check(self._redis_url, 5.0)
        except Exception as e:
            fatal(f"cannot reach Redis at {_redact(self._redis_url)}: {e}", self._daemon)
        super().privilegedStartService()


def _redact(url: str) -> str:
    # Never print a password.
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


__all__ = ["Options", "makeService", "make_service", "usage"]
