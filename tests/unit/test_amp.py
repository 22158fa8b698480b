"""
The gate-backend AMP link, in memory: a gate (with its backend pool) and a
backend (with its dispatcher and fabric) joined by iosim, sharing an
in-memory index and bus, every timer on a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.apps import RecordingApp
from wsfabric.backend.amp import BackendContext, BackendServerFactory
from wsfabric.backend.dispatcher import Dispatcher
from wsfabric.cluster.memory import MemoryBus, MemoryIndex
from wsfabric.commands import (
    Blob,
    ClientEvents,
    EventBatch,
    decode_deliveries,
    decode_events,
)
from wsfabric.errors import ClientNotFound, ClusterUnavailable, Reject
from wsfabric.fabric import Fabric
from wsfabric.gate.backends import BackendConnection, BackendPool, LinkSettings
from wsfabric.gate.gate import Gate
from wsfabric.ids import new_gate_id
from wsfabric.message import ConnectRequest
from wsfabric.metrics import Metrics
from wsfabric.testing import RecordingConnection

SECRET = b"s3cret"


class Backend:
    """
    A backend in memory: dispatcher, application and fabric.
    """

    def __init__(self, index: MemoryIndex, bus: MemoryBus, clock: Clock,
                 secret: bytes = SECRET, name: str = "b1") -> None:
        self.metrics = Metrics()
        self.context: BackendContext
        self.fabric = Fabric(index, bus, lambda gate_id: self.context.locate_gate(gate_id))
        self.app = RecordingApp(self.fabric)
        self.dispatcher = Dispatcher(self.app, self.metrics)
        self.context = BackendContext(name, "default", secret, self.dispatcher, clock,
                                      self.metrics, call_timeout=5.0)
        self.factory = BackendServerFactory(self.context)


class ClusterInMemory:
    """
    One gate and any number of backends, linked by iosim.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.index = MemoryIndex()
        self.bus = MemoryBus()
        self.metrics = Metrics()
        self.gate: Gate
        self.settings: LinkSettings
        self.pool: BackendPool
        gate_id = new_gate_id()
        # The gate and the pool need each other: the pool is the gate's event
        # sink; the gate carries out the backends' commands.
        self.pool = BackendPool.__new__(BackendPool)
        self.gate = Gate(gate_id, self.index, self.bus, self.pool, self.metrics)
        self.settings = LinkSettings(self.gate, SECRET, self.clock, self.metrics,
                                     call_timeout=5.0, ping_interval=1.0)
        BackendPool.__init__(self.pool, self.settings, None)
        self.gate.start()
        self.pumps: list[iosim.IOPump] = []
        self.links: list[tuple[BackendConnection, Any]] = []

    def backend(self, secret: bytes = SECRET, name: str = "b1") -> Backend:
        backend = Backend(self.index, self.bus, self.clock, secret, name)
        self.link(backend)
        return backend

    def link(self, backend: Backend) -> tuple[BackendConnection, Any]:
        client = BackendConnection(self.settings, self.pool._ready, self.pool._lost)
        server = backend.factory.buildProtocol(None)
        server_transport = iosim.FakeTransport(server, isServer=True)
        client_transport = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, server_transport, client, client_transport, greet=False)
        self.pumps.append(pump)
        self.links.append((client, server))
        self.flush()
        return client, server

    def flush(self) -> None:
        for _ in range(5):
            self.clock.advance(0)
            for pump in self.pumps:
                pump.flush()

    def connect(self, **request: Any) -> tuple[str, RecordingConnection]:
        connection = RecordingConnection()
        client_id = self.gate.client_opened(
            connection, ConnectRequest(peer="tcp4:127.0.0.1:1", **request)
        )
        connection.client_id = client_id
        self.flush()
        return client_id, connection


