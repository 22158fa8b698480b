"""
Every implementation provides the interfaces it declares, checked with
zope.interface's verifyObject.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from examples.chat.app import ChatApp
from examples.echo.app import EchoApp
from tests.unit.apps import RecordingApp
from tests.unit.edge import EdgeHarness
from wsfabric.cluster.memory import MemoryBus, MemoryIndex
from wsfabric.gate.websocket import FabricServerProtocol
from wsfabric.interfaces import (
    IApplication,
    IBus,
    IClientConnection,
    IClientEvents,
    IFabric,
    IGateControl,
    IIndex,
    ISubscription,
)
from wsfabric.testing import RecordingConnection, StandaloneHarness


class VerifyTests(SynchronousTestCase):
    def test_memory_seams(self) -> None:
        """
        The in-memory bus, its subscriptions and the in-memory index.
        """
        bus = MemoryBus()
        self.assertTrue(verifyObject(IBus, bus))
        self.assertTrue(verifyObject(ISubscription, bus.subscribe("c", lambda c, p: None)))
        self.assertTrue(verifyObject(IIndex, MemoryIndex()))

    def test_standalone_pieces(self) -> None:
        """
        The fabric, the gate, the dispatcher and the test connection.
        """
        harness = StandaloneHarness(RecordingApp)
        self.assertTrue(verifyObject(IFabric, harness.fabric))
        self.assertTrue(verifyObject(IGateControl, harness.gate))
        self.assertTrue(verifyObject(IClientEvents, harness.dispatcher))
        self.assertTrue(verifyObject(IClientConnection, RecordingConnection()))

    def test_websocket_connection(self) -> None:
        """
        The WebSocket protocol is a client connection for the gate.
        """
        self.assertTrue(verifyClass(IClientConnection, FabricServerProtocol))
        edge = EdgeHarness(self)
        _, server = edge.connect()
        self.assertTrue(verifyObject(IClientConnection, server))

    def test_examples_are_applications(self) -> None:
        """
        The examples provide IApplication.
        """
        for factory in (EchoApp, ChatApp, RecordingApp):
            harness = StandaloneHarness(factory)
            self.assertTrue(verifyObject(IApplication, harness.app))
