"""
``twistd wsfabric``: standalone mode.

The gate and the backend run in one process over the in-memory bus and
index, with exactly the semantics of a cluster. No Redis is needed; this is
where a newcomer starts::

    twistd -n wsfabric --app examples.chat.app:ChatApp --static examples/chat/static
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from wsfabric.admin.node import AdminNode
from wsfabric.admin.options import admin_parameters, check_admin_options
from wsfabric.admin.service import make_admin_service
from wsfabric.backend.dispatcher import Dispatcher
from wsfabric.cluster.memory import MemoryBus, MemoryIndex
from wsfabric.fabric import Fabric
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
from wsfabric.interfaces import IApplication, IFabric, IGateControl
from wsfabric.metrics import Metrics
from wsfabric.options import WsfabricOptions, load_app_factory
from wsfabric.presence import standalone_presence
from wsfabric.rpc import standalone_rpc
from wsfabric.service import NodeService, daemonized, fatal

APP_PARAMETERS: list[list[Any]] = [
    ["app", "a", None, "The application: module.path:Name, a callable taking the fabric."],
    ["app-dir", None, ".", "Directory searched first for the --app module."],
]


class Options(WsfabricOptions):
    """
    Options of ``twistd wsfabric``.
    """

    command = "wsfabric"
    synopsis = "--app module.path:Name [options]"
    longdesc = (
        "Run a wsfabric application standalone: WebSocket clients, the "
        "application and the whole IFabric API in one process, no Redis needed."
    )
    optParameters = (
        WsfabricOptions.optParameters + APP_PARAMETERS + EDGE_PARAMETERS
        + admin_parameters("standalone")
    )
    optFlags = EDGE_FLAGS
    repeatable = ("allowed-origin", "trusted-proxy")

    def opt_allowed_origin(self, origin: str) -> None:  # noqa: D102 (set below)
        self.append("allowed-origin", origin)

    opt_allowed_origin.__doc__ = ALLOWED_ORIGIN_HELP

    def opt_trusted_proxy(self, proxy: str) -> None:  # noqa: D102 (set below)
        self.append("trusted-proxy", proxy)

    opt_trusted_proxy.__doc__ = TRUSTED_PROXY_HELP

    def postOptions(self) -> None:
        """
        Check the options and find the application.
        """
        super().postOptions()
        if not self["app"]:
            raise usage.UsageError("--app is required (e.g. --app examples.echo.app:EchoApp)")
        self["app-factory"] = load_app_factory(self["app"], self["app-dir"])
        check_edge_options(self)
        check_admin_options(self, "standalone")


def build_application(factory: Any, spec: str, fabric: IFabric) -> IApplication:
    """
    Call the ``--app`` callable with the fabric.

    :param factory: the callable.
    :param spec: how ``--app`` named it, for error messages.
    :param fabric: the fabric to give it.
    :return: the application.
    :raises SystemExit: after a one-line message, if the callable fails or
        its result does not provide :class:`~wsfabric.interfaces.IApplication`.
    """
    try:
        app = factory(fabric)
    except Exception as e:
        fatal(f"--app {spec}: creating the application failed: {type(e).__name__}: {e}")
    if not IApplication.providedBy(app):
        fatal(
            f"--app {spec}: {type(app).__name__} does not provide IApplication "
            "(declare it with @implementer(IApplication))"
        )
    return app


def make_standalone(
    app_factory: Any,
    reactor: Any,
    metrics: Metrics | None = None,
    spec: str = "the application",
    bus: MemoryBus | None = None,
) -> tuple[Gate, Dispatcher, Fabric, IApplication]:
    """
    Wire the pieces of a standalone node: gate, in-memory bus and index,
    fabric, application, dispatcher.

    :param app_factory: the ``--app`` callable.
    :param reactor: the reactor (unused today; taken for symmetry with the
        cluster roles).
    :param metrics: the counters, or ``None`` for new ones.
    :param spec: how the application was named, for error messages.
    :param bus: the in-memory bus, or ``None`` for a new one.
    :return: the gate, the dispatcher, the fabric and the application.
    """
    metrics = metrics if metrics is not None else Metrics()
    index = MemoryIndex()
    bus = bus if bus is not None else MemoryBus()
    gate_id = new_gate_id()
    gate: Gate

    def locate_gate(wanted: str) -> IGateControl | None:
        return gate if wanted == gate_id else None

    def flow_control(client_id: str, paused: bool) -> None:
        if paused:
            gate.pause_client(client_id)
        else:
            gate.resume_client(client_id)

    fabric = Fabric(index, bus, locate_gate)
    app = build_application(app_factory, spec, fabric)
    fabric.rpc = standalone_rpc(reactor, bus, gate_id, app)
    dispatcher = Dispatcher(app, metrics, flow_control)
    # The gate writes through presence events when the application wants them.
    gate = Gate(gate_id, standalone_presence(bus, index, gate_id, app, fabric), bus,
                dispatcher, metrics)
    return gate, dispatcher, fabric, app


def makeService(options: Options) -> IService:
    """
    Build the service tree of ``twistd wsfabric``.
    """
    from twisted.internet import reactor

    return make_service(options, reactor)


def make_service(options: Options, reactor: Any) -> NodeService:
    """
    :param options: parsed options.
    :param reactor: the reactor to run on.
    :return: the service tree: the gate, then the client listener (so that on
        shutdown the listener stops accepting before the gate closes its
        clients).
    """
    metrics = Metrics()
    bus = MemoryBus()
    gate, dispatcher, fabric, app = make_standalone(
        options["app-factory"], reactor, metrics, options["app"], bus
    )
    listener, factory = make_client_listener(options, gate, metrics, reactor)
    tcp = make_tcp_listener(options, gate, metrics, reactor, factory.gatekeeper)
    root = NodeService(reactor)
    # Kept on the root so tests and the admin listener can reach them.
    root.gate = gate  # type: ignore[attr-defined]
    root.fabric = fabric  # type: ignore[attr-defined]
    root.metrics = metrics  # type: ignore[attr-defined]
    # First: it starts first and stops last, so health answers while draining.
    admin = make_admin_service(
        options,
        AdminNode("standalone", lambda: gate.gate_id, metrics, root, fabric=fabric,
                  gate=gate, bus=bus),
        reactor,
        daemonized(options),
    )
    if admin is not None:
        admin.setServiceParent(root)
    gate_service = GateService(
        gate, factory, reactor, options["shutdown-timeout"], dispatcher.when_idle
    )
    gate_service.setServiceParent(root)
    listener.setServiceParent(root)
    if tcp is not None:
        gate_service.add_transport(tcp[1])
        tcp[0].setServiceParent(root)
    return root


__all__ = ["Options", "makeService", "make_service", "make_standalone"]