class AuthenticationTests(SynchronousTestCase):
    def test_handshake(self) -> None:
        """
        With the same secret both sides authenticate; the backend knows the
        gate by id and the pool has the backend ready.
        """
        cluster = ClusterInMemory()
        backend = cluster.backend()
        gate_side, _ = cluster.links[0]
        self.assertTrue(gate_side.ready)
        self.assertEqual(gate_side.backend_id, "b1")
        self.assertIn(cluster.gate.gate_id, backend.context.gates)
        self.assertEqual(cluster.pool.connected(), [gate_side])

    def test_wrong_secret(self) -> None:
        """
        A backend with another secret is not used and the connection closes.
        """
        cluster = ClusterInMemory()
        backend = cluster.backend(secret=b"other")
        gate_side, _ = cluster.links[0]
        self.assertFalse(gate_side.ready)
        self.assertEqual(backend.context.gates, {})
        self.assertEqual(cluster.pool.connected(), [])
        transport = gate_side.transport
        self.assertTrue(gate_side.gone or transport is None or transport.disconnecting)
        self.flushLoggedErrors()

    def test_refused_secret_backs_off(self) -> None:
        """
        While a backend refuses the gate's secret, the gate dials it again
        after 1, 2, 4 ... up to 60 s (not ten times a second, each with an
        error in the log); one successful authentication resets that.
        """
        from wsfabric.gate.backends import _LinkFactory

        cluster = ClusterInMemory()
        link = _LinkFactory(cluster.pool, "b1")

        def dial(secret: bytes) -> BackendConnection:
            backend = Backend(cluster.index, cluster.bus, cluster.clock, secret=secret)
            client = link.buildProtocol(None)
            server = backend.factory.buildProtocol(None)
            iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                          client, iosim.FakeTransport(client, isServer=False)).flush()
            return client

        self.assertEqual(link.retry_delay(0), 0.1)
        delays = []
        for _ in range(8):
            self.assertFalse(dial(b"other").ready)
            delays.append(link.retry_delay(0))
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60])
        self.flushLoggedErrors()
        self.assertTrue(dial(SECRET).ready)
        self.assertEqual(link.retry_delay(0), 0.1)

    def test_command_before_hello_closes(self) -> None:
        """
        A peer that sends a command before authenticating is disconnected and
        the command never runs.
        """
        backend = Backend(MemoryIndex(), MemoryBus(), Clock())
        server = backend.factory.buildProtocol(None)
        client = amp.AMP()
        pump = iosim.connect(
            server, iosim.FakeTransport(server, isServer=True),
            client, iosim.FakeTransport(client, isServer=False), greet=False,
        )
        batch = EventBatch()
        batch.message("0123456789abcdef-1", "sneaky")
        client.callRemote(ClientEvents, events=batch.encode())
        pump.flush()
        self.assertEqual(backend.app.events, [])
        self.assertTrue(server.transport is None or server.transport.disconnecting)


class EventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = ClusterInMemory()
        self.backend = self.cluster.backend()

    def test_events_in_order(self) -> None:
        """
        Connect, messages (text and binary) and close reach the application
        on the backend in order.
        """
        client_id, _ = self.cluster.connect()
        for message in ("one", b"two", "three"):
            self.cluster.gate.client_message(client_id, message)
        self.cluster.gate.client_closed(client_id)
        self.cluster.flush()
        self.assertEqual(
            self.backend.app.kinds(client_id), ["connect", "one", b"two", "three", "close"]
        )

    def test_request_crosses(self) -> None:
        """
        The handshake request reaches on_connect on the backend.
        """
        self.cluster.connect(path="/ws", params={"a": "1"}, headers={"x": "y"})
        request = self.backend.app.events[0][2]
        self.assertEqual((request.path, request.params, request.headers),
                         ("/ws", {"a": "1"}, {"x": "y"}))

    def test_reject(self) -> None:
        """
        Reject on the backend closes the client at the gate with its code.
        """
        self.backend.app.reject = Reject(4002, "nope")
        client_id, connection = self.cluster.connect()
        self.assertEqual((connection.close_code, connection.close_reason), (4002, "nope"))
        self.assertEqual(len(self.cluster.gate), 0)

    def test_sends_and_mutations(self) -> None:
        """
        The backend's fabric reaches the gate's clients: sends (batched),
        mutations (answered) and their errors.
        """
        client_id, connection = self.cluster.connect()
        fabric = self.backend.fabric
        fabric.send_to_client(client_id, "hello")
        joined = fabric.join_group(client_id, "room")
        self.cluster.flush()
        self.assertEqual(connection.received, ["hello"])
        self.assertIsNone(self.successResultOf(joined))
        self.assertEqual(self.successResultOf(fabric.get_client_ids_by_group("room")),
                         [client_id])
        fabric.send_to_group("room", "to room")
        bound = fabric.bind_uid(client_id, "alice")
        info = fabric.update_info(client_id, {"k": [1, 2]})
        self.cluster.flush()
        self.successResultOf(bound)
        self.successResultOf(info)
        self.assertEqual(self.successResultOf(fabric.get_info(client_id)), {"k": [1, 2]})
        self.assertEqual(connection.received, ["hello", "to room"])
        missing = fabric.join_group(client_id[:-1] + "zz", "room")
        self.cluster.flush()
        failure = self.failureResultOf(missing, ClientNotFound)
        self.assertEqual(failure.value.client_id, client_id[:-1] + "zz")

    def test_send_then_close_keeps_order(self) -> None:
        """
        A send queued before close_client reaches the client before the close.
        """
        client_id, connection = self.cluster.connect()
        self.backend.fabric.send_to_client(client_id, "goodbye")
        closed = self.backend.fabric.close_client(client_id, 4000, "bye")
        self.cluster.flush()
        self.successResultOf(closed)
        self.assertEqual(connection.received, ["goodbye"])
        self.assertEqual(connection.close_code, 4000)

    def test_large_messages_cross_intact(self) -> None:
        """
        Messages of 64 KiB - 1, 64 KiB, 64 KiB + 1 and 1 MiB cross AMP intact
        in both directions, text and binary.
        """
        client_id, connection = self.cluster.connect()
        sizes = [65535, 65536, 65537, 1048576]
        for size in sizes:
            self.cluster.gate.client_message(client_id, b"b" * size)
            self.cluster.gate.client_message(client_id, "t" * size)
        self.cluster.flush()
        received = [e[2] for e in self.backend.app.events if e[0] == "message"]
        self.assertEqual([len(m) for m in received], [s for s in sizes for _ in (1, 2)])
        self.assertEqual(received[-1], "t" * 1048576)
        for message in received:
            self.backend.fabric.send_to_client(client_id, message)
        self.cluster.flush()
        self.assertEqual(connection.received, received)

    def test_timeout(self) -> None:
        """
        A call the gate never answers fails with ClusterUnavailable after the
        timeout, and the link survives.
        """
        client_id, _ = self.cluster.connect()
        self.cluster.pumps.clear()  # the gate stops answering
        joined = self.backend.fabric.join_group(client_id, "room")
        self.cluster.clock.advance(5.1)
        self.failureResultOf(joined, ClusterUnavailable)


