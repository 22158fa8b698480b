"""
The raw TCP transport, in memory: framing, the hello, limits and close
codes, the outbound queue and read backpressure, pings, authentication and
connection limits, shutdown.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.unit.apps import RecordingApp
from wsfabric.errors import Reject
from wsfabric.gate import tcp
from wsfabric.gate.edge import GateService
from wsfabric.gate.tcp import (
    BINARY,
    CLOSE,
    HELLO,
    PING,
    PONG,
    TEXT,
    FabricTcpFactory,
    FabricTcpProtocol,
    frame,
    parse_hello,
)
from wsfabric.gate.websocket import EdgeSettings, FabricServerFactory
from wsfabric.interfaces import IAuthenticator, IClientConnection
from wsfabric.message import SharedMessage, Variants
from wsfabric.testing import StandaloneHarness

SECRET = "s" * 32


class TcpClient:
    """
    One client connection: the server's protocol on a StringTransport, and
    helpers to speak and read frames.
    """

    def __init__(self, edge: TcpHarness, host: str = "127.0.0.1", port: int = 40000) -> None:
        self.edge = edge
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.protocol: FabricTcpProtocol = edge.factory.buildProtocol(None)  # type: ignore[assignment]
        self.protocol.makeConnection(self.transport)
        self._read = 0

    def send_raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.send_raw(frame(kind, payload))

    def hello(self, **hello: Any) -> None:
        self.send(HELLO, json.dumps(hello).encode())

    def frames(self) -> list[tuple[int, bytes]]:
        """
        :return: the frames the server wrote since the last call.
        """
        data = self.transport.value()
        found = []
        offset = self._read
        while len(data) - offset >= 5:
            (length,) = struct.unpack_from("!I", data, offset)
            found.append((data[offset + 4], data[offset + 5 : offset + 4 + length]))
            offset += 4 + length
        self._read = offset
        return found

    def messages(self) -> list[Any]:
        """
        :return: the text and binary messages among the frames written since
            the last call, ``("close", code, reason)`` for a close frame.
        """
        out: list[Any] = []
        for kind, payload in self.frames():
            if kind == TEXT:
                out.append(payload.decode())
            elif kind == BINARY:
                out.append(payload)
            elif kind == CLOSE:
                out.append(("close", struct.unpack("!H", payload[:2])[0], payload[2:].decode()))
            else:
                out.append((kind, payload))
        return out

    def lose(self) -> None:
        """
        The TCP connection ends (as the reactor reports it).
        """
        self.protocol.connectionLost()

    @property
    def client_id(self) -> str | None:
        return self.protocol.client_id


class TcpHarness:
    """
    A standalone node with a raw TCP factory, in memory.
    """

    def __init__(self, app_factory: Any = RecordingApp, **settings: Any) -> None:
        self.clock = Clock()
        self.harness = StandaloneHarness(app_factory)
        self.gate = self.harness.gate
        self.fabric = self.harness.fabric
        self.metrics = self.harness.metrics
        self.settings = EdgeSettings(**settings)
        self.factory = FabricTcpFactory(self.gate, self.settings, self.metrics, self.clock)

    @property
    def app(self) -> Any:
        return self.harness.app

    def connect(self, **hello: Any) -> TcpClient:
        """
        Connect a client and say hello; the server's hello is read.
        """
        client = TcpClient(self)
        client.hello(**hello)
        return client


class FramingTests(SynchronousTestCase):
    def test_frame(self) -> None:
        """
        A frame is the length (1 + payload), the type byte and the payload.
        """
        self.assertEqual(frame(TEXT, b"hi"), b"\x00\x00\x00\x03\x00hi")
        self.assertEqual(frame(BINARY, b""), b"\x00\x00\x00\x01\x01")

    def test_hello_and_messages(self) -> None:
        """
        The hello becomes the connect request and is answered with the
        server's hello; text and binary frames reach the application; sends
        come back as text and binary frames.
        """
        edge = TcpHarness()
        client = edge.connect(
            path="/game",
            params={"room": "lobby"},
            headers={"X-Token-Kind": "none"},
            subprotocol="wsfabric.json",
        )
        self.assertEqual(client.frames(), [(HELLO, b'{"subprotocol": "wsfabric.json"}')])
        kind, client_id, request = edge.app.events[0]
        self.assertEqual((kind, client_id), ("connect", client.client_id))
        self.assertEqual(request.path, "/game")
        self.assertEqual(request.params, {"room": "lobby"})
        self.assertEqual(request.headers, {"x-token-kind": "none"})
        self.assertEqual(request.subprotocol, "wsfabric.json")
        self.assertEqual(request.peer, "tcp4:127.0.0.1:40000")
        client.send(TEXT, "héllo".encode())
        client.send(BINARY, b"\x00\x01")
        self.assertEqual(edge.app.kinds(client_id), ["connect", "héllo", b"\x00\x01"])
        edge.fabric.send_to_client(client_id, "tëxt")
        edge.fabric.send_to_client(client_id, b"\xff" * 70000)
        self.assertEqual(client.messages(), ["tëxt", b"\xff" * 70000])
        self.assertEqual(edge.metrics.messages_out, 2)

    def test_split_across_reads(self) -> None:
        """
        Frames arriving a byte at a time, and several frames in one read,
        are parsed alike.
        """
        edge = TcpHarness()
        client = TcpClient(edge)
        data = (
            frame(HELLO, b"{}")
            + frame(TEXT, b"one")
            + frame(BINARY, b"x" * 300)
            + frame(TEXT, b"")
        )
        for index in range(len(data)):
            client.send_raw(data[index : index + 1])
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "one", b"x" * 300, ""])
        client.send_raw(frame(TEXT, b"a") + frame(TEXT, b"b") + frame(TEXT, b"c")[:3])
        client.send_raw(frame(TEXT, b"c")[3:])
        self.assertEqual(edge.app.kinds(client.client_id)[-3:], ["a", "b", "c"])

    def test_large_frame_in_many_reads(self) -> None:
        """
        A large frame arriving in chunks is delivered once, whole.
        """
        edge = TcpHarness()
        client = edge.connect()
        data = frame(BINARY, bytes(range(256)) * 4000)
        for start in range(0, len(data), 65536):
            client.send_raw(data[start : start + 65536])
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", bytes(range(256)) * 4000])

    def test_empty_hello(self) -> None:
        """
        Every hello key is optional: path "/", no params, no subprotocol.
        """
        edge = TcpHarness()
        client = edge.connect()
        self.assertEqual(client.frames(), [(HELLO, b'{"subprotocol": null}')])
        request = edge.app.events[0][2]
        self.assertEqual((request.path, request.params, request.subprotocol), ("/", {}, None))

    def test_unknown_subprotocol_is_none(self) -> None:
        """
        A subprotocol the server does not speak is answered with null, as a
        WebSocket server selects none.
        """
        edge = TcpHarness()
        client = edge.connect(subprotocol="wsfabric.msgpack")
        self.assertEqual(client.frames(), [(HELLO, b'{"subprotocol": null}')])
        self.assertIsNone(edge.app.events[0][2].subprotocol)

    def test_provides_interfaces(self) -> None:
        """
        The protocol is a client connection for the gate and a push producer
        for its transport.
        """
        client = TcpHarness().connect()
        self.assertTrue(verifyObject(IClientConnection, client.protocol))
        self.assertTrue(verifyObject(IPushProducer, client.protocol))

    def test_variants_by_hello(self) -> None:
        """
        The hello's subprotocol and params choose the form of a Variants
        message each client receives.
        """
        edge = TcpHarness()
        clients = [
            edge.connect(subprotocol="wsfabric.json"),
            edge.connect(subprotocol="wsfabric.proto"),
            edge.connect(subprotocol="wsfabric.proto", params={"routes": "1"}),
        ]
        for client in clients:
            client.frames()
            edge.fabric.join_group(client.client_id, "g")
        edge.fabric.send_to_group("g", Variants("json", b"proto", proto_routes=b"compressed"))
        self.assertEqual([c.messages() for c in clients], [["json"], [b"proto"], [b"compressed"]])

    def test_parse_hello_errors(self) -> None:
        """
        parse_hello names what is wrong with a hello.
        """
        cases = {
            b"[]": "hello must be a JSON object",
            b"{": "hello is not UTF-8 JSON",
            b"\xff": "hello is not UTF-8 JSON",
            b'{"path": "ws"}': "hello path must be a string starting with /",
            b'{"params": {"a": 1}}': "hello params must be an object of strings",
            b'{"headers": []}': "hello headers must be an object of strings",
            b'{"subprotocol": 5}': "hello subprotocol must be a string or null",
        }
        for payload, message in cases.items():
            with self.assertRaises(ValueError) as caught:
                parse_hello(payload, "tcp4:1.2.3.4:5")
            self.assertEqual(str(caught.exception), message)


class CloseCodeTests(SynchronousTestCase):
    def assertClosed(self, client: TcpClient, code: int, reason: str | None = None) -> None:
        closes = [m for m in client.messages() if isinstance(m, tuple) and m[0] == "close"]
        self.assertEqual([c[1] for c in closes], [code])
        if reason is not None:
            self.assertEqual(closes[0][2], reason)
        self.assertTrue(client.transport.disconnecting)

    def test_oversize_message_1009(self) -> None:
        """
        A frame longer than max_message_size + 1 closes with 1009 as soon as
        its length is read; a message of exactly the limit passes.
        """
        edge = TcpHarness(max_message_size=1000)
        client = edge.connect()
        client.send(BINARY, b"x" * 1000)
        client.send_raw(struct.pack("!IB", 1002, BINARY))
        self.assertClosed(client, 1009, "message of 1001 bytes exceeds the limit of 1000")
        client.lose()
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", b"x" * 1000, "close"])
        self.assertEqual(edge.metrics.closes[1009], 1)

    def test_oversize_hello_1009(self) -> None:
        """
        A hello over 16 KiB closes with 1009 before the gate hears of it.
        """
        edge = TcpHarness()
        client = TcpClient(edge)
        client.send_raw(struct.pack("!I", 16386))
        self.assertClosed(client, 1009)
        self.assertEqual(edge.app.events, [])

    def test_invalid_utf8_1007(self) -> None:
        """
        A text frame that is not UTF-8 closes with 1007; on_close runs.
        """
        edge = TcpHarness()
        client = edge.connect()
        client.send(TEXT, b"\xc3\x28")
        self.assertClosed(client, 1007)
        client.lose()
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "close"])

    def test_protocol_errors_1002(self) -> None:
        """
        A message before the hello, a second hello, an unknown type, an
        empty frame, a bad hello, and a ping over 125 bytes close with 1002.
        """
        cases: list[tuple[list[bytes], str]] = [
            ([frame(TEXT, b"hi")], "the first frame must be a hello"),
            ([frame(HELLO, b"{}"), frame(HELLO, b"{}")], "second hello"),
            ([frame(HELLO, b"{}"), frame(9, b"")], "unknown frame type 9"),
            ([frame(HELLO, b"{}"), b"\x00\x00\x00\x00"], "empty frame (length 0)"),
            ([frame(HELLO, b'"hi"')], "hello must be a JSON object"),
            ([frame(HELLO, b"{}"), frame(PING, b"p" * 126)], "ping payload over 125 bytes"),
            ([frame(HELLO, b"{}"), frame(CLOSE, b"\x03")], "close payload of 1 byte"),
        ]
        for frames, reason in cases:
            edge = TcpHarness()
            client = TcpClient(edge)
            for data in frames:
                client.send_raw(data)
            self.assertClosed(client, 1002, reason)
            # Nothing after a protocol error is read.
            client.send(TEXT, b"ignored")
            client.lose()
            self.assertNotIn("ignored", [event[-1] for event in edge.app.events])

    def test_hello_timeout(self) -> None:
        """
        A client that sends no hello within the handshake timeout is closed
        with 1002.
        """
        edge = TcpHarness(handshake_timeout=3.0)
        client = TcpClient(edge)
        client.send_raw(b"\x00\x00")
        edge.clock.advance(2.9)
        self.assertFalse(client.transport.disconnecting)
        edge.clock.advance(0.2)
        self.assertClosed(client, 1002, "no hello within 3 s")

    def test_close_timeout_aborts(self) -> None:
        """
        A peer that does not end the connection within a second of the
        server's close frame is aborted.
        """
        edge = TcpHarness()
        client = edge.connect()
        edge.fabric.close_client(client.client_id, 4000, "bye")
        self.assertClosed(client, 4000, "bye")
        self.assertFalse(client.transport.disconnected)
        edge.clock.advance(1.1)
        self.assertTrue(client.transport.disconnected)

    def test_reject(self) -> None:
        """
        Reject(code, reason) from on_connect: the server's hello, then a
        close frame with that code; no on_close.
        """
        edge = TcpHarness()
        edge.app.reject = Reject(4403, "not today")
        client = edge.connect()
        self.assertEqual(
            client.messages(), [(HELLO, b'{"subprotocol": null}'), ("close", 4403, "not today")]
        )
        client.lose()
        self.assertEqual(edge.app.kinds(client.client_id), ["connect"])
        self.assertEqual(edge.metrics.connections, 0)

    def test_peer_close(self) -> None:
        """
        A close frame from the client ends the connection; its code is
        counted; on_close runs once the connection has gone.
        """
        edge = TcpHarness()
        client = edge.connect()
        client.send(CLOSE, struct.pack("!H", 1000) + b"bye")
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(client.messages()[1:], [])
        client.send(TEXT, b"after close")
        client.lose()
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "close"])
        self.assertEqual(edge.metrics.closes[1000], 1)

    def test_max_connections(self) -> None:
        """
        Over max_connections, a new connection gets 1013 at once.
        """
        edge = TcpHarness(max_connections=1)
        edge.connect()
        second = TcpClient(edge)
        self.assertClosed(second, 1013, "maximum number of connections reached")


class OutboundTests(SynchronousTestCase):
    def test_shared_message_framed_once(self) -> None:
        """
        A message to many TCP clients is framed once and the same frame is
        written to each.
        """
        edge = TcpHarness()
        clients = [edge.connect() for _ in range(3)]
        for client in clients:
            client.frames()
            edge.fabric.join_group(client.client_id, "g")
        calls = []

        def counting(kind: int, payload: bytes) -> bytes:
            calls.append(payload)
            return frame(kind, payload)

        self.patch(tcp, "frame", counting)
        edge.fabric.send_to_group("g", "to all")
        self.assertEqual(calls, [b"to all"])
        self.assertEqual([c.messages() for c in clients], [["to all"]] * 3)
        shared = SharedMessage.of(b"\x01")
        clients[0].protocol.deliver_shared(shared)
        clients[1].protocol.deliver_shared(shared)
        self.assertEqual(shared.framed["tcp"], frame(BINARY, b"\x01"))
        self.assertEqual(len(calls), 2)

    def test_paused_messages_wait_in_order(self) -> None:
        """
        While the transport's buffer is full, messages (and a close) wait and
        go out in order when it drains.
        """
        edge = TcpHarness()
        client = edge.connect()
        client.frames()
        client.protocol.pauseProducing()
        for number in range(5):
            edge.fabric.send_to_client(client.client_id, str(number))
        edge.fabric.close_client(client.client_id, 4000, "done")
        self.assertEqual(client.messages(), [])
        client.protocol.resumeProducing()
        self.assertEqual(
            client.messages(), ["0", "1", "2", "3", "4", ("close", 4000, "done")]
        )

    def test_slow_consumer_1008(self) -> None:
        """
        A client whose queue goes over the bound is closed with 1008 "slow
        consumer", the drop is counted, and it is gone from the gate at once.
        """
        edge = TcpHarness(max_outbound_queue=10000)
        slow = edge.connect()
        fast = edge.connect()
        slow.frames()
        fast.frames()
        slow.protocol.pauseProducing()
        for _ in range(11):
            edge.fabric.send_to_all("x" * 1000)
        self.assertFalse(self.successResultOf(edge.fabric.is_online(slow.client_id)))
        self.assertEqual(edge.metrics.drops["slow_consumer"], 1)
        self.assertEqual(slow.messages(), [("close", 1008, "slow consumer")])
        self.assertEqual(len(fast.messages()), 11)

    def test_write_producer_registered(self) -> None:
        """
        The protocol is the transport's streaming producer, so that a full
        write buffer pauses it.
        """
        edge = TcpHarness()
        client = edge.connect()
        self.assertIs(client.transport.producer, client.protocol)
        self.assertTrue(client.transport.streaming)


class BackpressureTests(SynchronousTestCase):
    def test_pause_and_resume_reading(self) -> None:
        """
        When the gate pauses a client, the transport stops reading and frames
        already read wait; on resume they are handed on, in order.
        """
        edge = TcpHarness()
        client = edge.connect()
        edge.gate.pause_client(client.client_id)
        self.assertEqual(client.transport.producerState, "paused")
        client.send_raw(frame(TEXT, b"1") + frame(TEXT, b"2"))
        self.assertEqual(edge.app.kinds(client.client_id), ["connect"])
        edge.gate.resume_client(client.client_id)
        self.assertEqual(client.transport.producerState, "producing")
        edge.clock.advance(0)
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "1", "2"])

    def test_pause_mid_read(self) -> None:
        """
        A pause asked for while a read is being parsed stops the parse at
        the next frame.
        """
        edge = TcpHarness()
        client = edge.connect()
        original = edge.gate.client_message

        def pausing(client_id: str, message: Any) -> None:
            original(client_id, message)
            if message == "stop":
                edge.gate.pause_client(client_id)

        self.patch(edge.gate, "client_message", pausing)
        client.send_raw(frame(TEXT, b"a") + frame(TEXT, b"stop") + frame(TEXT, b"b"))
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "a", "stop"])
        edge.gate.resume_client(client.client_id)
        edge.clock.advance(0)
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "a", "stop", "b"])


class PingTests(SynchronousTestCase):
    def test_ping_answered(self) -> None:
        """
        A ping is answered with a pong carrying its payload.
        """
        edge = TcpHarness()
        client = edge.connect()
        client.frames()
        client.send(PING, b"abc")
        self.assertEqual(client.frames(), [(PONG, b"abc")])

    def test_idle_client_pinged_then_dropped(self) -> None:
        """
        After ping_interval of silence the server pings; a client that
        answers stays; one that stays silent for ping_timeout more is
        dropped, and on_close runs.
        """
        edge = TcpHarness(ping_interval=20.0, ping_timeout=10.0)
        client = edge.connect()
        client.frames()
        edge.clock.advance(20)
        self.assertEqual(client.frames(), [(PING, b"")])
        client.send(PONG, b"")
        edge.clock.advance(10)
        self.assertFalse(client.transport.disconnecting)
        edge.clock.advance(20)
        self.assertEqual(client.frames(), [(PING, b"")])
        edge.clock.advance(10)
        self.assertTrue(client.transport.disconnected)
        client.lose()
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "close"])

    def test_talking_client_not_pinged(self) -> None:
        """
        A client that sends messages is not pinged.
        """
        edge = TcpHarness(ping_interval=20.0, ping_timeout=10.0)
        client = edge.connect()
        client.frames()
        for _ in range(5):
            edge.clock.advance(15)
            client.send(TEXT, b"still here")
        self.assertEqual(client.frames(), [])

    def test_no_pings(self) -> None:
        """
        ping_interval 0 turns pings off.
        """
        edge = TcpHarness(ping_interval=0.0)
        client = edge.connect()
        client.frames()
        edge.clock.advance(3600)
        self.assertEqual(client.frames(), [])
        self.assertFalse(client.transport.disconnecting)


class ShutdownTests(SynchronousTestCase):
    def test_stop_closes_tcp_clients_1001(self) -> None:
        """
        Stopping the gate service closes TCP clients with 1001 and waits for
        their connections to end; a connection still without a hello is
        closed with 1001 when the listener stops.
        """
        edge = TcpHarness()
        websocket = FabricServerFactory(edge.gate, edge.settings, edge.metrics, edge.clock)
        service = GateService(edge.gate, websocket, edge.clock, 5.0)
        service.add_transport(edge.factory)
        service.startService()
        clients = [edge.connect() for _ in range(2)]
        silent = TcpClient(edge)
        edge.factory.doStart()
        edge.factory.doStop()
        self.assertEqual(silent.messages(), [("close", 1001, "server shutting down")])
        silent.lose()
        stopped = service.stopService()
        edge.clock.advance(0)
        for client in clients:
            self.assertEqual(client.messages()[-1], ("close", 1001, "server shutting down"))
        self.assertNoResult(stopped)
        for client in clients:
            client.lose()
        self.successResultOf(stopped)
        self.assertEqual([e[0] for e in edge.app.events].count("close"), 2)


class AuthTests(SynchronousTestCase):
    def harness(self, **limits: Any) -> TcpHarness:
        from wsfabric.gate.auth import JWTAuthenticator
        from wsfabric.gate.limits import LimitSettings

        clock = Clock()
        clock.advance(1_000_000)
        authenticator = JWTAuthenticator(SECRET.encode(), ["HS256"], clock)
        edge = TcpHarness(authenticator=authenticator, limits=LimitSettings(**limits))
        edge.clock = clock
        edge.factory = FabricTcpFactory(edge.gate, edge.settings, edge.metrics, clock)
        return edge

    def token(self, **claims: Any) -> str:
        import jwt

        return jwt.encode({"sub": "alice", **claims}, SECRET, algorithm="HS256")

    def test_token_in_header(self) -> None:
        """
        A valid bearer token in the hello's headers binds the uid; the
        token never reaches the application.
        """
        edge = self.harness()
        client = edge.connect(headers={"Authorization": "Bearer " + self.token()})
        request = edge.app.events[0][2]
        self.assertEqual(request.uid, "alice")
        self.assertNotIn("authorization", request.headers)
        self.assertEqual(client.frames()[0][0], HELLO)

    def test_token_in_params(self) -> None:
        """
        A token in the hello's params works too.
        """
        edge = self.harness()
        edge.connect(params={"token": self.token(), "room": "1"})
        request = edge.app.events[0][2]
        self.assertEqual((request.uid, request.params), ("alice", {"room": "1"}))

    def test_bad_token_4401(self) -> None:
        """
        A missing or invalid token closes with 4401 before the gate hears
        of the client.
        """
        edge = self.harness()
        for hello in ({}, {"params": {"token": "nope"}}):
            client = edge.connect(**hello)
            messages = client.messages()
            self.assertEqual(len(messages), 1)
            self.assertEqual(messages[0][:2], ("close", 4401))
        self.assertEqual(edge.app.events, [])
        self.assertEqual(edge.metrics.drops["unauthorized"], 2)

    def test_per_ip_limit_1008(self) -> None:
        """
        Over the per-address cap, a hello is refused with 1008; the place is
        freed when a connection goes.
        """
        edge = self.harness(per_ip=1)
        first = edge.connect(params={"token": self.token()})
        second = edge.connect(params={"token": self.token()})
        self.assertEqual(
            second.messages(), [("close", 1008, "too many connections from this address")]
        )
        first.lose()
        third = edge.connect(params={"token": self.token()})
        self.assertEqual(third.frames()[0][0], HELLO)

    def test_token_expiry_and_refresh(self) -> None:
        """
        A connection is closed with 4401 when its token expires, unless a
        refresh message (handled by the gate, unseen by the application)
        brought a new one.
        """
        edge = self.harness()
        client = edge.connect(params={"token": self.token(exp=1_000_010)})
        client.frames()
        fresh = self.token(exp=1_000_030)
        refresh = {"route": "wsfabric.refresh", "id": 1, "data": {"token": fresh}}
        client.send(TEXT, json.dumps(refresh).encode())
        self.assertEqual(client.messages(), ['{"id": 1, "data": {"exp": 1000030}}'])
        edge.clock.advance(20)
        self.assertEqual(client.messages(), [])
        edge.clock.advance(10)
        self.assertEqual(client.messages(), [("close", 4401, "token expired")])
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "close"])

    def test_rate_limit_1008(self) -> None:
        """
        A client over the message rate is closed with 1008 "rate limit".
        """
        edge = self.harness(rate=1.0, burst=2)
        client = edge.connect(params={"token": self.token()})
        client.frames()
        for _ in range(3):
            client.send(TEXT, b"m")
        self.assertEqual(client.messages(), [("close", 1008, "rate limit")])
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "m", "m", "close"])


@implementer(IAuthenticator)
class SlowAuthenticator:
    """
    Answers each authentication when the test fires its Deferred.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def authenticate(self, headers: dict[str, str], params: dict[str, str]) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        self.pending.append(waiting)
        return waiting


