"""
Fault scenarios of TARGETS.md (R1-R5, R9, R10, graceful shutdown and
backend restarts) against real processes: gates, backends and a
redis-server of the test's own on free loopback ports, the C load
generator ``wsload`` for thousands of clients, and ContractClients
(``websockets``) that call IFabric through ContractApp.

Each scenario prints what it measured as ``FAULT-TIMING`` (and
``FAULT-FIGURE``) lines, bounds every wait, and stops every process it
started, by pid, even when it fails. The whole module takes about three
minutes on the 2-core development machine.

The churn scenario runs 10,000 connect/close cycles in CI
(``WSFABRIC_CHURN_CYCLES`` changes that); R9's full 100,000 cycles run in
``test_r9_connection_churn_100k_slow`` when ``WSFABRIC_SLOW_TESTS=1``
(about 2.5 minutes more).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

from twisted.trial.unittest import SkipTest

from tests.integration.faultkit import (
    NS,
    FaultTestCase,
    call_all,
    client_keys,
    eventually,
    failing_call,
    gate_residue,
    note,
    numsub,
    raise_nofile,
    registered_id,
    report,
    scenario,
    wait_exit,
    wait_log,
    wait_log_since,
    with_params,
)
from tests.integration.support import CONTRACT_APP, PROJECT, ContractClient
from wsfabric.testing.processes import BackendNode, Cluster


class GateCrashTests(FaultTestCase):
    """
    R1: a gate killed with SIGKILL; the other nodes sweep its clients.
    """

    async def _kill_gate(self, lease: float | None, label: str) -> float:
        """
        Kill a gate holding 1,000 wsload clients (bound to uids and members
        of groups through ContractApp's on_connect) and four ContractClients;
        wait until no query and no Redis key reports any of them.

        :return: seconds from the kill until everything was clean.
        """
        cluster = self.cluster(gates=2, backends=2, lease=lease)
        victim, survivor = cluster.gates
        gate_id = await registered_id(victim)
        # The survivor's clients: they stay members of the shared group and
        # of uid u1, which must keep exactly them.
        observers = [await self.client(survivor.ws_url) for _ in range(3)]
        for observer in observers:
            await observer.call("join_group", observer.client_id, "r1-shared")
        await observers[0].call("bind_uid", observers[0].client_id, "r1-u1")
        doomed = []
        for n in range(4):
            client = await self.client(victim.ws_url, bind=f"r1-py{n}", join="r1-shared,r1-pyg")
            await client.call("set_info", client.client_id, {"n": n})
            doomed.append(client)
        base = victim.ws_url
        loads = [
            self.wsload("idle", [url], ["-c", "250", "-k", "25", "--hold", "120"],
                        name=f"wsload{n}")
            for n, url in enumerate([
                with_params(base, bind="r1-u1", join="r1-g1,r1-shared"),
                with_params(base, join="r1-g2"),
                with_params(base, bind="r1-u2"),
                base,
            ])
        ]
        for load in loads:
            await load.wait_event("all_open", 60)
        ask = observers[0]

        async def loaded() -> bool:
            counts = await asyncio.gather(
                ask.call("get_all_client_count"),
                ask.call("get_client_count_by_group", "r1-g1"),
                ask.call("get_client_count_by_group", "r1-g2"),
                ask.call("get_client_ids_by_uid", "r1-u2"),
            )
            return counts[0] == 1007 and counts[1:3] == [250, 250] and len(counts[3]) == 250

        await eventually(loaded, 30, "1,000 wsload clients set up")
        doomed_ids = [c.client_id for c in doomed]
        observer_ids = sorted(o.client_id for o in observers)

        async def clean() -> bool:
            # Every query, through clients of the surviving gate (served by
            # either backend), and Redis itself.
            results = await asyncio.gather(
                observers[0].call("get_all_client_count"),
                observers[1].call("get_client_ids_by_group", "r1-shared"),
                observers[2].call("get_client_ids_by_group", "r1-g1"),
                observers[0].call("get_client_ids_by_group", "r1-g2"),
                observers[1].call("get_client_ids_by_group", "r1-pyg"),
                observers[2].call("get_client_ids_by_uid", "r1-u1"),
                observers[0].call("is_uid_online", "r1-u2"),
                observers[1].call("is_uid_online", "r1-py0"),
                observers[2].call("get_all_groups"),
                observers[0].call("get_all_uids"),
                *(observers[n % 3].call("is_online", cid) for n, cid in enumerate(doomed_ids)),
                *(observers[n % 3].call("get_info", cid) for n, cid in enumerate(doomed_ids)),
                *(observers[n % 3].call("get_uid_by_client_id", cid)
                  for n, cid in enumerate(doomed_ids)),
            )
            count, shared, g1, g2, pyg, u1, u2, py0, groups, uids = results[:10]
            rest = results[10:]
            return (
                count == 3
                and sorted(shared) == observer_ids
                and g1 == [] and g2 == [] and pyg == []
                and u1 == [observers[0].client_id]
                and not u2 and not py0
                and sorted(groups) == ["r1-shared"]
                and uids == ["r1-u1"]
                and not any(rest)
                and gate_residue(cluster.redis, gate_id) == {}
            )

        self.assertFalse(await clean())
        started = time.monotonic()
        victim.kill()
        await eventually(clean, 30, "the dead gate's clients swept")
        elapsed = time.monotonic() - started
        effective = lease if lease is not None else 5.0
        # TARGETS.md says "<= 15 s (2 x lease)"; 2 x the 5 s default is 10 s,
        # the stricter of the two, and what is asserted.
        report("R1", f"kill -9 of a gate with 1,004 clients until no query or key reports "
                     f"them, lease {effective:g} s{label}", elapsed,
               f"<= 2 x lease = {2 * effective:g} s")
        self.assertLessEqual(elapsed, 2 * effective)
        # The survivor's clients were untouched.
        self.assertEqual(sorted(await observers[0].call("get_client_ids_by_group", "r1-shared")),
                         observer_ids)

        # The backends ran on_close for the dead gate's clients, which that
        # gate can no longer send: once its lease is gone, each backend
        # closes the clients of that gate it knows.
        async def closed_on_backends() -> bool:
            opened: set[str] = set()
            closed: set[str] = set()
            for events in await asyncio.gather(*(o.call("events") for o in observers)):
                for event in events:
                    if event[0] == "connect" and event[1].startswith(gate_id + "-"):
                        opened.add(event[1])
                    elif event[0] == "close" and event[1].startswith(gate_id + "-"):
                        closed.add(event[1])
            return bool(opened) and opened <= closed

        await eventually(closed_on_backends, 3 * effective + 5, "on_close of the dead gate's "
                         "clients on the backends")
        report("R1", f"kill -9 of a gate until the backends ran on_close for its clients{label}",
               time.monotonic() - started, f"about 2 x lease = {2 * effective:g} s")
        return elapsed

    @scenario(timeout=90)
    async def test_r1_kill_gate_default_lease(self) -> None:
        """
        R1 with the default 5 s lease: within 2 x lease of a gate's SIGKILL,
        no query on any node reports its 1,004 clients (uids, groups, info,
        counts), and Redis holds no key, registry entry or membership of
        that gate.
        """
        await self._kill_gate(None, " (default)")

    @scenario(timeout=60)
    async def test_r1_kill_gate_short_lease(self) -> None:
        """
        R1 with --lease 2: the same within 4 s.
        """
        await self._kill_gate(2.0, "")


class GatePauseTests(FaultTestCase):
    """
    R2: a gate frozen (SIGSTOP) past its lease is swept by the others, and
    when it runs again (SIGCONT) it must not bring its old entries back.
    """

    @scenario(timeout=90)
    async def test_r2_paused_gate_never_resurrects(self) -> None:
        """
        A gate paused past its 2 s lease is declared dead and its 203
        clients are swept; after SIGCONT no query or key ever reports them
        again, the gate closes them with 1012 and carries on under a new
        id, and they reconnect and work.
        """
        cluster = self.cluster(gates=2, backends=1, lease=2.0)
        victim, survivor = cluster.gates
        old_id = await registered_id(victim)
        observer = await self.client(survivor.ws_url, join="r2-g")
        victims = [
            await self.client(victim.ws_url, bind=f"r2-u{n}", join="r2-g") for n in range(3)
        ]
        self.wsload("idle", [with_params(victim.ws_url, bind="r2-wu", join="r2-g")],
                    ["-c", "200", "--hold", "60"])

        async def loaded() -> bool:
            return await observer.call("get_client_count_by_group", "r2-g") == 204

        await eventually(loaded, 30, "204 members of r2-g")
        old_ids = [v.client_id for v in victims]

        async def swept() -> bool:
            count, members, uid = await asyncio.gather(
                observer.call("get_all_client_count"),
                observer.call("get_client_ids_by_group", "r2-g"),
                observer.call("is_uid_online", "r2-wu"),
            )
            return (count == 1 and members == [observer.client_id] and not uid
                    and gate_residue(cluster.redis, old_id) == {})

        started = time.monotonic()
        victim.pause()
        swept_after = await eventually(swept, 20, "the paused gate swept")
        report("R2", "SIGSTOP of a gate with 203 clients until swept, lease 2 s", swept_after,
               "<= 4 s")
        self.assertLessEqual(time.monotonic() - started, 4.0)

        # Resume it, and watch Redis and the queries closely meanwhile: a
        # stale entry that came back even for a moment is a failure.
        stale: list[object] = []
        watching = True

        async def watch() -> None:
            while watching:
                left = gate_residue(cluster.redis, old_id)
                if left:
                    stale.append(left)
                online = await asyncio.gather(*(observer.call("is_online", c) for c in old_ids))
                if any(online):
                    stale.append(("is_online", online))
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch())
        mark = len(victim.log())
        resumed = time.monotonic()
        victim.resume()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(v._reader for v in victims)), 10
            )
            closed_after = time.monotonic() - resumed
            self.assertEqual([v.close_code for v in victims], [1012] * 3)
            report("R2", "SIGCONT until its clients are closed with 1012", closed_after)
            reincarnated = await wait_log_since(
                victim, mark, r"closed its (\d+) clients and continues as gate ([0-9a-f]+)", 5
            )
            self.assertEqual(reincarnated.group(1), "203")
            new_id = reincarnated.group(2)
            self.assertNotEqual(new_id, old_id)
            # They reconnect to the same gate, now under its new id, and work.
            back = [await self.client(victim.ws_url, bind=f"r2-u{n}") for n in range(3)]
            for client in back:
                self.assertTrue(client.client_id.startswith(new_id + "-"), client.client_id)
                await client.call("join_group", client.client_id, "r2-g")
            await observer.call("send_to_group", "r2-g", "after the pause")
            for client in [observer, *back]:
                self.assertEqual(await client.next_push(), "after the pause")
            await asyncio.sleep(2.0)  # a whole lease more of watching
        finally:
            watching = False
            await watcher
        self.assertEqual(stale, [])
        self.assertEqual(
            sorted(await observer.call("get_client_ids_by_group", "r2-g")),
            sorted([observer.client_id, *(c.client_id for c in back)]),
        )
        self.assertEqual(await observer.call("get_all_client_count"), 4)
        self.assertNotIn("Traceback", victim.log()[mark:])
        # The application heard on_close of each closed client (one backend).
        closes = {e[1] for e in await observer.call("events") if e[0] == "close"}
        self.assertEqual(set(old_ids) - closes, set())


class BackendCrashTests(FaultTestCase):
    """
    R3: a backend killed with SIGKILL while clients are connected.
    """

    @scenario(timeout=90)
    async def test_r3_kill_backend(self) -> None:
        """
        After a backend's SIGKILL every client stays connected and its next
        message is served by the other backend within 5 s; on_connect calls
        that were pending on the dead backend fail, are logged by the gate,
        and the clients are set up on the other backend; nothing hangs.
        """
        cluster = self.cluster(gates=2, backends=2, lease=2.0)
        pids = {b.pid: b for b in cluster.backends}
        ids = {b.pid: await registered_id(b) for b in cluster.backends}
        clients = [await self.client(cluster.gates[n % 2].ws_url) for n in range(12)]
        served = await call_all(clients, "pid")
        self.assertEqual(set(served), set(pids), "both backends serve clients")
        # Clients whose on_connect takes 3 s: some are pending on each backend.
        marks = {pid: len(b.log()) for pid, b in pids.items()}
        pending = [
            asyncio.ensure_future(
                ContractClient.connect(with_params(cluster.gates[n % 2].ws_url, sleep="3"))
            )
            for n in range(8)
        ]

        def sleeping(pid: int) -> int:
            return pids[pid].log()[marks[pid]:].count("sleeps 3 s")

        await eventually(lambda: sum(sleeping(p) for p in pids) == 8, 10, "8 on_connects running")
        victim_pid = max(pids, key=sleeping)
        survivor_pid = next(p for p in pids if p != victim_pid)
        victim = pids[victim_pid]
        gate_marks = [len(g.log()) for g in cluster.gates]
        started = time.monotonic()
        victim.kill()

        # Every client: still connected, and served (by the survivor) within
        # 5 s. A message sent in the instant the gate was still learning of
        # the loss may be lost with the backend: ask again after a second.
        async def serve(client: ContractClient) -> float:
            deadline = started + 10
            while time.monotonic() < deadline:
                try:
                    pid = await client.call("pid", timeout=1.0)
                except TimeoutError:
                    continue
                self.assertEqual(pid, survivor_pid)
                return time.monotonic() - started
            raise AssertionError(f"{client.client_id} not served after the backend died")

        times = await asyncio.gather(*(serve(c) for c in clients))
        report("R3", "kill -9 of a backend until all 12 clients are served by the other",
               max(times), "<= 5 s")
        self.assertLessEqual(max(times), 5.0)
        self.assertEqual([c.close_code for c in clients], [None] * 12)
        # The clients whose on_connect was running on the dead backend: it
        # ran again on the survivor, and they work.
        late = await asyncio.wait_for(asyncio.gather(*pending), 15)
        self._clients.extend(late)
        setup_after = time.monotonic() - started
        report("R3", "kill -9 until the 8 clients connecting meanwhile are set up", setup_after)
        self.assertEqual(await call_all(late, "pid"), [survivor_pid] * 8)
        lost = sleeping(victim_pid)
        logged = "".join(g.log()[m:] for g, m in zip(cluster.gates, gate_marks, strict=True))
        self.assertIn(f"backend {ids[victim_pid]} lost", logged)
        self.assertEqual(
            len(re.findall(r"on_connect of client \S+ failed on backend \S+", logged)), lost,
            "each pending on_connect lost with the backend is logged",
        )
        self.assertNotIn("Unhandled error", logged)
        # The registry forgets the dead backend; the gates stop dialling it.
        for gate in cluster.gates:
            await wait_log(gate, f"backend {ids[victim_pid]} left the cluster", 10)
        note("R3", f"{lost} on_connect calls were pending on the killed backend")


class RedisRestartTests(FaultTestCase):
    """
    R4: Redis restarted empty (its data lost).
    """

    @scenario(timeout=90)
    async def test_r4_redis_restarts_empty(self) -> None:
        """
        After Redis restarts empty, with the default settings, the gates
        reconnect, resubscribe every channel and rewrite their 406 clients'
        entries: PUBSUB NUMSUB, every query and group fan-out equal the
        ground truth again within 15 s, and each gate counts the gap.
        """
        cluster = self.cluster(gates=2, backends=1)
        redis = cluster.redis
        clients = []
        for n in range(6):
            groups = "r4-g,r4-h" if n < 3 else "r4-g"
            client = await self.client(cluster.gates[n % 2].ws_url, bind=f"r4-u{n}", join=groups)
            await client.call("set_info", client.client_id, {"n": n})
            clients.append(client)
        for n, gate in enumerate(cluster.gates):
            self.wsload("idle", [with_params(gate.ws_url, bind="r4-wu", join="r4-w")],
                        ["-c", "200", "--hold", "120"], name=f"wsload{n}")
        ask = clients[0]
        ids = [c.client_id for c in clients]
        node_ids = [await registered_id(p) for p in [*cluster.gates, *cluster.backends]]
        wanted_subs = {"all": 2, "group:r4-g": 2, "group:r4-h": 2, "group:r4-w": 2,
                       "uid:r4-wu": 2, **{f"uid:r4-u{n}": 1 for n in range(6)}}

        def subscribed() -> bool:
            probes = [redis.numsub(f"{NS}:probe:{node}") for node in node_ids]
            return numsub(redis, list(wanted_subs)) == wanted_subs and probes == [1, 1, 1]

        async def indexed() -> bool:
            results = await asyncio.gather(
                ask.call("get_all_client_count"),
                ask.call("get_client_ids_by_group", "r4-g"),
                ask.call("get_client_ids_by_group", "r4-h"),
                ask.call("get_client_count_by_group", "r4-w"),
                ask.call("get_client_ids_by_uid", "r4-wu"),
                ask.call("get_all_groups"),
                ask.call("get_all_uids"),
                ask.call("get_uid_count_by_group", "r4-g"),
                *(ask.call("get_client_ids_by_uid", f"r4-u{n}") for n in range(6)),
                *(ask.call("get_info", cid) for cid in ids),
            )
            count, g, h, w, wu, groups, uids, g_uids = results[:8]
            by_uid, infos = results[8:14], results[14:]
            return (
                count == 406 and sorted(g) == sorted(ids) and sorted(h) == sorted(ids[:3])
                and w == 400 and len(wu) == 400
                and sorted(groups) == ["r4-g", "r4-h", "r4-w"]
                and sorted(uids) == sorted([f"r4-u{n}" for n in range(6)] + ["r4-wu"])
                and g_uids == 6
                and by_uid == [[cid] for cid in ids]
                and infos == [{"n": n} for n in range(6)]
            )

        attempt = 0

        async def fan_out_whole() -> bool:
            nonlocal attempt
            attempt += 1
            token = f"r4-fanout-{attempt}"
            await ask.call("send_to_group", "r4-g", token)

            async def got(client: ContractClient) -> bool:
                try:
                    while True:
                        if await client.next_push(timeout=1.0) == token:
                            return True
                except TimeoutError:
                    return False

            return all(await asyncio.gather(*(got(c) for c in clients)))

        async def whole() -> bool:
            return subscribed() and await indexed() and await fan_out_whole()

        await eventually(whole, 30, "the cluster whole before the fault")
        marks = [len(g.log()) for g in cluster.gates]
        started = time.monotonic()
        redis.restart_empty()
        self.assertEqual(client_keys(redis), [])
        await eventually(whole, 30, "the cluster whole after Redis restarted empty")
        elapsed = time.monotonic() - started
        report("R4", "Redis restarted empty (at once) until NUMSUB, queries and fan-out are "
                     "whole (406 clients, 2 gates, default settings)", elapsed, "<= 15 s")
        self.assertLessEqual(elapsed, 15.0)
        for gate, mark in zip(cluster.gates, marks, strict=True):
            logged = gate.log()[mark:]
            self.assertIn("Redis pub/sub gap #1", logged)
            self.assertIn("Redis lost its data", logged)

        # A restart that keeps Redis away for 3 s: the reconnect backoff has
        # grown meanwhile (it is capped at 2 s).
        redis.kill()
        await asyncio.sleep(3.0)
        started = time.monotonic()
        redis.start()
        await eventually(whole, 30, "the cluster whole after Redis was down 3 s")
        elapsed = time.monotonic() - started
        report("R4", "Redis down 3 s then back empty: from its start until whole again",
               elapsed, "<= 15 s")
        self.assertLessEqual(elapsed, 15.0)
        for gate, mark in zip(cluster.gates, marks, strict=True):
            self.assertIn("Redis pub/sub gap #2", gate.log()[mark:])
        self.assertEqual([c.close_code for c in clients], [None] * 6)


class RedisHangTests(FaultTestCase):
    """
    R5: Redis hangs (SIGSTOP): its connections stay open and nothing is
    answered.
    """

    @scenario(timeout=90)
    async def test_r5_redis_hangs(self) -> None:
        """
        With Redis frozen for 7 s (longer than the default 5 s lease): every
        node notices within 5 s; IFabric calls fail with ClusterUnavailable
        within about 2 s (at once once the hang is known); a group send
        that failed is never delivered after SIGCONT; no gate is declared
        dead, no client is closed, and the cluster works again after.
        """
        cluster = self.cluster(gates=2, backends=1)
        redis = cluster.redis
        a = await self.client(cluster.gates[0].ws_url, join="r5-g")
        b = await self.client(cluster.gates[1].ws_url, join="r5-g")
        sender = await self.client(cluster.gates[0].ws_url)
        attempt = 0

        async def delivered() -> bool:
            nonlocal attempt
            attempt += 1
            token = f"r5-ok-{attempt}"
            await sender.call("send_to_group", "r5-g", token, timeout=3)
            for member in (a, b):
                try:
                    while await member.next_push(timeout=1.0) != token:
                        pass
                except TimeoutError:
                    return False
            return True

        await eventually(delivered, 10, "group send before the hang")
        nodes = [*cluster.gates, *cluster.backends]
        marks = [len(p.log()) for p in nodes]
        started = time.monotonic()
        redis.pause()
        try:
            # One write (a publish) and one read, sent to the hung Redis.
            (send_error, send_took), (read_error, read_took) = await asyncio.gather(
                failing_call(sender, "send_to_group", "r5-g", "during the hang 1"),
                failing_call(sender, "is_online", a.client_id),
            )
            self.assertEqual((send_error, read_error), ("ClusterUnavailable",) * 2)
            report("R5", "hung Redis: send_to_group fails with ClusterUnavailable after",
                   send_took, "~2 s")
            report("R5", "hung Redis: is_online fails with ClusterUnavailable after",
                   read_took, "~2 s")
            self.assertLessEqual(max(send_took, read_took), 2.5)
            detected = []
            for process, mark in zip(nodes, marks, strict=True):
                await wait_log_since(process, mark, "Redis liveness probe failed|Redis "
                                     "(subscriber|command) connection lost", 6)
                detected.append(time.monotonic() - started)
            report("R5", "hung Redis noticed by every node (gates and backend) within",
                   max(detected), "<= 5 s")
            self.assertLessEqual(max(detected), 5.0)
            # Known down: calls fail at once, index writes through the gate too.
            later = await asyncio.gather(
                failing_call(sender, "send_to_group", "r5-g", "during the hang 2"),
                failing_call(sender, "send_to_all", "during the hang 3"),
                failing_call(sender, "join_group", sender.client_id, "r5-x"),
                failing_call(sender, "get_client_count_by_group", "r5-g"),
            )
            self.assertEqual({error for error, _ in later}, {"ClusterUnavailable"})
            report("R5", "hung Redis, once noticed: calls fail within",
                   max(took for _, took in later), "<= 2 s")
            self.assertLessEqual(max(took for _, took in later), 2.5)
            await asyncio.sleep(max(0.0, 7.0 - (time.monotonic() - started)))
        finally:
            redis.resume()
        resumed = time.monotonic()
        recovered = await eventually(delivered, 20, "group send after SIGCONT")
        report("R5", "SIGCONT until a group send is delivered again", recovered)
        # Whatever Redis still held from the hang must never arrive.
        await asyncio.sleep(2.0)
        late = []
        for member in (a, b):
            while not member.pushed.empty():
                late.append(member.pushed.get_nowait())
        self.assertEqual([m for m in late if "during" in str(m)], [])
        self.assertEqual([c.close_code for c in (a, b, sender)], [None] * 3)
        for process, mark in zip(nodes, marks, strict=True):
            self.assertNotRegex(process.log()[mark:], r"was declared dead|is dead \(its lease")
        self.assertEqual(await sender.call("get_client_count_by_group", "r5-g"), 2)
        self.assertLess(time.monotonic() - resumed, 30)
        # The gate keeps its own state when an index write fails and later
        # rewrites the index from it: a join_group that failed during the
        # hang may still take effect afterwards (reported, not asserted).
        async def joined() -> bool:
            return await sender.call("get_client_ids_by_group", "r5-x") == [sender.client_id]

        try:
            took = await eventually(joined, 8, "the failed join in effect")
            outcome = f"yes, {took:.1f} s after recovery"
        except AssertionError:
            outcome = "no"
        note("R5", f"join_group that failed with ClusterUnavailable during the hang took "
                   f"effect later: {outcome}")


class GracefulShutdownTests(FaultTestCase):
    """
    SIGTERM of a gate holding 10,000 clients (reliability A3).
    """

    @scenario(timeout=150)
    async def test_sigterm_gate_with_10000_clients(self) -> None:
        """
        A gate holding 10,003 clients, on SIGTERM, stops accepting, closes
        every client with 1001, removes all its index entries and its
        registration, and exits with status 0 once the drain window (5 s
        by default: the closes are spread over it so that a fleet restart
        does not stampede the other gates) has passed, with 2.5 s to spare.
        """
        # The gate inherits this limit: 10,000 sockets need more than 1,024.
        limit = raise_nofile(65536)
        if limit < 10_500:
            raise SkipTest(f"RLIMIT_NOFILE is {limit}; 10,000 clients need more")
        cluster = self.cluster(gates=2, backends=2)
        victim, survivor = cluster.gates
        gate_id = await registered_id(victim)
        observer = await self.client(survivor.ws_url)
        witnesses = [await self.client(victim.ws_url, join="r6-g") for _ in range(3)]
        rss_before = victim.rss()
        load = self.wsload("idle", [with_params(victim.ws_url, join="r6-g")],
                           ["-c", "10000", "-k", "50", "--hold", "25", "--open-timeout", "90"])
        await load.wait_event("all_open", 100)

        async def loaded() -> bool:
            return await observer.call("get_client_count_by_group", "r6-g") == 10_003

        await eventually(loaded, 30, "10,003 members of r6-g")
        rss_after = victim.rss()
        note("SIGTERM", f"gate RSS with 10,003 idle clients: +{(rss_after - rss_before) / 1e6:.1f}"
                        f" MB ({(rss_after - rss_before) / 10_003 / 1024:.1f} KiB per client)")
        mark = len(victim.log())
        started = time.monotonic()
        victim.signal(signal.SIGTERM)
        # A client arriving now is refused.
        await asyncio.sleep(0.3)
        if victim.poll() is None:
            with self.assertRaises(OSError):
                await ContractClient.connect(victim.ws_url, open_timeout=2)
        status, _ = await wait_exit(victim, 30)
        took = time.monotonic() - started
        report("SIGTERM", "gate with 10,003 clients: SIGTERM until exit", took,
               "<= 7.5 s (5 s drain window + 2.5 s)")
        self.assertEqual(status, 0)
        self.assertLessEqual(took, 7.5)
        # Clean the moment the process is gone.
        self.assertEqual(gate_residue(cluster.redis, gate_id), {})
        self.assertEqual(await observer.call("get_all_client_count"), 1)
        self.assertEqual(await observer.call("get_client_count_by_group", "r6-g"), 0)
        await asyncio.wait_for(asyncio.gather(*(w._reader for w in witnesses)), 5)
        self.assertEqual([w.close_code for w in witnesses], [1001] * 3)
        logged = victim.log()[mark:]
        self.assertIn("closing 10003 clients", logged)
        # Their close events reached the backends (on_close), none was lost.
        self.assertNotIn("client events sent to it are lost", logged)
        self.assertNotIn("could not remove", logged)
        # Every wsload connection got a close frame (not a bare TCP close).
        result = await load.result(60)
        note("SIGTERM", f"wsload: {result['conns_opened']} opened in "
                        f"{result['handshake_total_s']:.1f} s, errors {result['error_detail']}")
        self.assertEqual(result["error_detail"].get("server_close"), 10_000)
        self.assertEqual(result["error_detail"].get("eof", 0), 0)


class BackendRestartTests(FaultTestCase):
    """
    Restarting backends (SIGTERM, then a new process, as for new application
    code) while clients stay connected to the gates.
    """

    def new_backend(self, cluster: Cluster, version: str) -> BackendNode:
        """
        Start one more backend running "version" ``version`` of the
        application (stopped with the cluster).
        """
        backend = BackendNode(
            CONTRACT_APP, cluster.redis.url, cluster.secret, cluster.backend_options,
            cwd=PROJECT, env={"CONTRACT_APP_VERSION": version},
            name=f"backend{len(cluster.backends)}", log_dir=cluster.log_dir,
        )
        cluster.backends.append(backend)
        backend.start()
        return backend

    async def restart(self, cluster: Cluster, old: BackendNode, version: str) -> BackendNode:
        """
        SIGTERM ``old``, wait for it to exit (status 0), start its successor.
        """
        started = time.monotonic()
        old.signal(signal.SIGTERM)
        status, _ = await wait_exit(old, 15)
        report("restart", "backend SIGTERM until exit", time.monotonic() - started, "")
        self.assertEqual(status, 0)
        return await asyncio.to_thread(self.new_backend, cluster, version)

    @scenario(timeout=90)
    async def test_restart_the_only_backend(self) -> None:
        """
        With one backend, restarting it with new code keeps every client
        connected: messages sent while no backend runs wait at the gates
        and are served by the new backend, and so is everything after.
        """
        cluster = self.cluster(gates=2, backends=1, lease=2.0)
        clients = [await self.client(cluster.gates[n % 2].ws_url, join="r7-a") for n in range(6)]
        self.assertEqual(await call_all(clients, "version"), ["1"] * 6)
        started = time.monotonic()
        old = cluster.backends[0]
        old.signal(signal.SIGTERM)
        await wait_exit(old, 15)
        # Asked while there is no backend at all: answered by the next one.
        waiting = asyncio.ensure_future(call_all(clients, "version", timeout=30))
        await asyncio.sleep(0.5)
        self.assertFalse(waiting.done())
        await asyncio.to_thread(self.new_backend, cluster, "2")
        self.assertEqual(await waiting, ["2"] * 6)
        report("restart", "one backend: SIGTERM until calls made meanwhile are answered by "
                          "its successor", time.monotonic() - started)
        self.assertEqual([c.close_code for c in clients], [None] * 6)
        await clients[0].call("send_to_group", "r7-a", "after the restart")
        for client in clients:
            self.assertEqual(await client.next_push(), "after the restart")

    @scenario(timeout=120)
    async def test_rolling_restart_of_two_backends(self) -> None:
        """
        With two backends restarted one after the other (new code), every
        client stays connected and every call made throughout is answered;
        afterwards all are served by the new code.
        """
        cluster = self.cluster(gates=2, backends=2, lease=2.0)
        clients = [await self.client(cluster.gates[n % 2].ws_url) for n in range(8)]
        answered: list[str] = []
        failed: list[str] = []
        running = True

        async def keep_calling(client: ContractClient) -> None:
            while running:
                try:
                    answered.append(await client.call("version", timeout=10))
                except Exception as e:
                    failed.append(f"{client.client_id}: {e!r}")
                await asyncio.sleep(0.05)

        callers = [asyncio.ensure_future(keep_calling(c)) for c in clients]
        try:
            await asyncio.sleep(0.5)
            first, second = list(cluster.backends)
            await self.restart(cluster, first, "2")
            await asyncio.to_thread(cluster.wait_linked, 15)
            await asyncio.sleep(0.5)
            await self.restart(cluster, second, "2")
            await asyncio.to_thread(cluster.wait_linked, 15)
            await asyncio.sleep(0.5)
        finally:
            running = False
            await asyncio.gather(*callers)
        note("restart", f"rolling restart of 2 backends: {len(answered)} calls answered, "
                        f"{len(failed)} failed")
        self.assertEqual(failed, [])
        self.assertEqual([c.close_code for c in clients], [None] * 8)
        self.assertEqual(await call_all(clients, "version"), ["2"] * 8)


#: Connect/close cycles of the CI churn scenario (R9's target is 100,000:
#: see test_r9_connection_churn_100k_slow).
CHURN_CYCLES = int(os.environ.get("WSFABRIC_CHURN_CYCLES", "10000"))
SLOW = os.environ.get("WSFABRIC_SLOW_TESTS") == "1"


class ChurnTests(FaultTestCase):
    """
    R9: connection churn leaves no index entry and no memory behind.
    """

    async def churn(self, cluster: Cluster, cycles: int, concurrency: int = 100) -> dict:
        """
        Run ``cycles`` connect + handshake + on_connect (bind a uid, join a
        group, send a greeting) + close cycles spread over every gate,
        ``concurrency`` at a time, in wsload runs of at most 5 s. Each cycle
        waits for the greeting, so on_connect is part of it (a client that
        left before its on_connect ran would let a backlog grow, which
        measures the backlog, not a leak).

        :return: the cycles done, failures and the rate.
        """
        urls = [with_params(g.ws_url, bind="r9-u", join="r9-g", hello="1")
                for g in cluster.gates]
        done = failures = 0
        started = time.monotonic()
        while done < cycles:
            # One wsload per gate, sharing what is left to do.
            share = -(-(cycles - done) // len(urls))
            loads = [
                self.wsload("connrate", [url], [
                    "-c", str(concurrency // len(urls)), "-d", "5", "--warmup", "0",
                    "--quiet", "--wait-first", "--max-cycles", str(share),
                ], name=f"wsload-churn-{done}-{n}")
                for n, url in enumerate(urls)
            ]
            for load in loads:
                result = await load.result(30)
                self.assertTrue(result["ok"], result)
                done += result["cycles_total"]
                failures += result["failures"]
        took = time.monotonic() - started
        return {"cycles": done, "failures": failures, "rate": done / took, "seconds": took}

    async def no_client_left(self, cluster: Cluster) -> None:
        """
        Wait until Redis records no client, uid or group (bounded).
        """
        await eventually(lambda: client_keys(cluster.redis) == [], 15,
                         "no index entry left after the churn")

    async def run_churn(self, cycles: int) -> None:
        cluster = self.cluster(gates=2, backends=1)
        await registered_id(cluster.gates[1])
        # Warm up: allocator pools, caches and buffers reach their working size.
        warm = await self.churn(cluster, 3000)
        await self.no_client_left(cluster)
        await asyncio.sleep(1.0)
        baseline = [g.rss() for g in cluster.gates]
        backend_baseline = cluster.backends[0].rss()
        run = await self.churn(cluster, cycles)
        await self.no_client_left(cluster)
        await asyncio.sleep(1.0)
        after = [g.rss() for g in cluster.gates]
        growth = [(a - b) / 2**20 for a, b in zip(after, baseline, strict=True)]
        backend_growth = (cluster.backends[0].rss() - backend_baseline) / 2**20
        report("R9", f"{run['cycles']:,} connect/close cycles over 2 gates "
                     f"({run['rate']:.0f} cycles/s, {run['failures']} failed; after "
                     f"{warm['cycles']:,} warm-up cycles)", run["seconds"])
        note("R9", f"gate RSS growth after {run['cycles']:,} cycles: "
                   f"{', '.join(f'{g:+.1f} MiB' for g in growth)} (target <= +10 MiB); "
                   f"backend {backend_growth:+.1f} MiB; baseline "
                   f"{', '.join(f'{b / 2**20:.1f} MiB' for b in baseline)}")
        self.assertGreaterEqual(run["cycles"], cycles)
        self.assertEqual(run["failures"], 0)
        self.assertEqual(client_keys(cluster.redis), [])
        for value in growth:
            self.assertLessEqual(value, 10.0)
        for gate in cluster.gates:
            self.assertNotIn("Traceback", gate.log())

    @scenario(timeout=150)
    async def test_r9_connection_churn(self) -> None:
        """
        10,000 (WSFABRIC_CHURN_CYCLES) connect/close cycles over two gates,
        each client binding a uid and joining a group in on_connect, leave
        no index entry and each gate's RSS within +10 MiB of its warmed-up
        baseline.
        """
        await self.run_churn(CHURN_CYCLES)

    @scenario(timeout=600)
    async def test_r9_connection_churn_100k_slow(self) -> None:
        """
        R9 in full: 100,000 cycles (set WSFABRIC_SLOW_TESTS=1; about two
        minutes on the 2-core machine).
        """
        if not SLOW:
            raise SkipTest("set WSFABRIC_SLOW_TESTS=1 to run 100,000 churn cycles")
        await self.run_churn(100_000)


class OrderingTests(FaultTestCase):
    """
    R10: ordering of one sender's group messages across gates.
    """

    @scenario(timeout=120)
    async def test_r10_ten_thousand_in_order_over_three_gates(self) -> None:
        """
        10,000 numbered messages sent to a group by one client arrive
        complete and in order at each of its six members, two on each of
        three gates.
        """
        cluster = self.cluster(gates=3, backends=1)
        members = [await self.client(cluster.gates[n % 3].ws_url, join="r10-g") for n in range(6)]
        sender = await self.client(cluster.gates[0].ws_url)
        count = 10_000
        self.assertEqual(await sender.call("get_client_count_by_group", "r10-g"), 6)

        async def receive(member: ContractClient) -> list[str]:
            received: list[str] = []
            while len(received) < count:
                received.append(await member.next_push(timeout=30))
            return received

        receivers = [asyncio.ensure_future(receive(m)) for m in members]
        started = time.monotonic()
        for number in range(count):
            await sender.connection.send(
                json.dumps({"id": -1, "call": "send_to_group", "args": ["r10-g", str(number)]})
            )
        sent = time.monotonic() - started
        results = await asyncio.gather(*receivers)
        took = time.monotonic() - started
        expected = [str(n) for n in range(count)]
        for member, received in zip(members, results, strict=True):
            self.assertEqual(len(received), count, member.client_id)
            self.assertEqual(received, expected, member.client_id)
        report("R10", f"{count:,} group messages from one sender to 6 members on 3 gates, "
                      f"all received in order (sent in {sent:.1f} s)", took)
        # Nothing more, nothing twice.
        for member in members:
            await member.no_push(0.3)
