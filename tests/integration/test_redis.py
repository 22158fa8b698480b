"""
The Redis adapter (:mod:`wsfabric.cluster.redis`) against a real
``redis-server``: the IBus and IIndex contracts (the index gives the answers
of the in-memory index), resubscription after a dropped connection and after
a restart, a hung Redis, fencing, data loss, and the sweeper of dead gates.

Each test starts its own ``redis-server`` on a free loopback port and stops
it by pid. They run with any reactor (``trial tests.integration.test_redis``
or with ``--reactor=asyncio``).
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from wsfabric.cluster.memory import MemoryIndex
from wsfabric.cluster.redis import (
    _RESTORE_CLIENTS,
    ClientRecord,
    Fenced,
    RedisService,
    SweptClient,
    parse_redis_url,
)
from wsfabric.errors import ClientNotFound, ClusterUnavailable, ConfigurationError
from wsfabric.interfaces import IBus, IIndex, ISubscription
from wsfabric.testing.redis import RawSubscriber, RedisServer, free_port

NS = "t"


def sleep(seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """
    Poll ``predicate`` until it is true; fail after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout:g} s: {what}")
        yield sleep(interval)


class RedisTestCase(TestCase):
    """
    A fresh redis-server per test, and services that are always stopped.
    """

    timeout = 40

    def setUp(self) -> None:
        self.server = RedisServer().start()
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def service(self, node_id: str, url: str | None = None, connect: bool = True, **options):
        options.setdefault("namespace", NS)
        options.setdefault("probe_interval", min(1.0, options.get("lease", 5.0) / 5))
        svc = RedisService(reactor, url or self.server.url, node_id, **options)
        svc.startService()
        self.addCleanup(svc.stopService)
        if connect:
            yield svc.when_connected(5)
        return svc

    @inlineCallbacks
    def failure_within(self, deferred, error, seconds: float):
        """
        Assert that ``deferred`` fails with ``error`` within ``seconds``.
        """
        start = time.monotonic()
        failure = yield self.assertFailure(deferred, error)
        elapsed = time.monotonic() - start
        self.assertLessEqual(elapsed, seconds, f"failed after {elapsed:.3f} s: {failure}")
        return failure

    def keys_of(self, text: str) -> list[str]:
        return [k for k in self.server.keys(NS + ":*") if text in k]

    def clock_age(self) -> float:
        """
        Seconds Redis's activity clock has run without a pause.
        """
        since = self.server.command("HGET", f"{NS}:clock", "since")
        if since is None:
            return 0.0
        seconds, micros = self.server.command("TIME")
        return (int(seconds) * 1000 + int(micros) // 1000 - int(since)) / 1000

    @inlineCallbacks
    def clock_active(self, lease: float):
        """
        Wait until sweeps may declare nodes dead (Redis active for a lease).
        """
        yield wait_until(lambda: self.clock_age() >= lease, lease + 3, "Redis active for a lease")


# -- configuration ----------------------------------------------------------------


class URLTests(SynchronousTestCase):
    def test_plain(self) -> None:
        a = parse_redis_url("redis://127.0.0.1:6380/2")
        self.assertEqual(
            (a.host, a.port, a.db, a.password, a.tls), ("127.0.0.1", 6380, 2, None, False)
        )

    def test_defaults_and_password(self) -> None:
        a = parse_redis_url("redis://:p%40ss@redis.example")
        self.assertEqual(
            (a.host, a.port, a.db, a.password, a.username), ("redis.example", 6379, 0, "p@ss", None)
        )
        self.assertNotIn("p@ss", str(a))
        b = parse_redis_url("rediss://alice:pw@[::1]:6390/0?ca=/etc/ca.pem")
        self.assertEqual(
            (b.host, b.username, b.password, b.tls, b.ca_file),
            ("::1", "alice", "pw", True, "/etc/ca.pem"),
        )
        self.assertEqual(str(b), "rediss://alice:***@[::1]:6390/0")

    def test_bad_urls(self) -> None:
        for url, words in [
            ("", "empty"),
            ("http://127.0.0.1:6379/0", "scheme"),
            ("redis://:secret@127.0.0.1:notaport/0", "port"),
            ("redis://127.0.0.1:70000/0", "port"),
            ("redis:///0", "no host"),
            ("redis://127.0.0.1:6379/x", "database number"),
            ("redis://127.0.0.1:6379/0?foo=1", "parameter"),
            ("redis://127.0.0.1:6379/0?ca=/x", "parameter"),
            ("redis://user@127.0.0.1:6379/0", "password"),
        ]:
            with self.assertRaises(ConfigurationError, msg=url) as caught:
                parse_redis_url(url)
            self.assertIn(words, str(caught.exception), url)
            self.assertNotIn("secret", str(caught.exception))

    def test_bad_options(self) -> None:
        with self.assertRaises(ConfigurationError):
            RedisService(reactor, "redis://127.0.0.1:1/0", "n", namespace="bad ns")
        with self.assertRaises(ConfigurationError):
            RedisService(reactor, "redis://127.0.0.1:1/0", "n", command_timeout=0)
        with self.assertRaises(ConfigurationError):
            RedisService(reactor, "redis://127.0.0.1:1/0", "n", lease=2.0, probe_interval=1.0)


# -- the interfaces and the index -------------------------------------------------


def _info(rng: random.Random) -> dict[str, Any]:
    return rng.choice([{}, {"n": rng.randint(0, 9)}, {"nick": "zoë", "tags": [1, {"x": None}]}])


class IndexTests(RedisTestCase):
    @inlineCallbacks
    def test_interfaces(self):
        svc = yield self.service("n1")
        self.assertTrue(verifyObject(IBus, svc.bus))
        self.assertTrue(verifyObject(IIndex, svc.index))
        subscription = svc.bus.subscribe("all", lambda channel, payload: None)
        self.assertTrue(verifyObject(ISubscription, subscription))
        yield subscription.cancel()

    @inlineCallbacks
    def snapshot(self, index, clients, uids, groups):
        reads = []
        for cid in clients:
            reads += [
                index.is_online(cid),
                index.get_gate(cid),
                index.get_uid(cid),
                index.get_info(cid),
            ]
        for uid in uids:
            reads.append(index.get_client_ids_by_uid(uid).addCallback(sorted))
        for group in groups:
            reads += [
                index.get_client_ids_by_group(group).addCallback(sorted),
                index.get_client_count_by_group(group),
                index.get_uids_by_group(group).addCallback(sorted),
            ]
        reads += [
            index.get_all_uids().addCallback(sorted),
            index.get_all_groups().addCallback(sorted),
            index.get_all_client_count(),
        ]
        return (yield gatherResults(reads, consumeErrors=True))

    @inlineCallbacks
    def apply(self, index, op):
        name, *args = op
        try:
            yield maybeDeferred(getattr(index, name), *args)
        except ClientNotFound as e:
            return ("ClientNotFound", e.client_id)
        return ("ok",)

    @inlineCallbacks
    def test_same_answers_as_memory(self):
        """
        One sequence of writes (scripted, then random) leaves the Redis index
        answering every read exactly as the in-memory index does, after every
        step; a write to a missing client or by the wrong gate fails with
        ClientNotFound on both.
        """
        svc = yield self.service("n1")
        for gate in ("g1", "g2"):
            yield svc.registry.register(gate, "gate", {})
        redis, memory = svc.index, MemoryIndex()
        clients = [f"c{i}" for i in range(8)]
        uids = ["u0", "u1", "ü:2", "u 3"]
        groups = ["room:0", "room 1", "grüppe", "g:{x}"]
        ops: list[tuple[Any, ...]] = [
            ("add_client", "g1", "c0"),
            ("add_client", "g1", "c1"),
            ("add_client", "g2", "c2"),
            ("bind_uid", "g1", "c0", "u0"),
            ("bind_uid", "g1", "c1", "u0"),
            ("bind_uid", "g1", "c0", "u1"),  # replaces u0
            ("bind_uid", "g1", "c0", "u1"),  # same again
            ("bind_uid", "g2", "c0", "u1"),  # wrong gate
            ("bind_uid", "g1", "c7", "u1"),  # not online
            ("unbind_uid", "g1", "c2"),  # wrong gate
            ("unbind_uid", "g2", "c2"),  # no binding
            ("join_group", "g1", "c0", "room:0"),
            ("join_group", "g1", "c1", "room:0"),
            ("join_group", "g1", "c0", "room:0"),
            ("join_group", "g2", "c2", "grüppe"),
            ("leave_group", "g1", "c1", "grüppe"),  # not a member
            ("leave_group", "g1", "c1", "room:0"),
            ("set_info", "g1", "c0", {"a": 1, "b": [True, None]}),
            ("set_info", "g1", "c0", {}),
            ("set_info", "g2", "c2", {"x": "y"}),
            ("set_info", "g1", "c2", {"x": "z"}),  # wrong gate
            ("remove_client", "g2", "c0"),  # wrong gate: no-op
            ("remove_client", "g1", "c0"),
            ("remove_client", "g1", "c0"),  # twice
            ("join_group", "g1", "c0", "room:0"),  # gone
        ]
        rng = random.Random(20261026)
        online: dict[str, str] = {"c1": "g1", "c2": "g2"}
        for _ in range(220):
            cid = rng.choice(clients)
            gate = online.get(cid) if rng.random() < 0.85 else None
            gate = gate or rng.choice(["g1", "g2"])
            kind = rng.random()
            if cid not in online and kind < 0.5:
                ops.append(("add_client", gate, cid))
                online[cid] = gate
            elif kind < 0.1:
                ops.append(("remove_client", gate, cid))
                if online.get(cid) == gate:
                    del online[cid]
            elif kind < 0.35:
                ops.append(("bind_uid", gate, cid, rng.choice(uids)))
            elif kind < 0.45:
                ops.append(("unbind_uid", gate, cid))
            elif kind < 0.7:
                ops.append(("join_group", gate, cid, rng.choice(groups)))
            elif kind < 0.85:
                ops.append(("leave_group", gate, cid, rng.choice(groups)))
            else:
                ops.append(("set_info", gate, cid, _info(rng)))
        errors = 0
        for step, op in enumerate(ops):
            expected = yield self.apply(memory, op)
            got = yield self.apply(redis, op)
            self.assertEqual(got, expected, f"step {step}: {op}")
            errors += expected[0] != "ok"
            want = yield self.snapshot(memory, clients, uids, groups)
            have = yield self.snapshot(redis, clients, uids, groups)
            self.assertEqual(have, want, f"after step {step}: {op}")
        self.assertGreater(errors, 10)
        # Removing every client leaves no index key behind.
        for cid in clients:
            for gate in ("g1", "g2"):
                yield redis.remove_client(gate, cid)
        leftover = [
            k
            for k in self.server.keys(NS + ":*")
            if not k.startswith((f"{NS}:lease:", f"{NS}:nodes", f"{NS}:epoch"))
        ]
        self.assertEqual(leftover, [])

    @inlineCallbacks
    def test_add_client_twice_starts_afresh(self):
        """
        Re-adding a recorded client drops what was recorded about it (the
        in-memory index keeps it in its uid and group sets instead).
        """
        svc = yield self.service("n1")
        yield svc.registry.register("g1", "gate", {})
        index = svc.index
        yield index.add_client("g1", "c1")
        yield index.bind_uid("g1", "c1", "u")
        yield index.join_group("g1", "c1", "room")
        yield index.add_client("g1", "c1")
        self.assertEqual((yield index.get_client_ids_by_uid("u")), [])
        self.assertEqual((yield index.get_client_ids_by_group("room")), [])
        self.assertEqual((yield index.get_all_client_count()), 1)

    @inlineCallbacks
    def test_removals_of_one_turn_go_together(self):
        """
        remove_client calls made in one reactor turn reach Redis as a few
        scripts of up to 500 clients, not one round trip each: a gate
        closing 10,000 clients on SIGTERM could not read 10,000 replies back
        within the command timeout.
        """
        svc = yield self.service("n1")
        yield svc.registry.register("g1", "gate", {})
        index = svc.index
        yield svc.command.run_script(
            _RESTORE_CLIENTS,
            ("g1", *(json.dumps({"c": f"c{i}", "g": ["room"]}) for i in range(1200))),
            write=True,
        )
        yield index.add_client("g1", "other-gate-client")
        self.server.command("CONFIG", "RESETSTAT")
        removals = [index.remove_client("g1", f"c{i}") for i in range(1200)]
        removals.append(index.remove_client("g2", "other-gate-client"))
        yield gatherResults(removals)
        calls = self.server.command("INFO", "commandstats").decode()
        # 500 + 500 + 200 clients of g1, and one script for g2.
        self.assertEqual(re.search(r"cmdstat_evalsha:calls=(\d+)", calls).group(1), "4")
        self.assertEqual((yield index.get_all_client_count()), 1)
        self.assertEqual((yield index.get_client_count_by_group("room")), 0)
        self.assertTrue((yield index.is_online("other-gate-client")))

    @inlineCallbacks
    def test_resync_gate(self):
        """
        resync_gate makes the index hold exactly the gate's records.
        """
        svc = yield self.service("n1")
        yield svc.registry.register("g1", "gate", {})
        index = svc.index
        for cid in ("stale", "c1"):
            yield index.add_client("g1", cid)
        yield index.join_group("g1", "stale", "room")
        yield index.bind_uid("g1", "c1", "old")
        records = [ClientRecord("c1", "u1", ["room", "b"], {"k": 1})] + [
            ClientRecord(f"x{i}", None, ["room"]) for i in range(1200)
        ]
        counts = yield index.resync_gate("g1", records)
        self.assertEqual(counts, (1201, 1))
        self.assertFalse((yield index.is_online("stale")))
        self.assertEqual((yield index.get_uid("c1")), "u1")
        self.assertEqual((yield index.get_all_uids()), ["u1"])
        self.assertEqual((yield index.get_info("c1")), {"k": 1})
        self.assertEqual((yield index.get_client_count_by_group("room")), 1201)
        self.assertEqual(sorted((yield index.get_all_groups())), ["b", "room"])
        self.assertEqual(len((yield index.gate_client_ids("g1"))), 1201)


# -- the bus ------------------------------------------------------------------------


class BusTests(RedisTestCase):
    @inlineCallbacks
    def test_publish_subscribe_refcount_cancel(self):
        """
        Two subscriptions of a node to one channel share one Redis
        subscription and both receive every message, in order; it goes when
        the last is cancelled.
        """
        a = yield self.service("na")
        b = yield self.service("nb")
        first, second, other = [], [], []
        s1 = b.bus.subscribe("group:x", lambda c, p: first.append((c, p)))
        s2 = b.bus.subscribe("group:x", lambda c, p: second.append(p))
        s3 = b.bus.subscribe("group:y", lambda c, p: other.append(p))
        yield gatherResults([s1.when_ready(), s2.when_ready(), s3.when_ready()])
        self.assertEqual(self.server.numsub(f"{NS}:ch:group:x"), 1)
        self.assertEqual(sorted(b.bus.channels()), ["group:x", "group:y"])
        payloads = [b"%d" % i for i in range(200)] + [b"\x00\xff\r\n" * 3, b"", b"x" * (1 << 20)]
        yield gatherResults([a.bus.publish("group:x", p) for p in payloads])
        yield wait_until(lambda: len(second) == len(payloads), 5, "all messages")
        self.assertEqual([p for _, p in first], payloads)
        self.assertEqual(second, payloads)
        self.assertEqual({c for c, _ in first}, {"group:x"})
        self.assertEqual(other, [])

        yield s1.cancel()
        yield s1.cancel()
        yield a.bus.publish("group:x", b"after")
        yield wait_until(lambda: second[-1:] == [b"after"], 5, "message after cancel")
        self.assertEqual(len(first), len(payloads))
        self.assertEqual(self.server.numsub(f"{NS}:ch:group:x"), 1)
        yield s2.cancel()
        yield wait_until(lambda: self.server.numsub(f"{NS}:ch:group:x") == 0, 2, "unsubscribed")
        self.assertEqual(b.bus.channels(), ["group:y"])
        # Subscribing again right after works (unsubscribe/subscribe race).
        s4 = b.bus.subscribe("group:x", lambda c, p: first.append((c, p)))
        yield s4.when_ready()
        self.assertEqual(self.server.numsub(f"{NS}:ch:group:x"), 1)
        s5 = b.bus.subscribe("group:z", lambda c, p: None)
        yield s5.cancel()
        yield s5.when_ready()

    @inlineCallbacks
    def test_receiver_error_does_not_stop_others(self):
        svc = yield self.service("n1")
        got = []

        def broken(channel, payload):
            raise RuntimeError("receiver bug")

        s1 = svc.bus.subscribe("all", broken)
        s2 = svc.bus.subscribe("all", lambda c, p: got.append(p))
        yield gatherResults([s1.when_ready(), s2.when_ready()])
        yield svc.bus.publish("all", b"m")
        yield wait_until(lambda: got == [b"m"], 2, "delivery")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_probe(self):
        """
        The liveness probe makes round trips; last_probe_ok moves on.
        """
        svc = yield self.service("n1", probe_interval=0.1)
        first = yield wait_until(lambda: svc.last_probe_ok, 2, "first probe")
        yield wait_until(lambda: svc.last_probe_ok > first, 2, "second probe")
        self.assertTrue(svc.healthy())
        self.assertEqual(svc.bus.last_probe_ok, svc.last_probe_ok)
        self.assertLess(svc.probe_rtt, 0.5)

    @inlineCallbacks
    def test_late_script_is_refused(self):
        """
        A write that reaches Redis after its deadline is not run.
        """
        svc = yield self.service("n1")
        witness = RawSubscriber(self.server, f"{NS}:ch:late")
        self.addCleanup(witness.close)
        svc.command.offset_ms -= 60_000  # every deadline now lies in the past
        failure = yield self.assertFailure(svc.bus.publish("late", b"m"), ClusterUnavailable)
        self.assertIn("deadline", str(failure))
        self.assertEqual(witness.messages(0.2), [])


# -- faults --------------------------------------------------------------------------


class FaultTests(RedisTestCase):
    @inlineCallbacks
    def subscribed(self, svc, channel):
        got = []
        subscription = svc.bus.subscribe(channel, lambda c, p: got.append(p))
        yield subscription.when_ready()
        return subscription, got

    @inlineCallbacks
    def test_resubscribe_after_client_kill(self):
        """
        CLIENT KILL TYPE pubsub: a gap is reported, every wanted channel is
        subscribed again within about a second, and messages flow.
        """
        svc = yield self.service("n1")
        gaps = []
        svc.add_listener(on_gap=gaps.append)
        _, got = yield self.subscribed(svc, "group:a")
        for i in range(30):
            yield svc.bus.subscribe(f"group:b{i}", lambda c, p: None).when_ready()
        start = time.monotonic()
        self.server.command("CLIENT", "KILL", "TYPE", "pubsub")
        yield wait_until(lambda: gaps, 2, "gap reported")
        yield wait_until(
            lambda: (
                self.server.numsub(f"{NS}:ch:group:a") == 1
                and self.server.numsub(f"{NS}:ch:group:b29") == 1
                and self.server.numsub(f"{NS}:probe:n1") == 1
            ),
            3,
            "resubscribed",
        )
        restored = time.monotonic() - start
        self.assertLess(restored, 1.5)
        self.assertEqual(svc.gaps, 1)
        yield svc.bus.subscribe("group:a", lambda c, p: None).when_ready()
        yield svc.bus.publish("group:a", b"again")
        yield wait_until(lambda: got == [b"again"], 2, "message after resubscribe")

    @inlineCallbacks
    def test_redis_restart_empty(self):
        """
        Redis restarts empty: a gap and the data loss are reported, the
        lease is back, subscriptions are restored, and resync_gate rebuilds
        the index.
        """
        svc = yield self.service("g1", lease=3.0)
        events = []
        svc.add_listener(
            on_gap=lambda reason: events.append("gap"),
            on_data_lost=lambda: events.append("data_lost"),
            on_lease_lost=lambda node: events.append("lease_lost"),
        )
        yield svc.registry.register("g1", "gate", {})
        epoch = svc.registry.epoch
        yield svc.index.add_client("g1", "c1")
        yield svc.index.join_group("g1", "c1", "room")
        _, got = yield self.subscribed(svc, "group:room")
        start = time.monotonic()
        self.server.restart_empty()
        yield wait_until(lambda: "data_lost" in events, 5, "data loss reported")
        detected = time.monotonic() - start
        yield wait_until(lambda: self.server.numsub(f"{NS}:ch:group:room") == 1, 5, "resubscribed")
        restored = time.monotonic() - start
        self.assertIn("gap", events)
        self.assertNotIn("lease_lost", events)
        self.assertNotEqual(svc.registry.epoch, epoch)
        self.assertEqual(self.server.command("EXISTS", f"{NS}:lease:g1"), 1)
        self.assertFalse((yield svc.index.is_online("c1")))
        yield svc.index.resync_gate("g1", [ClientRecord("c1", None, ["room"])])
        self.assertEqual((yield svc.index.get_client_ids_by_group("room")), ["c1"])
        yield svc.bus.subscribe("group:room", lambda c, p: None).when_ready()
        yield svc.bus.publish("group:room", b"back")
        yield wait_until(lambda: got == [b"back"], 2, "message after restart")
        self.assertLess(detected, 5)
        self.assertLess(restored, 5)
        print(
            f"\n    restart: data loss reported after {detected:.2f} s, "
            f"resubscribed after {restored:.2f} s"
        )

    @inlineCallbacks
    def test_hung_redis(self):
        """
        SIGSTOP: the probe notices within 5 s; commands fail within the
        timeout and, after SIGCONT, the timed-out ones have not run; a hang
        longer than the lease does not get live gates declared dead.
        """
        gate = yield self.service(
            "g1", lease=3.0, probe_interval=0.75, max_reconnect_delay=1.0, sweep=False
        )
        sweeper = yield self.service(
            "s1", lease=3.0, probe_interval=0.5, max_reconnect_delay=1.0, sweep_interval=0.2
        )
        yield gate.registry.register("g1", "gate", {})
        yield gate.index.add_client("g1", "c1")
        events = []
        gate.add_listener(
            on_gap=lambda reason: events.append(("gap", time.monotonic(), reason)),
            on_lease_lost=lambda node: events.append(("lease_lost", time.monotonic(), node)),
        )
        swept = []
        sweeper.add_listener(on_swept=swept.extend)
        witness = RawSubscriber(self.server, f"{NS}:ch:group:late")
        self.addCleanup(witness.close)
        yield wait_until(lambda: gate.last_probe_ok, 3, "a probe before the hang")
        # The sweeper runs with its guard open: it would declare a gate dead.
        yield self.clock_active(3.0)

        self.server.pause()
        start = time.monotonic()
        publish = gate.bus.publish("group:late", b"must-not-arrive")
        write = gate.index.add_client("g1", "late-client")
        read = gate.index.get_all_client_count()
        yield self.failure_within(publish, ClusterUnavailable, 2.3)
        yield self.failure_within(write, ClusterUnavailable, 2.3)
        yield self.failure_within(read, ClusterUnavailable, 2.3)
        yield wait_until(lambda: any(e[0] == "gap" for e in events), 5, "hang detected")
        detected = next(e[1] for e in events if e[0] == "gap") - start
        self.assertLessEqual(detected, 5.0)
        # While down, calls fail at once instead of queuing.
        yield self.failure_within(gate.bus.publish("group:late", b"no"), ClusterUnavailable, 0.1)
        yield sleep(max(0.0, 4.0 - (time.monotonic() - start)))  # past the 3 s lease
        self.server.resume()
        yield gate.when_connected(10)
        yield sweeper.when_connected(10)
        yield wait_until(lambda: gate.healthy(), 5, "probe after resume")
        # Nothing that failed ran late.
        self.assertEqual(witness.messages(0.3), [])
        self.assertEqual(self.server.command("EXISTS", f"{NS}:client:late-client"), 0)
        # The gate renewed its expired lease before any sweeper's grace ran out.
        yield sleep(3.5)
        self.assertTrue(self.clock_age() >= 3.0)
        self.assertEqual([e for e in events if e[0] == "lease_lost"], [])
        self.assertEqual(swept, [])
        self.assertTrue((yield gate.index.is_online("c1")))
        yield gate.index.join_group("g1", "c1", "room")
        print(f"\n    hung Redis detected after {detected:.2f} s")

    @inlineCallbacks
    def test_commands_fail_fast_when_disconnected(self):
        """
        With Redis gone every call fails at once; wanted subscriptions come
        back when Redis does.
        """
        svc = yield self.service("n1")
        yield svc.registry.register("g1", "gate", {})
        self.server.kill()
        yield wait_until(lambda: not svc.command.ready and not svc.subscriber.ready, 2, "down")
        index = svc.index
        for call in [
            svc.bus.publish("all", b"x"),
            index.add_client("g1", "c1"),
            index.get_all_client_count(),
            index.get_uids_by_group("g"),
            svc.registry.live_nodes("gate"),
        ]:
            yield self.failure_within(call, ClusterUnavailable, 0.05)
        subscription = svc.bus.subscribe("group:a", lambda c, p: None)
        yield self.failure_within(subscription.when_ready(), ClusterUnavailable, 0.05)
        self.server.start()
        yield svc.when_connected(5)
        yield subscription.when_ready()
        self.assertEqual(self.server.numsub(f"{NS}:ch:group:a"), 1)

    @inlineCallbacks
    def test_stop_drains_commands_in_flight(self):
        svc = yield self.service("n1")
        yield svc.registry.register("g1", "gate", {})
        writes = [svc.index.add_client("g1", f"c{i}") for i in range(300)]
        stopping = svc.stopService()
        yield gatherResults(writes)
        yield stopping
        self.assertEqual(self.server.command("SCARD", f"{NS}:clients"), 300)
        yield wait_until(lambda: self.server.numsub(f"{NS}:probe:n1") == 0, 2, "closed")
        yield self.failure_within(svc.bus.publish("all", b"x"), ClusterUnavailable, 0.05)

    @inlineCallbacks
    def test_unreachable_at_start(self):
        port = free_port()
        svc = yield self.service("n1", url=f"redis://127.0.0.1:{port}/0", connect=False)
        failure = yield self.failure_within(svc.when_connected(0.5), ClusterUnavailable, 1.0)
        self.assertIn(str(port), str(failure))
        yield self.failure_within(svc.bus.publish("all", b"x"), ClusterUnavailable, 0.05)

    @inlineCallbacks
    def test_password_and_database(self):
        self.server.stop()
        self.server = RedisServer(password="s3cret").start()
        self.addCleanup(self.server.stop)
        port = self.server.port
        svc = yield self.service("n1", url=f"redis://:s3cret@127.0.0.1:{port}/3")
        yield svc.registry.register("g1", "gate", {})
        yield svc.index.add_client("g1", "c1")
        self.assertIn("db3:keys=", self.server.command("INFO", "keyspace").decode())
        self.assertNotIn("db0:", self.server.command("INFO", "keyspace").decode())
        bad = yield self.service("n2", url=f"redis://:wrong@127.0.0.1:{port}/0", connect=False)
        failure = yield self.assertFailure(bad.when_connected(1.0), ClusterUnavailable)
        self.assertIn("WRONGPASS", str(failure))
        self.assertNotIn("wrong@", str(failure))

    @inlineCallbacks
    def test_tls(self):
        """
        rediss:// verifies the server against the given CA.
        """
        self.server.stop()
        self.server = RedisServer(tls=True).start()
        self.addCleanup(self.server.stop)
        svc = yield self.service("n1")
        yield svc.registry.register("g1", "gate", {})
        yield svc.index.add_client("g1", "c1")
        got = []
        subscription = svc.bus.subscribe("all", lambda c, p: got.append(p))
        yield subscription.when_ready()
        yield svc.bus.publish("all", b"over tls")
        yield wait_until(lambda: got == [b"over tls"], 2, "message over TLS")
        # Without the CA the certificate is refused.
        url = f"rediss://127.0.0.1:{self.server.port}/0"
        untrusted = yield self.service("n2", url=url, connect=False)
        yield self.assertFailure(untrusted.when_connected(1.0), ClusterUnavailable)


# -- leases, fencing and the sweeper ---------------------------------------------------


class LeaseTests(RedisTestCase):
    @inlineCallbacks
    def populate(self, svc, gate, count, prefix):
        records = [
            ClientRecord(f"{prefix}{i}", f"u{i % 7}", [f"room{i % 5}", "all-rooms"], {"i": i})
            for i in range(count)
        ]
        yield svc.index.resync_gate(gate, records)
        return records

    @inlineCallbacks
    def expired(self, node):
        yield wait_until(
            lambda: self.server.command("EXISTS", f"{NS}:lease:{node}") == 0,
            5,
            f"lease of {node} gone",
        )

    @inlineCallbacks
    def test_fencing_and_declared_dead(self):
        """
        Writes under an expired lease are refused; once swept, the gate hears
        on_lease_lost and stays fenced.
        """
        gate = yield self.service("g1", lease=1.0, sweep=False)
        sweeper = yield self.service("s1", lease=1.0, sweep=False)
        yield gate.registry.register("g1", "gate", {})
        yield gate.index.add_client("g1", "c1")
        yield gate.index.bind_uid("g1", "c1", "u1")
        lost = []
        gate.add_listener(on_lease_lost=lost.append)
        gate.registry._heartbeat.stop()  # as if the gate process were paused
        yield self.expired("g1")
        for write in [
            gate.index.add_client("g1", "c2"),
            gate.index.join_group("g1", "c1", "room"),
            gate.index.bind_uid("g1", "c1", "u2"),
            gate.index.set_info("g1", "c1", {"a": 1}),
            gate.index.resync_gate("g1", [ClientRecord("c1")]),
        ]:
            failure = yield self.assertFailure(write, Fenced)
            self.assertEqual(failure.gate_id, "g1")
        yield self.clock_active(1.0)
        removed = yield sweeper.registry.sweep_dead_gates()
        self.assertEqual(removed, [SweptClient("c1", "g1", "u1", ())])
        yield gate.registry.renew()
        self.assertEqual(lost, ["g1"])
        self.assertEqual(gate.registry.registered(), [])
        yield self.assertFailure(gate.index.add_client("g1", "c1"), Fenced)
        self.assertEqual(self.keys_of("g1"), [])
        self.assertFalse((yield sweeper.index.is_online("c1")))
        self.assertEqual((yield sweeper.index.get_all_uids()), [])

    @inlineCallbacks
    def test_expired_but_not_swept_is_renewed(self):
        gate = yield self.service("g1", lease=1.0, sweep=False)
        yield gate.registry.register("g1", "gate", {})
        yield gate.index.add_client("g1", "c1")
        lost = []
        gate.add_listener(on_lease_lost=lost.append, on_data_lost=lambda: lost.append("data"))
        gate.registry._heartbeat.stop()
        yield self.expired("g1")
        yield self.assertFailure(gate.index.join_group("g1", "c1", "room"), Fenced)
        yield gate.registry.renew()
        self.assertEqual(lost, [])
        yield gate.index.join_group("g1", "c1", "room")
        self.assertEqual(gate.registry.registered(), ["g1"])

    @inlineCallbacks
    def test_concurrent_sweepers(self):
        """
        Two sweepers at once remove each client of a dead gate exactly once,
        in batches, and leave no key of that gate; a live gate's clients in
        the same groups and uids stay.
        """
        dead = yield self.service("dead", lease=1.0, sweep=False)
        live = yield self.service("live", lease=1.0, sweep=False)
        yield dead.registry.register("dead", "gate", {})
        yield live.registry.register("live", "gate", {})
        records = yield self.populate(dead, "dead", 1500, "d")
        yield self.populate(live, "live", 10, "l")
        yield dead.stopService()  # like kill -9: no unregister
        s1 = yield self.service("s1", lease=1.0, sweep=False, sweep_batch=400)
        s2 = yield self.service("s2", lease=1.0, sweep=False, sweep_batch=400)
        yield self.expired("dead")
        yield self.clock_active(1.0)
        r1, r2 = yield gatherResults(
            [s1.registry.sweep_dead_gates(), s2.registry.sweep_dead_gates()]
        )
        swept = r1 + r2
        self.assertEqual(len(swept), 1500)
        self.assertEqual(len({c.client_id for c in swept}), 1500)
        by_id = {c.client_id: c for c in swept}
        d8 = by_id["d8"]
        self.assertEqual((d8.client_id, d8.gate_id, d8.uid), ("d8", "dead", "u1"))
        self.assertEqual(sorted(d8.groups), ["all-rooms", "room3"])
        self.assertEqual(len(records), 1500)
        self.assertEqual(self.keys_of("dead"), [])
        self.assertEqual([k for k in self.server.keys(f"{NS}:client:*") if ":d" in k], [])
        index = s1.index
        self.assertEqual((yield index.get_all_client_count()), 10)
        self.assertEqual(
            sorted((yield index.get_client_ids_by_group("all-rooms"))),
            sorted(f"l{i}" for i in range(10)),
        )
        self.assertEqual(sorted((yield index.get_all_uids())), [f"u{i}" for i in range(7)])
        self.assertEqual(sorted((yield index.get_client_ids_by_uid("u1"))), ["l1", "l8"])
        self.assertEqual((yield s1.registry.sweep_dead_gates()), [])

    @inlineCallbacks
    def test_periodic_sweeper_cleans_within_two_leases(self):
        """
        TARGETS R1, scaled down: a gate killed with 1000 clients is gone from
        every query within 2 x lease.
        """
        lease = 1.0
        dead = yield self.service("dead", lease=lease, sweep=False)
        yield dead.registry.register("dead", "gate", {})
        yield self.populate(dead, "dead", 1000, "d")
        sweeper = yield self.service("s1", lease=lease)
        swept = []
        sweeper.add_listener(on_swept=swept.extend)
        yield self.clock_active(lease)
        yield dead.stopService()
        start = time.monotonic()
        yield wait_until(lambda: len(swept) == 1000, 2 * lease + 1, "swept")
        elapsed = time.monotonic() - start
        self.assertLessEqual(elapsed, 2 * lease + 0.5)
        self.assertEqual((yield sweeper.index.get_all_client_count()), 0)
        self.assertEqual(self.keys_of("dead"), [])
        print(f"\n    1000 clients of a killed gate swept {elapsed:.2f} s after its last heartbeat")

    @inlineCallbacks
    def test_live_nodes_and_unregister(self):
        backend = yield self.service("b1", lease=1.0, sweep=False)
        other = yield self.service("b2", lease=1.0, sweep=False)
        gate = yield self.service("g1", lease=1.0, sweep=False)
        yield backend.registry.register("b1", "backend", {"amp": "tcp:host=127.0.0.1:port=7000"})
        yield other.registry.register("b2", "backend", {"amp": "tcp:host=127.0.0.1:port=7001"})
        yield gate.registry.register("g1", "gate", {})
        nodes = yield gate.registry.live_nodes("backend")
        self.assertEqual(
            nodes,
            {
                "b1": {"amp": "tcp:host=127.0.0.1:port=7000"},
                "b2": {"amp": "tcp:host=127.0.0.1:port=7001"},
            },
        )
        self.assertEqual(list((yield gate.registry.live_nodes("gate"))), ["g1"])
        yield other.registry.unregister("b2")
        self.assertEqual(list((yield gate.registry.live_nodes("backend"))), ["b1"])
        yield backend.stopService()
        yield self.expired("b1")
        self.assertEqual((yield gate.registry.live_nodes("backend")), {})
        self.assertEqual(self.server.command("HEXISTS", f"{NS}:nodes", "b1"), 1)
        yield self.clock_active(1.0)
        self.assertEqual((yield gate.registry.sweep_dead_gates()), [])
        self.assertEqual(self.server.command("HEXISTS", f"{NS}:nodes", "b1"), 0)
        self.assertEqual(self.server.command("SCARD", f"{NS}:sweeping"), 0)
        yield self.assertFailure(gate.registry.register("x", "cook", {}), ValueError)

    @inlineCallbacks
    def test_unregister_gate_with_clients_leaves_them_to_sweepers(self):
        gate = yield self.service("g1", sweep=False)
        yield gate.registry.register("g1", "gate", {})
        yield gate.index.add_client("g1", "c1")
        yield gate.registry.unregister("g1")
        removed = yield gate.registry.sweep_dead_gates()
        self.assertEqual([c.client_id for c in removed], ["c1"])
        self.assertEqual(self.keys_of("g1"), [])