class SlowAdmissionTests(SynchronousTestCase):
    def harness(self) -> tuple[TcpHarness, SlowAuthenticator]:
        authenticator = SlowAuthenticator()
        return TcpHarness(authenticator=authenticator, handshake_timeout=5.0), authenticator

    def test_messages_behind_hello_wait(self) -> None:
        """
        Messages sent right behind the hello wait while it is checked (and
        nothing more is read), then reach the application in order.
        """
        edge, authenticator = self.harness()
        client = TcpClient(edge)
        client.send_raw(frame(HELLO, b"{}") + frame(TEXT, b"1") + frame(TEXT, b"2"))
        self.assertEqual((edge.app.events, client.frames()), ([], []))
        self.assertEqual(client.transport.producerState, "paused")
        authenticator.pending[0].callback(("bob", {"sub": "bob"}))
        self.assertEqual(client.frames(), [(HELLO, b'{"subprotocol": null}')])
        self.assertEqual(client.transport.producerState, "producing")
        edge.clock.advance(0)
        self.assertEqual(edge.app.kinds(client.client_id), ["connect", "1", "2"])
        self.assertEqual(edge.app.events[0][2].uid, "bob")

    def test_timeout_while_checking(self) -> None:
        """
        The hello timeout covers the check; a late answer changes nothing.
        """
        edge, authenticator = self.harness()
        client = TcpClient(edge)
        client.hello()
        edge.clock.advance(5.1)
        self.assertEqual(client.messages(), [("close", 1002, "no hello within 5 s")])
        authenticator.pending[0].callback(("bob", {}))
        client.lose()
        self.assertEqual((edge.app.events, client.frames()), ([], []))

    def test_authenticator_error_1011(self) -> None:
        """
        An authenticator that fails unexpectedly closes the client with 1011.
        """
        edge, authenticator = self.harness()
        client = TcpClient(edge)
        client.hello()
        authenticator.pending[0].errback(RuntimeError("database down"))
        self.assertEqual(client.messages(), [("close", 1011, "internal error")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
