"""
The client-facing part of a node, shared by standalone mode and the cluster
gate: its options, and the services that listen for clients and close them
on shutdown.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from wsfabric.errors import ClusterUnavailable, ConfigurationError
from wsfabric.gate.auth import AUTH_FLAGS, AUTH_PARAMETERS, check_auth_options
from wsfabric.gate.gate import CLOSE_GOING_AWAY, Gate
from wsfabric.gate.limits import (  # noqa: F401 (TRUSTED_PROXY_HELP: for the roles' Options)
    LIMIT_PARAMETERS,
    TRUSTED_PROXY_HELP,
    check_limit_options,
)
from wsfabric.gate.origins import OriginPolicy
from wsfabric.gate.tcp import FabricTcpFactory
from wsfabric.gate.web import EdgeFactory, make_site
from wsfabric.gate.websocket import EdgeSettings, FabricServerFactory
from wsfabric.metrics import Metrics
from wsfabric.options import non_negative_float, non_negative_int, positive_float, positive_int
from wsfabric.service import daemonized, fatal

#: Options of the client listener, for ``optParameters``.
EDGE_PARAMETERS: list[list[Any]] = [
    [
        "listen",
        "l",
        "tcp:8080:interface=127.0.0.1",
        "Endpoint for clients (WebSocket and HTTP), e.g. tcp:8080 or "
        "ssl:443:privateKey=key.pem:certKey=cert.pem.",
    ],
    [
        "listen-tcp",
        None,
        None,
        "Endpoint for raw TCP clients (length-prefixed frames, see "
        "docs/wire-protocol.md), e.g. tcp:9090:interface=127.0.0.1. Default: off.",
    ],
    ["ws-path", None, "/ws", "Path of the WebSocket endpoint."],
    ["static", None, None, "Serve the files of this directory at /."],
    [
        "max-message-size",
        None,
        1048576,
        "Largest client message in bytes; a larger one closes the client with 1009.",
        positive_int,
    ],
    [
        "max-outbound-queue",
        None,
        1048576,
        "Bytes that may wait for a client that is not reading before it is "
        "closed with 1008 (slow consumer).",
        positive_int,
    ],
    [
        "handshake-timeout",
        None,
        5.0,
        "Seconds a client has to complete the opening handshake.",
        positive_float,
    ],
    [
        "ping-interval",
        None,
        20.0,
        "Seconds between WebSocket pings to each client (0: no pings).",
        non_negative_float,
    ],
    [
        "ping-timeout",
        None,
        10.0,
        "Seconds a client has to answer a ping before it is dropped.",
        non_negative_float,
    ],
    [
        "max-connections",
        None,
        50000,
        "Most clients held at once (0: no limit); over it, handshakes get HTTP 503.",
        non_negative_int,
    ],
    [
        "shutdown-timeout",
        None,
        5.0,
        "Seconds to wait on shutdown, after the drain window, for clients to "
        "finish their close handshake.",
        non_negative_float,
    ],
    [
        "drain-window",
        None,
        5.0,
        "Seconds over which shutdown spreads closing clients (1001), in batches, "
        "so that they do not all reconnect elsewhere at once.",
        non_negative_float,
    ],
    *AUTH_PARAMETERS,
    *LIMIT_PARAMETERS,
]

#: Flags of the client listener, for ``optFlags``.
EDGE_FLAGS: list[list[Any]] = [
    ["compression", None, "Accept permessage-deflate compression from clients."],
    *AUTH_FLAGS,
]

#: Clients closed per batch when shutdown spreads them over the drain
#: window; a gate with no more clients than this closes them all at once.
DRAIN_BATCH = 100

ALLOWED_ORIGIN_HELP = (
    "A browser origin allowed to connect, e.g. https://app.example.com "
    "(repeatable; * allows all). Default: same origin only."
)


def check_edge_options(options: usage.Options) -> None:
    """
    Validate the client listener's options and store the resulting
    :class:`EdgeSettings` under ``"edge-settings"``.

    :raises usage.UsageError: naming the bad option.
    """
    if not options["ws-path"].startswith("/"):
        raise usage.UsageError("--ws-path must start with /")
    if options["listen-tcp"] is not None and options["listen-tcp"] == options["listen"]:
        raise usage.UsageError("--listen-tcp must be another endpoint than --listen")
    static = options["static"]
    if static is not None and not os.path.isdir(static):
        raise usage.UsageError(f"--static {static}: no such directory")
    try:
        origins = OriginPolicy(options["allowed-origin"])
    except ConfigurationError as e:
        raise usage.UsageError(f"--allowed-origin: {e}") from None
    options["edge-settings"] = EdgeSettings(
        max_message_size=options["max-message-size"],
        max_outbound_queue=options["max-outbound-queue"],
        handshake_timeout=options["handshake-timeout"],
        ping_interval=options["ping-interval"],
        ping_timeout=options["ping-timeout"],
        max_connections=options["max-connections"],
        origins=origins,
        compression=bool(options["compression"]),
        authenticator=check_auth_options(options),
        limits=check_limit_options(options),
        drain_window=options["drain-window"],
    )


class ClientListenerService(StreamServerEndpointService):
    """
    Listens for clients. A listening failure (port in use, bad permissions)
    becomes a one-line error that ends the process before it starts serving.

    :param description: the endpoint string, for error messages.
    """

    def __init__(
        self, description: str, endpoint: Any, factory: Any, daemon: bool = False
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.daemon = daemon
        # Report listening errors from privilegedStartService, before the
        # reactor runs, instead of logging them later.
        self._raiseSynchronously = True
        self._ready: Deferred[Any] | None = None

    def accept_when(self, ready: Deferred[Any]) -> None:
        """
        Bind the port at start as usual, but accept connections only once
        ``ready`` fires (connections wait in the kernel's backlog meanwhile).

        :param ready: fires when the node can serve clients.
        """
        self._ready = ready

    def startService(self) -> None:
        """
        Start listening, paused until the node is ready.
        """
        super().startService()
        ready = self._ready
        if ready is None or self._waitingForPort is None:
            return

        def paused(port: Any) -> Any:
            if not ready.called:
                port.stopReading()
                ready.addBoth(lambda result: (port.startReading(), result)[1])
            return port

        self._waitingForPort.addCallback(paused)

    def privilegedStartService(self) -> None:
        """
        Start listening now.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = e.socketError.strerror if e.socketError is not None else str(e)
            fatal(f"cannot listen on {self.description}: {reason}", self.daemon)


class GateService(Service):
    """
    Runs a gate: joins the bus when it starts; on shutdown closes every
    client with 1001 and waits (boundedly) for their close handshakes and
    their ``on_close`` hooks.

    :param gate: the gate.
    :param factory: the WebSocket factory, to wait for its connections.
    :param clock: for the shutdown bound.
    :param shutdown_timeout: seconds to wait for clients on shutdown.
    :param idle: returns a Deferred that fires once the application has
        handled every pending event, or ``None``.
    """

    _log = Logger()

    def __init__(
        self,
        gate: Gate,
        factory: FabricServerFactory,
        clock: Any,
        shutdown_timeout: float,
        idle: Any = None,
    ) -> None:
        self.gate = gate
        self._factory = factory
        self._clock = clock
        self._shutdown_timeout = shutdown_timeout
        self._idle = idle
        self._transports: list[Any] = [factory]

    def add_transport(self, factory: Any) -> None:
        """
        Also wait on shutdown for the connections of another transport
        (``factory.connections``: protocols with an ``is_closed`` Deferred),
        e.g. the raw TCP one. The gate closes their clients with the rest.
        """
        self._transports.append(factory)

    def startService(self) -> None:
        """
        Join the bus's all-clients channel.
        """
        super().startService()
        self.gate.start().addErrback(self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        if failure.check(ClusterUnavailable):
            # Redis is not connected yet: the channel stays wanted and the
            # bus subscribes once it is (clients are accepted only then).
            self._log.info(
                "the gate joins the bus once Redis answers ({error})",
                error=failure.getErrorMessage(),
            )
            return
        self._log.failure("gate could not start", failure)

    def stopService(self) -> Deferred[None]:
        """
        Close every client with 1001, in batches spread over the drain
        window, and wait for them, at most the drain window plus
        ``shutdown_timeout`` seconds.
        """
        super().stopService()
        self._factory.draining = True
        count = len(self.gate)
        window = self._factory.settings.drain_window
        if count:
            self._log.info("closing {count} clients", count=count)
        closing = [
            protocol.is_closed
            for transport in self._transports
            for protocol in list(transport.connections)
        ]
        if window > 0 and count > DRAIN_BATCH:
            self._log.info(
                "spreading the close of {count} clients over {window} s", count=count,
                window=window,
            )
            removed = self.gate.close_all(
                CLOSE_GOING_AWAY, "server shutting down", self._clock, DRAIN_BATCH, window
            )
        else:
            removed = self.gate.close_all(CLOSE_GOING_AWAY, "server shutting down", self._clock)
        if self._idle is not None:
            # Clients are closed over several reactor turns: once all are
            # (their on_close queued), wait for the application to finish.
            idle = self._idle
            removed.addCallback(lambda _: idle())
        # consumeErrors: connections still open at the timeout are cancelled;
        # that is not an error to report.
        done = gatherResults(
            [removed, DeferredList(closing, consumeErrors=True)], consumeErrors=True
        )
        done.addTimeout(window + self._shutdown_timeout, self._clock)
        done.addErrback(lambda _: None)
        done.addCallback(lambda _: self.gate.stop())
        return done.addCallback(lambda _: None)


def make_tcp_listener(
    options: usage.Options,
    gate: Gate,
    metrics: Metrics,
    reactor: Any,
    gatekeeper: Any = None,
) -> tuple[ClientListenerService, FabricTcpFactory] | None:
    """
    Build the raw TCP listener of a node (``--listen-tcp``).

    :param options: parsed options with the edge options.
    :param gate: the gate clients belong to.
    :param metrics: the node's counters.
    :param reactor: the reactor.
    :param gatekeeper: the WebSocket factory's gatekeeper, so that both
        transports count connections together.
    :return: the listener service and the TCP factory, or ``None`` without
        ``--listen-tcp``.
    :raises SystemExit: if the endpoint is not valid.
    """
    description = options["listen-tcp"]
    if description is None:
        return None
    factory = FabricTcpFactory(
        gate, options["edge-settings"], metrics, reactor, gatekeeper=gatekeeper
    )
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        fatal(f"--listen-tcp {description}: not a valid endpoint ({e})")
    return ClientListenerService(description, endpoint, factory, daemonized(options)), factory


def make_client_listener(
    options: usage.Options,
    gate: Gate,
    metrics: Metrics,
    reactor: Any,
) -> tuple[ClientListenerService, FabricServerFactory]:
    """
    Build the client listener of a node.

    :param options: parsed options with the edge options.
    :param gate: the gate clients belong to.
    :param metrics: the node's counters.
    :param reactor: the reactor.
    :return: the listener service and the WebSocket factory.
    :raises SystemExit: if the listen endpoint is not valid.
    """
    settings: EdgeSettings = options["edge-settings"]
    factory = FabricServerFactory(gate, settings, metrics, reactor)
    site = make_site(options["ws-path"], options["static"], reactor)
    edge = EdgeFactory(
        factory, site, options["ws-path"], reactor, settings.handshake_timeout
    )
    try:
        endpoint = serverFromString(reactor, options["listen"])
    except (ValueError, KeyError, TypeError) as e:
        fatal(f"--listen {options['listen']}: not a valid endpoint ({e})")
    return (
        ClientListenerService(options["listen"], endpoint, edge, daemonized(options)),
        factory,
    )
