"""
An in-memory client listener for unit tests: a real Autobahn WebSocket client
talks to wsfabric's listener over ``iosim``, with every timer on a ``Clock``.
"""

from __future__ import annotations

from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim

from tests.unit.apps import RecordingApp
from wsfabric.gate.edge import GateService
from wsfabric.gate.origins import OriginPolicy
from wsfabric.gate.web import EdgeFactory, make_site
from wsfabric.gate.websocket import EdgeSettings, FabricServerFactory
from wsfabric.testing import StandaloneHarness

txaio.use_twisted()


class RecordingClient(WebSocketClientProtocol):
    """
    A WebSocket client that records what happens to it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.opened = False
        self.messages: list[Any] = []
        self.close_info: tuple[bool, int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(payload if isBinary else payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (wasClean, code, reason)

    @property
    def close_code(self) -> int | None:
        return self.close_info[1] if self.close_info else None


class EdgeHarness:
    """
    A standalone node with a client listener, in memory.

    :param test: the test case (to patch txaio's loop for its duration).
    :param settings: edge settings overrides.
    :param app_factory: the application.
    """

    def __init__(self, test: Any, app_factory: Any = RecordingApp, **settings: Any) -> None:
        self.clock = Clock()
        # Autobahn schedules its timers through txaio's loop.
        test.patch(txaio.config, "loop", self.clock)
        self.harness = StandaloneHarness(app_factory)
        self.gate = self.harness.gate
        self.fabric = self.harness.fabric
        self.metrics = self.harness.metrics
        settings.setdefault("origins", OriginPolicy())
        self.settings = EdgeSettings(**settings)
        self.factory = FabricServerFactory(self.gate, self.settings, self.metrics, self.clock)
        self.site = make_site("/ws", None, self.clock)
        self.edge = EdgeFactory(self.factory, self.site, "/ws", self.clock, 5.0)
        self.pumps: list[iosim.IOPump] = []

    @property
    def app(self) -> Any:
        return self.harness.app

    def raw(self, client: Protocol) -> tuple[Protocol, iosim.FakeTransport, iosim.IOPump]:
        """
        Connect any client protocol to the listener.

        :return: the server-side protocol, its transport and the pump.
        """
        server = self.edge.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        server_transport = iosim.FakeTransport(
            server,
            isServer=True,
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        )
        client_transport = iosim.FakeTransport(
            client,
            isServer=False,
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        )
        pump = iosim.connect(server, server_transport, client, client_transport, greet=False)
        self.pumps.append(pump)
        return server, server_transport, pump

    def connect(
        self, url: str = "ws://127.0.0.1:8080/ws", **factory_options: Any
    ) -> tuple[RecordingClient, Any]:
        """
        Connect a WebSocket client and complete the handshake.

        :return: the client and the server-side WebSocket protocol.
        """
        factory = WebSocketClientFactory(url, reactor=self.clock, **factory_options)
        factory.protocol = RecordingClient
        client = factory.buildProtocol(None)
        front, _, _ = self.raw(client)
        self.flush()
        return client, front._inner

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def service(self, timeout: float = 5.0) -> GateService:
        return GateService(
            self.gate, self.factory, self.clock, timeout, self.harness.dispatcher.when_idle
        )