class BackendLossTests(SynchronousTestCase):
    def test_clients_move_to_another_backend(self) -> None:
        """
        When a backend goes away its clients stay connected and their next
        events go to another backend.
        """
        cluster = ClusterInMemory()
        first = cluster.backend(name="b1")
        second = cluster.backend(name="b2")
        ids = [cluster.connect()[0] for _ in range(20)]
        on_first = [cid for cid in ids if first.app.kinds(cid) == ["connect"]]
        self.assertTrue(on_first and len(on_first) < 20)
        gate_side, _ = cluster.links[0]
        gate_side.transport.loseConnection()
        cluster.flush()
        for client_id in ids:
            cluster.gate.client_message(client_id, "after")
        cluster.flush()
        for client_id in on_first:
            self.assertEqual(second.app.kinds(client_id), ["after"])
        self.assertEqual(len(cluster.gate), 20)

    def test_events_wait_for_a_backend(self) -> None:
        """
        With no backend connected, clients stay connected and their events
        wait; when a backend arrives they are delivered in order.
        """
        cluster = ClusterInMemory()
        client_id, connection = cluster.connect()
        cluster.gate.client_message(client_id, "early")
        self.assertIsNone(connection.close_code)
        backend = cluster.backend()
        self.assertEqual(backend.app.kinds(client_id), ["connect", "early"])

    def test_pending_connect_moves_to_another_backend(self) -> None:
        """
        A client whose on_connect was on its way to a backend that dies is
        set up on another backend, not closed: the dead connection, still
        listed while its pending calls fail, is never picked again.
        """
        cluster = ClusterInMemory()
        first = cluster.backend(name="b1")
        second = cluster.backend(name="b2")
        connection = RecordingConnection()
        client_id = cluster.gate.client_opened(
            connection, ConnectRequest(peer="tcp4:127.0.0.1:1")
        )
        owner = cluster.pool._assigned[client_id]
        dead = [link[0] for link in cluster.links].index(owner)
        cluster.pumps.pop(dead)  # the call never reaches it: it was killed
        owner.connectionLost(Failure(ConnectionLost("backend killed")))
        cluster.flush()
        survivor = second if dead == 0 else first
        self.assertEqual(survivor.app.kinds(client_id), ["connect"])
        self.assertIsNone(connection.close_code)
        self.assertEqual(len(cluster.gate), 1)

    def test_reincarnation_delivers_close_events(self) -> None:
        """
        A gate declared dead closes its clients and reconnects to its
        backends under its new id; the application still hears on_close of
        every client it closed (queued events are sent before the
        connection closes).
        """
        cluster = ClusterInMemory()
        backend = cluster.backend()
        ids = [cluster.connect()[0] for _ in range(3)]
        self.assertEqual(cluster.gate.reincarnate(new_gate_id()), 3)
        cluster.pool.reconnect_all()
        cluster.flush()
        for client_id in ids:
            self.assertEqual(backend.app.kinds(client_id), ["connect", "close"])
        gate_side, _ = cluster.links[0]
        self.assertTrue(gate_side.gone)
        self.assertEqual(cluster.pool.connected(), [])

    def test_stop_sends_queued_close_events(self) -> None:
        """
        A gate shutting down closes its clients, then its backend links: the
        close events queued for a backend are sent before its link closes.
        """
        cluster = ClusterInMemory()
        backend = cluster.backend()
        ids = [cluster.connect()[0] for _ in range(3)]
        cluster.gate.close_all(1001, "bye")
        cluster.pool.stop()
        gate_side, _ = cluster.links[0]
        gate_side.transport.loseConnection()
        cluster.flush()
        for client_id in ids:
            self.assertEqual(backend.app.kinds(client_id), ["connect", "close"])

    def test_hung_backend_is_dropped(self) -> None:
        """
        A backend that stops answering pings is disconnected, so its clients
        can move.
        """
        cluster = ClusterInMemory()
        cluster.backend()
        gate_side, _ = cluster.links[0]
        cluster.pumps.clear()  # the backend hangs
        cluster.clock.advance(1)
        cluster.clock.advance(5.1)
        cluster.clock.advance(1)
        cluster.clock.advance(5.1)
        self.assertTrue(gate_side.gone or gate_side.transport.disconnecting)
        self.flushLoggedErrors()


class BatchTests(SynchronousTestCase):
    def test_event_batch_round_trip(self) -> None:
        """
        Event batches decode to what was encoded.
        """
        batch = EventBatch()
        batch.message("a-1", "hé")
        batch.message("a-2", b"\x00")
        batch.closed("a-1")
        self.assertEqual(
            list(decode_events(batch.encode())),
            [(1, "a-1", "hé"), (2, "a-2", b"\x00"), (3, "a-1", None)],
        )

    def test_malformed_batches(self) -> None:
        """
        Truncated or unknown records raise ValueError.
        """
        batch = EventBatch()
        batch.message("a-1", "hello")
        data = batch.encode()
        for bad in (data[:-1], data[:4], b"\x09\x00\x01a"):
            with self.assertRaises(ValueError):
                list(decode_events(bad))
        with self.assertRaises(ValueError):
            list(decode_deliveries(b"\x01\x00\x01\x00"))

    def test_blob_limit(self) -> None:
        """
        A Blob refuses values over its maximum size from a peer.
        """
        blob = Blob(max_size=100000)
        strings: dict[bytes, bytes] = {}
        blob.toBox(b"x", strings, {"x": b"a" * 200000}, None)
        self.assertEqual(len(strings), 4)
        with self.assertRaises(amp.TooLong):
            blob.fromBox(b"x", strings, {}, None)
        objects: dict[str, Any] = {}
        Blob().fromBox(b"x", strings, objects, None)
        self.assertEqual(objects["x"], b"a" * 200000)


