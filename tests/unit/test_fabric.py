"""
Every IFabric method and its semantics (CONTRACT.md section 3), in standalone
mode, in memory.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.apps import RecordingApp
from wsfabric.errors import ClientNotFound, InvalidArgument
from wsfabric.testing import StandaloneHarness


class FabricTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = StandaloneHarness(RecordingApp)
        self.fabric = self.harness.fabric

    def result(self, deferred):
        return self.successResultOf(deferred)

    def failure(self, deferred, *errors):
        return self.failureResultOf(deferred, *errors)


class SendTests(FabricTestCase):
    def test_send_to_client_text_and_binary(self) -> None:
        """
        str goes as text, bytes as binary, to exactly that client.
        """
        a, b = self.harness.connect(), self.harness.connect()
        self.assertIsNone(self.result(self.fabric.send_to_client(a.client_id, "hi")))
        self.result(self.fabric.send_to_client(a.client_id, b"\x00\xff"))
        self.assertEqual(a.received, ["hi", b"\x00\xff"])
        self.assertEqual(b.received, [])

    def test_send_to_offline_client_is_noop(self) -> None:
        """
        Sending to a client that is gone, never existed, or has a malformed id
        succeeds and does nothing.
        """
        a = self.harness.connect()
        a.disconnect()
        self.result(self.fabric.send_to_client(a.client_id, "x"))
        self.result(self.fabric.send_to_client("0123456789abcdef-zz", "x"))
        self.result(self.fabric.send_to_client("not an id", "x"))
        self.assertEqual(a.received, [])

    def test_send_bad_message_type(self) -> None:
        """
        A message that is neither str nor bytes fails with InvalidArgument.
        """
        a = self.harness.connect()
        self.failure(self.fabric.send_to_client(a.client_id, 42), InvalidArgument)
        self.failure(self.fabric.send_to_group("g", {"a": 1}), InvalidArgument)

    def test_send_to_clients(self) -> None:
        """
        Each listed client that is online gets the message once.
        """
        a, b, c = (self.harness.connect() for _ in range(3))
        self.result(
            self.fabric.send_to_clients([a.client_id, c.client_id, "gone-1"], "m")
        )
        self.assertEqual((a.received, b.received, c.received), (["m"], [], ["m"]))
        self.failure(self.fabric.send_to_clients(a.client_id, "m"), InvalidArgument)

    def test_send_to_all_with_exclude(self) -> None:
        """
        send_to_all reaches everyone except the excluded ids.
        """
        a, b, c = (self.harness.connect() for _ in range(3))
        self.result(self.fabric.send_to_all("all", exclude=[b.client_id]))
        self.assertEqual((a.received, b.received, c.received), (["all"], [], ["all"]))

    def test_send_to_uid_reaches_every_client_of_uid(self) -> None:
        """
        All clients bound to a uid receive; others do not; an unknown uid is a
        no-op.
        """
        a, b, c = (self.harness.connect() for _ in range(3))
        self.result(self.fabric.bind_uid(a.client_id, "u1"))
        self.result(self.fabric.bind_uid(b.client_id, "u1"))
        self.result(self.fabric.send_to_uid("u1", "for u1"))
        self.result(self.fabric.send_to_uid("nobody", "lost"))
        self.assertEqual((a.received, b.received, c.received), (["for u1"], ["for u1"], []))

    def test_send_to_group_with_exclude(self) -> None:
        """
        Group members except the excluded receive; non-members do not.
        """
        a, b, c = (self.harness.connect() for _ in range(3))
        for client in (a, b):
            self.result(self.fabric.join_group(client.client_id, "room"))
        self.result(self.fabric.send_to_group("room", "one"))
        self.result(self.fabric.send_to_group("room", "two", exclude=[a.client_id]))
        self.result(self.fabric.send_to_group("empty", "none"))
        self.assertEqual(a.received, ["one"])
        self.assertEqual(b.received, ["one", "two"])
        self.assertEqual(c.received, [])

    def test_order_is_kept_per_sender(self) -> None:
        """
        Messages from one sender to one group arrive in the order sent.
        """
        a = self.harness.connect()
        self.result(self.fabric.join_group(a.client_id, "g"))
        for number in range(100):
            self.fabric.send_to_group("g", str(number))
            self.fabric.send_to_client(a.client_id, f"direct {number}")
        self.assertEqual([m for m in a.received if not m.startswith("direct")],
                         [str(n) for n in range(100)])
        self.assertEqual([m for m in a.received if m.startswith("direct")],
                         [f"direct {n}" for n in range(100)])


class UidTests(FabricTestCase):
    def test_bind_and_query(self) -> None:
        """
        bind_uid is visible to every uid query.
        """
        a, b = self.harness.connect(), self.harness.connect()
        self.result(self.fabric.bind_uid(a.client_id, "alice"))
        self.result(self.fabric.bind_uid(b.client_id, "alice"))
        self.assertTrue(self.result(self.fabric.is_uid_online("alice")))
        self.assertFalse(self.result(self.fabric.is_uid_online("bob")))
        self.assertEqual(self.result(self.fabric.get_uid_by_client_id(a.client_id)), "alice")
        self.assertEqual(
            sorted(self.result(self.fabric.get_client_ids_by_uid("alice"))),
            sorted([a.client_id, b.client_id]),
        )
        self.assertEqual(self.result(self.fabric.get_all_uids()), ["alice"])

    def test_rebind_replaces(self) -> None:
        """
        A client has at most one uid: binding again replaces the binding.
        """
        a = self.harness.connect()
        self.result(self.fabric.bind_uid(a.client_id, "old"))
        self.result(self.fabric.bind_uid(a.client_id, "new"))
        self.assertEqual(self.result(self.fabric.get_uid_by_client_id(a.client_id)), "new")
        self.assertFalse(self.result(self.fabric.is_uid_online("old")))
        self.result(self.fabric.send_to_uid("old", "stale"))
        self.result(self.fabric.send_to_uid("new", "fresh"))
        self.assertEqual(a.received, ["fresh"])

    def test_unbind(self) -> None:
        """
        unbind_uid removes the binding; unbinding another uid is a no-op.
        """
        a = self.harness.connect()
        self.result(self.fabric.bind_uid(a.client_id, "alice"))
        self.result(self.fabric.unbind_uid(a.client_id, "bob"))
        self.assertEqual(self.result(self.fabric.get_uid_by_client_id(a.client_id)), "alice")
        self.result(self.fabric.unbind_uid(a.client_id, "alice"))
        self.assertIsNone(self.result(self.fabric.get_uid_by_client_id(a.client_id)))
        self.assertEqual(self.result(self.fabric.get_all_uids()), [])
        self.result(self.fabric.send_to_uid("alice", "x"))
        self.assertEqual(a.received, [])

    def test_mutations_of_offline_client_fail(self) -> None:
        """
        bind_uid and unbind_uid of a client that is not online fail with
        ClientNotFound.
        """
        a = self.harness.connect()
        a.disconnect()
        for deferred in (
            self.fabric.bind_uid(a.client_id, "x"),
            self.fabric.unbind_uid(a.client_id, "x"),
            self.fabric.bind_uid("0123456789abcdef-1", "x"),
            self.fabric.bind_uid("garbage", "x"),
        ):
            self.failure(deferred, ClientNotFound)

    def test_bad_uid(self) -> None:
        """
        Empty or non-str uids fail with InvalidArgument.
        """
        a = self.harness.connect()
        self.failure(self.fabric.bind_uid(a.client_id, ""), InvalidArgument)
        self.failure(self.fabric.bind_uid(a.client_id, 7), InvalidArgument)
        self.failure(self.fabric.is_uid_online(None), InvalidArgument)


class GroupTests(FabricTestCase):
    def test_join_and_query(self) -> None:
        """
        join_group is visible to every group query at once.
        """
        a, b, c = (self.harness.connect() for _ in range(3))
        self.result(self.fabric.bind_uid(a.client_id, "alice"))
        self.result(self.fabric.bind_uid(b.client_id, "alice"))
        for client in (a, b, c):
            self.result(self.fabric.join_group(client.client_id, "room"))
        self.assertEqual(self.result(self.fabric.get_client_count_by_group("room")), 3)
        self.assertEqual(self.result(self.fabric.get_uid_count_by_group("room")), 1)
        self.assertEqual(
            sorted(self.result(self.fabric.get_client_ids_by_group("room"))),
            sorted(x.client_id for x in (a, b, c)),
        )
        self.assertEqual(self.result(self.fabric.get_uids_by_group("room")), ["alice"])
        self.assertEqual(self.result(self.fabric.get_all_groups()), ["room"])
        self.assertEqual(self.result(self.fabric.get_client_count_by_group("none")), 0)
        self.assertEqual(self.result(self.fabric.get_client_ids_by_group("none")), [])

    def test_join_twice_is_one_membership(self) -> None:
        """
        Joining a group twice counts once and delivers once.
        """
        a = self.harness.connect()
        self.result(self.fabric.join_group(a.client_id, "g"))
        self.result(self.fabric.join_group(a.client_id, "g"))
        self.assertEqual(self.result(self.fabric.get_client_count_by_group("g")), 1)
        self.result(self.fabric.send_to_group("g", "once"))
        self.assertEqual(a.received, ["once"])

    def test_leave(self) -> None:
        """
        A group exists while it has members.
        """
        a = self.harness.connect()
        self.result(self.fabric.join_group(a.client_id, "g"))
        self.result(self.fabric.leave_group(a.client_id, "g"))
        self.result(self.fabric.leave_group(a.client_id, "other"))
        self.assertEqual(self.result(self.fabric.get_all_groups()), [])
        self.result(self.fabric.send_to_group("g", "x"))
        self.assertEqual(a.received, [])

    def test_ungroup(self) -> None:
        """
        ungroup makes every member leave; the group is gone.
        """
        a, b = self.harness.connect(), self.harness.connect()
        for client in (a, b):
            self.result(self.fabric.join_group(client.client_id, "g"))
            self.result(self.fabric.join_group(client.client_id, "keep"))
        self.result(self.fabric.ungroup("g"))
        self.assertEqual(self.result(self.fabric.get_client_count_by_group("g")), 0)
        self.assertEqual(self.result(self.fabric.get_all_groups()), ["keep"])
        self.result(self.fabric.send_to_group("g", "x"))
        self.assertEqual(a.received, [])
        self.result(self.fabric.ungroup("never-existed"))

    def test_group_mutations_of_offline_client_fail(self) -> None:
        """
        join_group and leave_group of a client that is not online fail with
        ClientNotFound.
        """
        a = self.harness.connect()
        a.disconnect()
        self.failure(self.fabric.join_group(a.client_id, "g"), ClientNotFound)
        self.failure(self.fabric.leave_group(a.client_id, "g"), ClientNotFound)

    def test_bad_group(self) -> None:
        """
        Empty, overlong or non-str group names fail with InvalidArgument.
        """
        a = self.harness.connect()
        self.failure(self.fabric.join_group(a.client_id, ""), InvalidArgument)
        self.failure(self.fabric.join_group(a.client_id, "x" * 257), InvalidArgument)
        self.failure(self.fabric.send_to_group(["g"], "m"), InvalidArgument)
        self.failure(self.fabric.get_client_count_by_group(3), InvalidArgument)


class ClientTests(FabricTestCase):
    def test_online_and_count(self) -> None:
        """
        is_online and get_all_client_count follow connects and disconnects.
        """
        a, _ = self.harness.connect(), self.harness.connect()
        self.assertTrue(self.result(self.fabric.is_online(a.client_id)))
        self.assertEqual(self.result(self.fabric.get_all_client_count()), 2)
        a.disconnect()
        self.assertFalse(self.result(self.fabric.is_online(a.client_id)))
        self.assertFalse(self.result(self.fabric.is_online("nonsense")))
        self.assertEqual(self.result(self.fabric.get_all_client_count()), 1)

    def test_disconnect_cleans_everything(self) -> None:
        """
        A client that disconnects leaves its groups; its uid and info are
        dropped; no query reports it.
        """
        a, b = self.harness.connect(), self.harness.connect()
        self.result(self.fabric.bind_uid(a.client_id, "alice"))
        self.result(self.fabric.join_group(a.client_id, "g"))
        self.result(self.fabric.join_group(b.client_id, "g"))
        self.result(self.fabric.set_info(a.client_id, {"k": 1}))
        a.disconnect()
        self.assertEqual(self.result(self.fabric.get_client_ids_by_group("g")), [b.client_id])
        self.assertFalse(self.result(self.fabric.is_uid_online("alice")))
        self.assertEqual(self.result(self.fabric.get_info(a.client_id)), {})
        self.assertIsNone(self.result(self.fabric.get_uid_by_client_id(a.client_id)))
        self.assertEqual(self.result(self.fabric.get_all_uids()), [])

    def test_close_client(self) -> None:
        """
        close_client closes with the code and reason; once its Deferred has
        fired no query reports the client; closing an offline client is a
        no-op.
        """
        a = self.harness.connect()
        self.result(self.fabric.join_group(a.client_id, "g"))
        self.result(self.fabric.close_client(a.client_id, 4001, "bye"))
        self.assertEqual((a.connection.close_code, a.connection.close_reason), (4001, "bye"))
        self.assertFalse(self.result(self.fabric.is_online(a.client_id)))
        self.assertEqual(self.result(self.fabric.get_client_count_by_group("g")), 0)
        self.result(self.fabric.close_client(a.client_id))
        self.assertEqual(self.harness.app.events[-1], ("close", a.client_id))

    def test_close_client_default_and_bad_codes(self) -> None:
        """
        The default close is 1000 ""; codes outside 1000 and 3000-4999 fail.
        """
        a = self.harness.connect()
        self.failure(self.fabric.close_client(a.client_id, 1001), InvalidArgument)
        self.failure(self.fabric.close_client(a.client_id, 5000), InvalidArgument)
        self.failure(self.fabric.close_client(a.client_id, 1000, b"x"), InvalidArgument)
        self.result(self.fabric.close_client(a.client_id))
        self.assertEqual((a.connection.close_code, a.connection.close_reason), (1000, ""))

    def test_info(self) -> None:
        """
        set_info replaces, update_info merges top-level keys, get_info returns
        a copy and {} when none.
        """
        a = self.harness.connect()
        self.assertEqual(self.result(self.fabric.get_info(a.client_id)), {})
        self.result(self.fabric.set_info(a.client_id, {"a": 1, "nested": {"x": 1}}))
        self.result(self.fabric.update_info(a.client_id, {"b": 2, "nested": {"y": 2}}))
        info = self.result(self.fabric.get_info(a.client_id))
        self.assertEqual(info, {"a": 1, "b": 2, "nested": {"y": 2}})
        info["a"] = 99
        self.assertEqual(self.result(self.fabric.get_info(a.client_id))["a"], 1)
        self.result(self.fabric.set_info(a.client_id, {"only": True}))
        self.assertEqual(self.result(self.fabric.get_info(a.client_id)), {"only": True})
        self.assertEqual(self.result(self.fabric.get_info("nobody")), {})

    def test_info_must_be_json(self) -> None:
        """
        Info that is not a JSON-serialisable dict fails with InvalidArgument
        and leaves the stored info alone.
        """
        a = self.harness.connect()
        self.result(self.fabric.set_info(a.client_id, {"a": 1}))
        self.failure(self.fabric.set_info(a.client_id, {"s": {1, 2}}), InvalidArgument)
        self.failure(self.fabric.set_info(a.client_id, ["list"]), InvalidArgument)
        self.failure(self.fabric.update_info(a.client_id, {"nan": float("nan")}), InvalidArgument)
        self.assertEqual(self.result(self.fabric.get_info(a.client_id)), {"a": 1})

    def test_info_mutations_of_offline_client_fail(self) -> None:
        """
        set_info and update_info of an offline client fail with
        ClientNotFound.
        """
        a = self.harness.connect()
        a.disconnect()
        self.failure(self.fabric.set_info(a.client_id, {}), ClientNotFound)
        self.failure(self.fabric.update_info(a.client_id, {}), ClientNotFound)

    def test_ids_are_never_reused(self) -> None:
        """
        Client ids are unique within a gate and across gate restarts.
        """
        ids = {self.harness.connect().client_id for _ in range(100)}
        restarted = StandaloneHarness(RecordingApp)
        ids2 = {restarted.connect().client_id for _ in range(100)}
        self.assertEqual(len(ids | ids2), 200)


class GateLifecycleTests(FabricTestCase):
    def test_records(self) -> None:
        """
        The gate can list what the index must hold about each client.
        """
        a = self.harness.connect()
        self.result(self.fabric.bind_uid(a.client_id, "alice"))
        self.result(self.fabric.join_group(a.client_id, "g"))
        self.result(self.fabric.set_info(a.client_id, {"k": 1}))
        b = self.harness.connect()
        self.assertEqual(
            sorted(self.harness.gate.records()),
            sorted([(a.client_id, "alice", ("g",), {"k": 1}), (b.client_id, None, (), None)]),
        )

    def test_reincarnate(self) -> None:
        """
        A gate declared dead closes its clients with 1012 without writing the
        index, tells the application, and issues ids of its new incarnation.
        """
        gate = self.harness.gate
        a = self.harness.connect()
        old = gate.gate_id
        self.assertEqual(gate.reincarnate("00000000000000aa"), 1)
        self.assertEqual(a.close_code, 1012)
        self.assertEqual(self.harness.app.events[-1], ("close", a.client_id))
        # The old entry is left for the sweeper: the gate wrote nothing.
        self.assertTrue(self.result(self.harness.gate._index.is_online(a.client_id)))
        b = self.harness.connect()
        self.assertTrue(b.client_id.startswith("00000000000000aa-"))
        self.assertNotEqual(old, gate.gate_id)

    def test_close_all_a_chunk_per_turn(self) -> None:
        """
        With a clock, close_all closes a bounded number of clients per
        reactor turn (so their answers are read in between), and fires once
        every one is closed and gone from the index.
        """
        clients = [self.harness.connect() for _ in range(7)]
        clock = Clock()
        closed = self.harness.gate.close_all(1001, "bye", clock, per_turn=3)
        # The first three now, the rest in later turns.
        self.assertEqual([c.close_code for c in clients].count(1001), 3)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertNoResult(closed)
        clock.advance(0)
        self.successResultOf(closed)
        self.assertEqual([c.close_code for c in clients], [1001] * 7)
        self.assertEqual(self.result(self.fabric.get_all_client_count()), 0)
        self.assertEqual([e[0] for e in self.harness.app.events].count("close"), 7)
