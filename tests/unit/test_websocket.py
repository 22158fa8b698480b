"""
The WebSocket edge, in memory: handshake checks, frames to and from the gate,
limits and close codes, the bounded outbound queue, shutdown.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet.testing import StringTransport as _StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.edge import EdgeHarness, RecordingClient
from wsfabric.errors import Reject
from wsfabric.gate.origins import OriginPolicy
from wsfabric.gate.websocket import frame


class StringTransport(_StringTransport):
    """
    Like Twisted's, but as lenient as real transports about unregistering a
    producer that was never registered (Autobahn does that when it drops a
    connection during the handshake).
    """

    def unregisterProducer(self) -> None:
        self.producer = None


class HandshakeTests(SynchronousTestCase):
    def test_open_message_and_reply(self) -> None:
        """
        A client connects, its text and binary messages reach the
        application, and fabric sends reach it as text and binary frames.
        """
        edge = EdgeHarness(self)
        client, server = edge.connect("ws://127.0.0.1:8080/ws?room=lobby&x=1&x=2")
        self.assertTrue(client.opened)
        client_id = server.client_id
        kind, event_client, request = edge.app.events[0]
        self.assertEqual((kind, event_client), ("connect", client_id))
        self.assertEqual(request.path, "/ws")
        self.assertEqual(request.params, {"room": "lobby", "x": "1"})
        self.assertEqual(request.headers["host"], "127.0.0.1:8080")
        self.assertTrue(request.peer.startswith("tcp4:127.0.0.1:"))
        client.sendMessage("héllo".encode(), isBinary=False)
        client.sendMessage(b"\x00\x01", isBinary=True)
        edge.flush()
        self.assertEqual(edge.app.kinds(client_id), ["connect", "héllo", b"\x00\x01"])
        edge.fabric.send_to_client(client_id, "tëxt")
        edge.fabric.send_to_client(client_id, b"\xff" * 70000)
        edge.flush()
        self.assertEqual(client.messages, ["tëxt", b"\xff" * 70000])

    def test_bad_origin_gets_403(self) -> None:
        """
        A browser origin outside the allowed list gets HTTP 403 and never
        reaches the application.
        """
        edge = EdgeHarness(self, origins=OriginPolicy(["https://app.example.com"]))
        client, _ = edge.connect(origin="https://evil.example.com")
        self.assertFalse(client.opened)
        self.assertEqual(edge.app.events, [])
        self.assertEqual(edge.metrics.drops["origin"], 1)
        ok, _ = edge.connect(origin="https://app.example.com")
        self.assertTrue(ok.opened)

    def test_same_origin_default(self) -> None:
        """
        With no allowed origins configured, only same-origin pages connect.
        """
        edge = EdgeHarness(self)
        same, _ = edge.connect(origin="http://127.0.0.1:8080")
        other, _ = edge.connect(origin="http://127.0.0.1:9999")
        self.assertTrue(same.opened)
        self.assertFalse(other.opened)

    def test_403_on_the_wire(self) -> None:
        """
        The refusal is an HTTP 403 response.
        """
        edge = EdgeHarness(self, origins=OriginPolicy(["https://app.example.com"]))
        server = edge.edge.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: https://evil.example.com\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403"))

    def test_protocol_takes_the_factory_options(self) -> None:
        """
        A new connection carries every Autobahn protocol option of its
        factory (copied by wsfabric, not by Autobahn's debug-logging loop),
        and Autobahn is given no option list to format.
        """
        factory = EdgeHarness(self).factory
        factory.setProtocolOptions(maxMessagePayloadSize=4321, openHandshakeTimeout=7)
        server = factory.buildProtocol(None)
        server.makeConnection(StringTransport())
        self.assertEqual(server.CONFIG_ATTRS, ())
        self.assertEqual(server.maxMessagePayloadSize, 4321)
        self.assertEqual(server.openHandshakeTimeout, 7)
        for name in server._OPTION_NAMES:
            self.assertEqual(getattr(server, name), getattr(factory, name), name)

    def test_reject_closes_with_code(self) -> None:
        """
        Reject(code, reason) from on_connect reaches the client as its close.
        """
        edge = EdgeHarness(self)
        edge.app.reject = Reject(4401, "who are you")
        client, _ = edge.connect()
        self.assertEqual(client.close_info[1:], (4401, "who are you"))
        self.assertEqual(edge.metrics.connections, 0)


class LimitTests(SynchronousTestCase):
    def test_oversize_message_closes_1009(self) -> None:
        """
        A message over max_message_size closes the client with 1009; the
        application never sees it.
        """
        edge = EdgeHarness(self, max_message_size=1000)
        client, server = edge.connect()
        client.sendMessage(b"x" * 1000, isBinary=True)
        client.sendMessage(b"y" * 1001, isBinary=True)
        edge.flush()
        edge.clock.advance(2)
        edge.flush()
        self.assertEqual(client.close_code, 1009)
        self.assertEqual(edge.app.kinds(server.client_id), ["connect", b"x" * 1000, "close"])

    def test_oversize_fragmented_message_closes_1009(self) -> None:
        """
        The limit applies to the whole message, not to each fragment.
        """
        edge = EdgeHarness(self, max_message_size=1000)
        client, _ = edge.connect()
        client.sendMessage(b"z" * 1500, isBinary=True, fragmentSize=500)
        edge.flush()
        self.assertEqual(client.close_code, 1009)

    def test_max_connections_503(self) -> None:
        """
        Over max_connections, the handshake gets HTTP 503.
        """
        edge = EdgeHarness(self, max_connections=2)
        clients = [edge.connect()[0] for _ in range(3)]
        self.assertEqual([c.opened for c in clients], [True, True, False])

    def test_handshake_timeout(self) -> None:
        """
        A client that sends nothing is dropped after the head timeout.
        """
        edge = EdgeHarness(self)
        server = edge.edge.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        edge.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        edge.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)


class OutboundQueueTests(SynchronousTestCase):
    def test_paused_messages_wait_in_order(self) -> None:
        """
        While the transport's buffer is full, messages wait and go out in
        order when it drains.
        """
        edge = EdgeHarness(self)
        client, server = edge.connect()
        server.pauseProducing()
        for number in range(10):
            edge.fabric.send_to_client(server.client_id, str(number))
        edge.flush()
        self.assertEqual(client.messages, [])
        server.resumeProducing()
        edge.flush()
        self.assertEqual(client.messages, [str(n) for n in range(10)])

    def test_slow_consumer_closed_1008(self) -> None:
        """
        A client that stops reading is closed with 1008 "slow consumer" when
        its queue goes over the bound; the drop is counted; the client is gone
        from every query at once; other clients are unaffected.
        """
        edge = EdgeHarness(self, max_outbound_queue=10000)
        slow, server = edge.connect()
        fast, _ = edge.connect()
        edge.fabric.join_group(server.client_id, "g")
        server.pauseProducing()
        for _ in range(11):
            edge.fabric.send_to_all("x" * 1000)
        self.assertFalse(self.successResultOf(edge.fabric.is_online(server.client_id)))
        self.assertEqual(self.successResultOf(edge.fabric.get_client_count_by_group("g")), 0)
        self.assertEqual(edge.metrics.drops["slow_consumer"], 1)
        server.resumeProducing()
        edge.flush()
        self.assertEqual(slow.close_info[1:], (1008, "slow consumer"))
        self.assertEqual(len(fast.messages), 11)
        self.assertIsNone(fast.close_info)

    def test_close_after_queued_messages(self) -> None:
        """
        close_client after sends delivers the sends first.
        """
        edge = EdgeHarness(self)
        client, server = edge.connect()
        server.pauseProducing()
        edge.fabric.send_to_client(server.client_id, "last words")
        edge.fabric.close_client(server.client_id, 4000, "done")
        server.resumeProducing()
        edge.flush()
        self.assertEqual(client.messages, ["last words"])
        self.assertEqual(client.close_info[1:], (4000, "done"))

    def test_frame(self) -> None:
        """
        Server frames carry the right header for each length class.
        """
        self.assertEqual(frame(b"ab", False), b"\x81\x02ab")
        self.assertEqual(frame(b"a" * 126, True)[:4], b"\x82\x7e\x00\x7e")
        self.assertEqual(frame(b"a" * 65536, True)[:10], b"\x82\x7f" + (65536).to_bytes(8, "big"))


class ShutdownTests(SynchronousTestCase):
    def test_stop_closes_clients_1001(self) -> None:
        """
        Stopping the gate service closes every client with 1001, removes
        them from the index, runs on_close, and finishes once they are gone.
        """
        edge = EdgeHarness(self)
        service = edge.service()
        service.startService()
        clients = [edge.connect()[0] for _ in range(3)]
        stopped = service.stopService()
        edge.flush()
        edge.clock.advance(1)
        edge.flush()
        self.successResultOf(stopped)
        self.assertEqual([c.close_code for c in clients], [1001] * 3)
        self.assertEqual(self.successResultOf(edge.fabric.get_all_client_count()), 0)
        self.assertEqual([e[0] for e in edge.app.events].count("close"), 3)

    def test_handshake_finishing_during_stop_gets_1001(self) -> None:
        """
        A client whose handshake is still under way when the gate stops is
        closed with 1001 as soon as it opens, not left for the process exit
        to cut (1006), and never joins the gate.
        """
        edge = EdgeHarness(self)
        service = edge.service()
        service.startService()
        factory = WebSocketClientFactory("ws://127.0.0.1:8080/ws", reactor=edge.clock)
        factory.protocol = RecordingClient
        client = factory.buildProtocol(None)
        edge.raw(client)  # connected, handshake not yet exchanged
        stopped = service.stopService()
        edge.flush()
        edge.clock.advance(1)
        edge.flush()
        self.successResultOf(stopped)
        self.assertEqual(client.close_code, 1001)
        self.assertEqual(len(edge.gate), 0)
        self.assertNotIn("connect", [e[0] for e in edge.app.events])

    def test_stop_is_bounded(self) -> None:
        """
        Clients that never answer the close do not hold shutdown up beyond
        the timeout.
        """
        edge = EdgeHarness(self)
        service = edge.service(timeout=2.0)
        service.startService()
        edge.connect()
        edge.pumps.clear()  # the client stops answering
        stopped = service.stopService()
        self.assertNoResult(stopped)
        edge.clock.advance(2.1)
        self.successResultOf(stopped)


class HttpTests(SynchronousTestCase):
    def request(self, data: bytes) -> StringTransport:
        edge = EdgeHarness(self)
        server = edge.edge.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(data)
        return transport

    def test_client_script_resource(self) -> None:
        """
        /wsfabric.js is the packaged browser client, served as JavaScript
        (the bytes on the wire are checked by the integration tests: static
        files are streamed by Twisted's global cooperator).
        """
        from twisted.web.test.requesthelper import DummyRequest

        from wsfabric.gate.web import client_script_path, make_site

        site = make_site("/ws", None, None)
        child = site.resource.getChildWithDefault(b"wsfabric.js", DummyRequest([b""]))
        self.assertEqual(child.path, str(client_script_path()))
        self.assertEqual(child.defaultType, "text/javascript")

    def test_head_too_large(self) -> None:
        """
        A request head over 16 KiB gets 431 with a JSON reason.
        """
        transport = self.request(b"GET / HTTP/1.1\r\nX: " + b"a" * 20000)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431"))
        self.assertIn(b'"error"', transport.value())

    def test_bad_request_line(self) -> None:
        """
        A malformed request line gets 400 with a JSON reason.
        """
        transport = self.request(b"HELLO\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400"))