class FlowTests(SynchronousTestCase):
    def test_throttle_reaches_the_connection(self) -> None:
        """
        When a client's events pile up behind a slow hook on the backend, the
        gate stops reading from that client, and resumes once they drain.
        """
        cluster = ClusterInMemory()
        backend = cluster.backend()
        backend.dispatcher._flow_control = backend.context.flow_control
        backend.dispatcher._high_water, backend.dispatcher._low_water = 4, 1
        backend.app.hold = True
        client_id, connection = cluster.connect()
        for number in range(6):
            cluster.gate.client_message(client_id, str(number))
        cluster.flush()
        self.assertFalse(connection.reading)
        while backend.app.held:
            backend.app.held.pop(0).callback(None)
            cluster.flush()
        self.assertTrue(connection.reading)

    def test_draining_backend_hands_clients_over(self) -> None:
        """
        A draining backend gets no new clients, and its clients' next events
        go elsewhere, while its connection stays open for the work it has.
        """
        cluster = ClusterInMemory()
        first = cluster.backend(name="b1")
        second = cluster.backend(name="b2")
        ids = [cluster.connect()[0] for _ in range(10)]
        first.context.drain()
        cluster.flush()
        later = [cluster.connect()[0] for _ in range(10)]
        for client_id in ids + later:
            cluster.gate.client_message(client_id, "next")
        cluster.flush()
        self.assertFalse(any("next" in first.app.kinds(c) for c in ids + later))
        self.assertTrue(all(second.app.kinds(c)[-1] == "next" for c in ids + later))
        gate_side, _ = cluster.links[0]
        self.assertFalse(gate_side.gone)


class _NoDelayTransport(iosim.FakeTransport):
    """
    An in-memory transport that records ``setTcpNoDelay``, as a TCP one has.
    """

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class NoDelayTests(SynchronousTestCase):
    def test_both_ends_turn_nagle_off(self) -> None:
        """
        The gate's and the backend's ends of an AMP link send small boxes
        at once (TCP_NODELAY), not after the previous one is acknowledged.
        """
        cluster = ClusterInMemory()
        backend = Backend(cluster.index, cluster.bus, cluster.clock)
        client = BackendConnection(cluster.settings, cluster.pool._ready, cluster.pool._lost)
        server = backend.factory.buildProtocol(None)
        server_transport = _NoDelayTransport(server, isServer=True)
        client_transport = _NoDelayTransport(client, isServer=False)
        iosim.connect(server, server_transport, client, client_transport, greet=False)
        self.assertTrue(server_transport.no_delay)
        self.assertTrue(client_transport.no_delay)


class DeadGateTests(SynchronousTestCase):
    def _linked(self, alive: dict[str, bool]) -> tuple[ClusterInMemory, Backend]:
        """
        A cluster whose backend learns gate liveness from ``alive``.
        """
        cluster = ClusterInMemory()
        backend = Backend(cluster.index, cluster.bus, cluster.clock)
        backend.context._gate_alive = lambda gate_id: succeed(alive[gate_id])
        cluster.link(backend)
        return cluster, backend

    def test_clients_of_a_dead_gate_get_on_close(self) -> None:
        """
        When a gate's connection is lost and, after the grace period, its
        lease is gone, the backend runs on_close for its clients.
        """
        alive: dict[str, bool] = {}
        cluster, backend = self._linked(alive)
        client_id, _ = cluster.connect()
        alive[cluster.gate.gate_id] = False
        cluster.links[0][0].transport.loseConnection()
        cluster.flush()
        self.assertNotIn(("close", client_id), backend.app.events)
        cluster.clock.advance(5)
        self.assertIn(("close", client_id), backend.app.events)

    def test_live_gate_is_checked_again_not_forgotten(self) -> None:
        """
        A gate that still holds its lease (a cut link) keeps its clients;
        its lease is checked again until it reconnects or dies.
        """
        alive: dict[str, bool] = {}
        cluster, backend = self._linked(alive)
        client_id, _ = cluster.connect()
        alive[cluster.gate.gate_id] = True
        cluster.links[0][0].transport.loseConnection()
        cluster.flush()
        cluster.clock.advance(5)
        cluster.clock.advance(5)
        self.assertNotIn(("close", client_id), backend.app.events)
        alive[cluster.gate.gate_id] = False
        cluster.clock.advance(5)
        self.assertIn(("close", client_id), backend.app.events)
