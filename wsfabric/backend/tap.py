"""
``twistd wsfabric-backend``: a backend of a cluster.

It hosts the application. Gates dial it over AMP (the listener binds to
loopback unless told otherwise) and send it their clients' events; the
application's IFabric calls go back to the owning gate over the same
connection (per-client calls), or out through Redis (group, uid and
all-client sends, and every query)::

    twistd -n wsfabric-backend --app examples.chat.app:ChatApp --listen tcp:7000
        --redis redis://127.0.0.1:6379/0

The backend registers itself in Redis with a lease, advertising the endpoint
gates should dial (``--advertise``, by default derived from ``--listen``).
On SIGTERM it tells the gates it is draining (they send its clients' next
events elsewhere), finishes the events it has, then leaves.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from wsfabric.admin.node import AdminNode
from wsfabric.admin.options import admin_parameters, check_admin_options
from wsfabric.admin.service import make_admin_service
from wsfabric.backend.amp import BackendContext, BackendServerFactory
from wsfabric.backend.dispatcher import Dispatcher
from wsfabric.cluster.options import CLUSTER_PARAMETERS, check_cluster_options
from wsfabric.fabric import Fabric
from wsfabric.gate.tap import ClusterNodeService
from wsfabric.ids import new_gate_id
from wsfabric.metrics import Metrics
from wsfabric.options import WsfabricOptions, load_app_factory, non_negative_float
from wsfabric.presence import cluster_presence
from wsfabric.rpc import RpcService, cluster_rpc
from wsfabric.service import daemonized, fatal
from wsfabric.standalone import APP_PARAMETERS, build_application


def advertised_endpoint(listen: str) -> str:
    """
    The client endpoint gates should dial for a backend listening on
    ``listen``: its interface if it names one, else 127.0.0.1.

    :param listen: a ``tcp:PORT[:interface=ADDR]`` server endpoint string.
    :raises ValueError: if that cannot be derived (give ``--advertise``).
    """
    # Colons inside a value (an IPv6 address) are escaped with a backslash.
    parts = re.split(r"(?<!\\):", listen)
    if parts[0] != "tcp" or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"cannot derive where gates should dial from {listen!r}")
    interface = "127.0.0.1"
    for part in parts[2:]:
        if part.startswith("interface="):
            interface = part.split("=", 1)[1].replace("\\", "")
    if interface in ("0.0.0.0", "::", ""):
        raise ValueError(f"{listen!r} listens on every interface")
    # Colons in an IPv6 address are escaped in endpoint strings.
    host = interface.replace(":", "\\:")
    return f"tcp:host={host}:port={parts[1]}"


class Options(WsfabricOptions):
    """
    Options of ``twistd wsfabric-backend``.
    """

    command = "wsfabric-backend"
    synopsis = "--app module.path:Name --listen ENDPOINT --redis URL [options]"
    longdesc = "Run a wsfabric backend: host the application, reached by gates over AMP."

    _log = Logger()
    optParameters = (
        WsfabricOptions.optParameters
        + APP_PARAMETERS
        + [
            [
                "listen",
                "l",
                "tcp:7000:interface=127.0.0.1",
                "Endpoint of the AMP listener gates dial (loopback by default).",
            ],
            [
                "advertise",
                None,
                None,
                "Endpoint gates should dial, e.g. tcp:10.0.0.5:7000 "
                "(default: derived from --listen).",
            ],
            ["service", None, "default", "The service this backend provides."],
            [
                "shutdown-timeout",
                None,
                10.0,
                "Seconds to wait on shutdown for the application to finish its events.",
                non_negative_float,
            ],
        ]
        + CLUSTER_PARAMETERS
        + admin_parameters("backend")
    )
    optFlags = [
        [
            "client-events",
            None,
            "Receive clients' connect and close events although the service is not "
            "default (also: an application attribute wants_client_events = True).",
        ],
    ]

    def postOptions(self) -> None:
        """
        Check the options and find the application.
        """
        super().postOptions()
        if not self["app"]:
            raise usage.UsageError("--app is required (e.g. --app examples.echo.app:EchoApp)")
        self["app-factory"] = load_app_factory(self["app"], self["app-dir"])
        service = self["service"]
        if not service or "." in service or not service.isprintable() or len(service) > 100:
            # Gates route "NAME.route" by the text before the first dot.
            raise usage.UsageError(
                f"--service {service!r}: a service name is 1 to 100 printable characters "
                "without a dot"
            )
        check_cluster_options(self)
        check_admin_options(self, "backend")
        if self["advertise"] is None:
            try:
                self["advertise"] = advertised_endpoint(self["listen"])
            except ValueError as e:
                raise usage.UsageError(f"--listen: {e}; give --advertise") from None
            if "interface=" not in self["listen"]:
                # "tcp:7000" listens everywhere but can only advertise
                # loopback: fine on one machine, unreachable from others.
                self._log.warn(
                    "--listen {listen} listens on every interface, but gates are told to "
                    "dial {advertise}: gates on other machines cannot reach this backend "
                    "(give --advertise tcp:host=ADDRESS:port=PORT)",
                    listen=self["listen"],
                    advertise=self["advertise"],
                )


class BackendMembership(Service):
    """
    Keeps the backend registered in the cluster (with the endpoint gates
    dial), and on shutdown drains: tells the gates, finishes the events it
    has (boundedly), then leaves.

    :param backend_id: this backend's id.
    :param info: what it registers (endpoint, service).
    :param redis: the node's Redis service.
    :param context: the state its gate connections share.
    :param clock: for retries and the shutdown bound.
    :param shutdown_timeout: seconds to wait for the application.
    """

    _log = Logger()

    def __init__(
        self,
        backend_id: str,
        info: dict[str, Any],
        redis: Any,
        context: BackendContext,
        clock: Any,
        shutdown_timeout: float,
    ) -> None:
        self._backend_id = backend_id
        self._info = info
        self._redis = redis
        self._context = context
        self._clock = clock
        self._shutdown_timeout = shutdown_timeout
        self._retry: Any = None
        self._remove_listener: Any = None

    def startService(self) -> None:
        """
        Register with the lease, and again if Redis loses its data.
        """
        super().startService()
        self._remove_listener = self._redis.add_listener(
            on_data_lost=lambda *_: self._register(), on_lease_lost=self._lease_lost
        )
        self._register()

    def _register(self) -> None:
        self._retry = None
        if not self.running:
            return

        def failed(failure: Failure) -> None:
            self._log.warn(
                "could not register backend {backend_id} in Redis ({error}); retrying",
                backend_id=self._backend_id,
                error=failure.getErrorMessage(),
            )
            if self.running:
                self._retry = self._clock.callLater(1.0, self._register)

        self._redis.registry.register(self._backend_id, "backend", self._info).addErrback(
            failed
        )

    def _lease_lost(self, node_id: Any = None, *args: Any) -> None:
        # A backend holds no client state: being declared dead only means it
        # must register again to be found.
        if node_id is None or node_id == self._backend_id:
            self._log.warn("backend {backend_id} lost its lease; registering again",
                           backend_id=self._backend_id)
            self._register()

    def stopService(self) -> Deferred[None]:
        """
        Drain, then leave the cluster.
        """
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._remove_listener is not None:
            self._remove_listener()
        self._context.drain()
        self._context.stop_gate_checks()
        dispatcher = self._context.dispatcher
        # Events the gates sent before they heard we are draining are still
        # on their way: give them a moment, then wait for the application.
        settled = deferLater(self._clock, 0.2, lambda: None)
        settled.addCallback(lambda _: dispatcher.when_idle())
        settled.addTimeout(self._shutdown_timeout, self._clock)
        settled.addErrback(
            lambda _: self._log.warn(
                "shutting down with {count} clients' events unfinished",
                count=dispatcher.busy,
            )
        )

        def leave(_: object) -> Deferred[None]:
            try:
                left = self._redis.registry.unregister(self._backend_id)
            except Exception:
                return succeed(None)
            return left.addErrback(lambda _: None)

        return settled.addCallback(leave)


class AmpListenerService(StreamServerEndpointService):
    """
    The backend's AMP listener; a listening failure is a one-line error.

    :param description: the endpoint string, for error messages.
    """

    def __init__(
        self, description: str, endpoint: Any, factory: Any, daemon: bool = False
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.daemon = daemon
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """
        Start listening now.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = e.socketError.strerror if e.socketError is not None else str(e)
            fatal(f"cannot listen on {self.description}: {reason}", self.daemon)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening and close the gates' connections.
        """
        stopped = super().stopService()
        for connection in list(self.factory.context.gates.values()):
            connection.transport.loseConnection()
        return stopped


def makeService(options: Options) -> IService:
    """
    Build the service tree of ``twistd wsfabric-backend``.
    """
    from twisted.internet import reactor

    return make_service(options, reactor)


def make_service(options: Options, reactor: Any) -> ClusterNodeService:
    """
    :param options: parsed options.
    :param reactor: the reactor to run on.
    :return: the service tree: Redis, the AMP listener, membership (stopped
        first: it drains before the listener closes the gates' connections).
    """
    from wsfabric.cluster.redis import RedisService, check_reachable

    metrics = Metrics()
    backend_id = new_gate_id()
    try:
        redis = RedisService(
            reactor,
            options["redis"],
            backend_id,
            namespace=options["namespace"],
            lease=options["lease"],
            command_timeout=options["redis-timeout"],
        )
    except Exception as e:
        fatal(f"--redis: {e}")
    context: BackendContext
    fabric = Fabric(redis.index, redis.bus, lambda gate_id: context.locate_gate(gate_id))
    app = build_application(options["app-factory"], options["app"], fabric)
    fabric.rpc = cluster_rpc(reactor, redis, backend_id, options["secret"], app)
    dispatcher = Dispatcher(app, metrics, lambda c, p: context.flow_control(c, p))
    client_events = bool(options["client-events"] or getattr(app, "wants_client_events", False))
    context = BackendContext(
        backend_id,
        options["service"],
        options["secret"],
        dispatcher,
        reactor,
        metrics,
        call_timeout=options["call-timeout"],
        client_events=client_events,
        gate_alive=lambda gate_id: redis.registry.live_nodes("gate").addCallback(
            lambda gates: gate_id in gates
        ),
        # A gate's lease outlives its death by at most a lease: check then.
        gate_grace=options["lease"],
    )
    try:
        endpoint = serverFromString(reactor, options["listen"])
    except (ValueError, KeyError, TypeError) as e:
        fatal(f"--listen {options['listen']}: not a valid endpoint ({e})")

    root = ClusterNodeService(reactor, options["redis"], check_reachable, daemonized(options))
    root.metrics = metrics  # type: ignore[attr-defined]
    root.fabric = fabric  # type: ignore[attr-defined]
    root.redis = redis  # type: ignore[attr-defined]
    # First: it starts first and stops last, so health answers while draining.
    admin = make_admin_service(
        options,
        AdminNode("backend", lambda: backend_id, metrics, root, fabric=fabric, redis=redis,
                  gates=context.gates),
        reactor,
        daemonized(options),
    )
    if admin is not None:
        admin.setServiceParent(root)
    redis.setServiceParent(root)
    RpcService(fabric.rpc).setServiceParent(root)
    presence = cluster_presence(reactor, redis, backend_id, options["service"], app, fabric)
    if presence is not None:
        presence.setServiceParent(root)
    AmpListenerService(
        options["listen"], endpoint, BackendServerFactory(context), daemonized(options)
    ).setServiceParent(root)
    BackendMembership(
        backend_id,
        {
            "endpoint": options["advertise"],
            "service": options["service"],
            "client_events": client_events,
        },
        redis,
        context,
        reactor,
        options["shutdown-timeout"],
    ).setServiceParent(root)
    return root
