"""
Connection and message limits: the token bucket, the client address behind
trusted proxies, per-address and per-uid caps (HTTP 429), the message rate
limit (1008), and shutdown spreading its closes over the drain window.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.apps import RecordingApp
from tests.unit.edge import EdgeHarness
from tests.unit.test_websocket import StringTransport
from wsfabric.errors import ConfigurationError, LimitExceeded
from wsfabric.gate import edge as edge_module
from wsfabric.gate.auth import JWTAuthenticator
from wsfabric.gate.limits import ConnectionLimits, LimitSettings, TokenBucket, TrustedProxies
from wsfabric.standalone import Options
from wsfabric.testing import StandaloneHarness

SECRET = "s" * 40


def parse(args: list[str]) -> Options:
    options = Options()
    options.parseOptions(["--app", "tests.unit.apps:RecordingApp", *args])
    return options


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        """
        A full bucket allows ``burst`` messages at once, then ``rate`` a
        second; unused time never fills it over ``burst``.
        """
        clock = Clock()
        bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])
        clock.advance(0.4)
        self.assertFalse(bucket.take())
        clock.advance(0.1)
        self.assertEqual([bucket.take(), bucket.take()], [True, False])
        clock.advance(3600)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])

    def test_refused_messages_do_not_borrow(self) -> None:
        """
        Refused attempts take nothing: a client that keeps trying gets
        ``rate`` a second, not less.
        """
        clock = Clock()
        # Binary fractions keep the arithmetic exact.
        bucket = TokenBucket(rate=4.0, burst=1, clock=clock)
        allowed = 0
        for _ in range(1000):
            allowed += bucket.take()
            clock.advance(0.0625)
        # The full bucket's one, then 4 a second over the 62.4375 s.
        self.assertEqual(allowed, 1 + 249)


class TrustedProxyTests(SynchronousTestCase):
    def test_untrusted_peer_header_ignored(self) -> None:
        """
        X-Forwarded-For from a peer that is not a trusted proxy is ignored.
        """
        proxies = TrustedProxies(["10.0.0.0/8"])
        self.assertEqual(proxies.client_address("203.0.113.9", "1.2.3.4"), "203.0.113.9")
        self.assertEqual(TrustedProxies().client_address("10.0.0.1", "1.2.3.4"), "10.0.0.1")

    def test_rightmost_untrusted_hop(self) -> None:
        """
        From a trusted proxy, the client is the rightmost hop that is not a
        trusted proxy; a spoofed left part is not believed.
        """
        proxies = TrustedProxies(["10.0.0.0/8", "::1"])
        self.assertEqual(proxies.client_address("10.0.0.1", "198.51.100.7"), "198.51.100.7")
        self.assertEqual(
            proxies.client_address("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1"),
            "198.51.100.7",
        )
        self.assertEqual(proxies.client_address("::1", "10.2.2.2, 10.1.1.1"), "10.2.2.2")
        self.assertEqual(proxies.client_address("10.0.0.1", "[2001:db8::1]:443"), "2001:db8::1")
        self.assertEqual(proxies.client_address("10.0.0.1", "198.51.100.7:5555"), "198.51.100.7")
        self.assertEqual(proxies.client_address("::ffff:10.0.0.1", "198.51.100.7"),
                         "198.51.100.7")

    def test_garbage_ends_the_walk(self) -> None:
        """
        An entry that is not an address ends the walk at the hop before it.
        """
        proxies = TrustedProxies(["10.0.0.0/8"])
        self.assertEqual(proxies.client_address("10.0.0.1", "1.1.1.1, unknown"), "10.0.0.1")
        self.assertEqual(
            proxies.client_address("10.0.0.1", "1.1.1.1, junk, 10.9.9.9"), "10.9.9.9"
        )

    def test_bad_spec(self) -> None:
        """
        A spec that is neither an address nor a CIDR block is refused, also
        on the command line.
        """
        self.assertRaises(ConfigurationError, TrustedProxies, ["proxy.example"])
        with self.assertRaises(SystemExit) as raised:
            parse(["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "nope"])
        self.assertIn("--trusted-proxy", str(raised.exception.code))
        limits = parse(["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"])[
            "edge-settings"
        ].limits
        self.assertEqual(len(limits.trusted.networks), 2)


class ConnectionLimitTests(SynchronousTestCase):
    def test_per_address(self) -> None:
        """
        Over the per-address cap a connection is refused; a release frees
        its place (once, however often it is called).
        """
        limits = ConnectionLimits(per_ip=2)
        first = limits.admit("1.1.1.1")
        limits.admit("1.1.1.1")
        limits.admit("2.2.2.2")
        with self.assertRaises(LimitExceeded) as raised:
            limits.admit("1.1.1.1")
        self.assertEqual(raised.exception.cause, "ip_limit")
        first.release()
        first.release()
        self.assertEqual(limits.connections_from("1.1.1.1"), 1)
        limits.admit("1.1.1.1")
        self.assertRaises(LimitExceeded, limits.admit, "1.1.1.1")

    def test_per_uid(self) -> None:
        """
        Over the per-uid cap a connection is refused and not counted; a
        ticket released before it was bound counts nothing.
        """
        limits = ConnectionLimits(per_uid=1)
        ticket = limits.admit("1.1.1.1", "alice")
        with self.assertRaises(LimitExceeded) as raised:
            limits.admit("1.1.1.2", "alice")
        self.assertEqual(raised.exception.cause, "uid_limit")
        other = limits.admit("1.1.1.3")
        self.assertRaises(LimitExceeded, other.bind, "alice")
        ticket.release()
        self.assertEqual(limits.connections_of("alice"), 0)
        late = limits.admit("1.1.1.4")
        late.release()
        late.bind("alice")
        self.assertEqual(limits.connections_of("alice"), 0)

    def test_options(self) -> None:
        """
        The limits are off by default; --rate-burst defaults to one second's
        worth of --rate-limit and needs it.
        """
        default = parse([])["edge-settings"].limits
        self.assertEqual(
            (default.per_ip, default.per_uid, default.rate, default.burst),
            (0, 0, 0.0, 0),
        )
        self.assertEqual(default.trusted.networks, [])
        limits = parse(["--rate-limit", "2.5", "--max-connections-per-ip", "7"])[
            "edge-settings"
        ].limits
        self.assertEqual((limits.rate, limits.burst, limits.per_ip), (2.5, 3, 7))
        with self.assertRaises(SystemExit):
            parse(["--rate-burst", "5"])


def handshake(edge: EdgeHarness, headers: bytes = b"") -> tuple[int, Any]:
    """
    Send a raw handshake; return the status and the JSON body.
    """
    server = edge.edge.buildProtocol(None)
    # The same peer address as EdgeHarness.connect's clients.
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    server.makeConnection(transport)
    server.dataReceived(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + headers + b"\r\n"
    )
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body) if body else None


class EdgeLimitTests(SynchronousTestCase):
    def test_per_ip_429(self) -> None:
        """
        Over the per-address cap the handshake gets HTTP 429 with a JSON
        reason; a closed connection frees its place.
        """
        edge = EdgeHarness(self, limits=LimitSettings(per_ip=2))
        first, _ = edge.connect()
        edge.connect()
        status, body = handshake(edge)
        self.assertEqual(status, 429)
        self.assertEqual(body["error"]["code"], "too_many_connections")
        self.assertEqual(edge.metrics.drops["ip_limit"], 1)
        first.sendClose(1000)
        edge.flush()
        edge.clock.advance(2)
        edge.flush()
        again, _ = edge.connect()
        self.assertTrue(again.opened)

    def test_forwarded_for(self) -> None:
        """
        Behind a trusted proxy each forwarded address has its own count.
        """
        trusted = EdgeHarness(self, limits=LimitSettings(
            per_ip=1, trusted=TrustedProxies(["127.0.0.1"])
        ))
        for address in ("198.51.100.1", "198.51.100.2"):
            client, _ = trusted.connect(headers={"X-Forwarded-For": address})
            self.assertTrue(client.opened)
        status, _ = handshake(trusted, b"X-Forwarded-For: 198.51.100.1\r\n")
        self.assertEqual(status, 429)

    def test_forwarded_for_untrusted(self) -> None:
        """
        From a peer that is not a trusted proxy, X-Forwarded-For is ignored:
        every connection counts for the peer.
        """
        untrusted = EdgeHarness(self, limits=LimitSettings(
            per_ip=1, trusted=TrustedProxies(["10.0.0.1"])
        ))
        opened = [
            untrusted.connect(headers={"X-Forwarded-For": address})[0].opened
            for address in ("198.51.100.1", "198.51.100.2")
        ]
        self.assertEqual(opened, [True, False])

    def test_per_uid_429(self) -> None:
        """
        Over the per-uid cap a client with a token for that uid gets 429.
        """
        auth = JWTAuthenticator(SECRET.encode(), ["HS256"])
        edge = EdgeHarness(self, authenticator=auth, limits=LimitSettings(per_uid=1))
        alice = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
        bob = jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
        self.assertTrue(edge.connect(f"ws://h/ws?token={alice}")[0].opened)
        self.assertTrue(edge.connect(f"ws://h/ws?token={bob}")[0].opened)
        status, body = handshake(edge, f"Authorization: Bearer {alice}\r\n".encode())
        self.assertEqual((status, body["error"]["message"]),
                         (429, "too many connections for this user"))
        self.assertEqual(edge.metrics.drops["uid_limit"], 1)

    def test_rate_limit_closes_1008(self) -> None:
        """
        A client sending over its rate is closed with 1008 "rate limit"; its
        messages up to then reached the application, later ones do not; the
        drop is counted.
        """
        edge = EdgeHarness(self, limits=LimitSettings(rate=10.0, burst=3))
        client, server = edge.connect()
        calm, calm_server = edge.connect()
        for index in range(3):
            client.sendMessage(str(index).encode(), False)
        edge.flush()
        edge.clock.advance(0.1)
        client.sendMessage(b"3", False)
        client.sendMessage(b"4", False)
        client.sendMessage(b"5", False)
        edge.flush()
        self.assertEqual(client.close_info[1:], (1008, "rate limit"))
        self.assertEqual(edge.app.kinds(server.client_id),
                         ["connect", "0", "1", "2", "3", "close"])
        self.assertEqual(edge.metrics.drops["rate_limit"], 1)
        for _ in range(3):
            calm.sendMessage(b"x", False)
            edge.clock.advance(0.1)
            edge.flush()
        self.assertIsNone(calm.close_code)


class DrainTests(SynchronousTestCase):
    def test_close_all_spreads_batches(self) -> None:
        """
        close_all with a window closes batches of ``per_turn`` clients
        evenly over the window, the first at once, and fires when all are
        removed.
        """
        harness = StandaloneHarness(RecordingApp)
        clients = [harness.connect() for _ in range(35)]
        clock = Clock()
        done = harness.gate.close_all(1001, "bye", clock, per_turn=10, window=5.0)

        def closed() -> int:
            return sum(client.close_code == 1001 for client in clients)

        seen = [closed()]
        for _ in range(3):
            clock.advance(1.25)
            seen.append(closed())
        self.assertEqual(seen, [10, 20, 30, 35])
        self.successResultOf(done)
        self.assertEqual(self.successResultOf(harness.fabric.get_all_client_count()), 0)

    def test_small_gate_closes_at_once(self) -> None:
        """
        Without a window, or with few clients, every client is closed in
        the first turn.
        """
        harness = StandaloneHarness(RecordingApp)
        clients = [harness.connect() for _ in range(5)]
        self.successResultOf(harness.gate.close_all(1001, "bye", Clock(), per_turn=10, window=5))
        self.assertEqual([c.close_code for c in clients], [1001] * 5)

    def test_service_uses_drain_window(self) -> None:
        """
        The gate service spreads its clients over the drain window in
        batches of DRAIN_BATCH, and bounds the wait by the window plus the
        shutdown timeout.
        """
        self.patch(edge_module, "DRAIN_BATCH", 2)
        edge = EdgeHarness(self, drain_window=3.0)
        service = edge.service(timeout=1.0)
        service.startService()
        clients = [edge.connect()[0] for _ in range(6)]
        stopped = service.stopService()
        edge.flush()

        def closed() -> int:
            return sum(client.close_code == 1001 for client in clients)

        seen = [closed()]
        for _ in range(2):
            edge.clock.advance(1.0)
            edge.flush()
            seen.append(closed())
        self.assertEqual(seen, [2, 4, 6])
        edge.clock.advance(0.5)
        edge.flush()
        self.successResultOf(stopped)

    def test_service_wait_bound(self) -> None:
        """
        Clients that never answer hold shutdown up for at most the drain
        window plus the shutdown timeout.
        """
        self.patch(edge_module, "DRAIN_BATCH", 1)
        edge = EdgeHarness(self, drain_window=2.0)
        service = edge.service(timeout=1.0)
        service.startService()
        edge.connect()
        edge.connect()
        edge.pumps.clear()
        stopped = service.stopService()
        edge.clock.advance(2.9)
        self.assertNoResult(stopped)
        edge.clock.advance(0.2)
        self.successResultOf(stopped)
