"""
Presence events (wsfabric.presence): the standalone index's events, the
partitioning over a service's backends, hook order and pushes.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from wsfabric.cluster.memory import MemoryBus
from wsfabric.interfaces import IPresenceListener
from wsfabric.presence import (
    PRESENCE_CHANNEL,
    PresenceDispatcher,
    encode_event,
    matches,
    owner_of,
)
from wsfabric.routing import Router
from wsfabric.rpc import StaticDirectory
from wsfabric.testing import StandaloneHarness


@implementer(IPresenceListener)
class ListeningApp(Router):
    """
    Records every presence event; rooms get presence pushes.
    """

    presence_push_groups = ("room:*", "hall")

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric)
        self.events: list[tuple[Any, ...]] = []
        self.hold: Deferred[None] | None = None

    def on_group_join(self, group: str, client_id: str) -> Any:
        self.events.append(("join", group, client_id))
        return self.hold

    def on_group_leave(self, group: str, client_id: str) -> None:
        self.events.append(("leave", group, client_id))

    def on_uid_online(self, uid: str) -> None:
        self.events.append(("online", uid))

    def on_uid_offline(self, uid: str) -> None:
        self.events.append(("offline", uid))


class StandalonePresenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = StandaloneHarness(ListeningApp)
        self.fabric = self.harness.fabric
        self.app = self.harness.app

    def test_group_and_uid_events(self) -> None:
        """
        Joins, leaves, the first bind of a uid and the close of its last
        client are events, each once, in order; the close of a member is a
        leave.
        """
        a, b = self.harness.connect(), self.harness.connect()
        self.successResultOf(self.fabric.bind_uid(a.client_id, "alice"))
        self.successResultOf(self.fabric.bind_uid(b.client_id, "alice"))
        self.successResultOf(self.fabric.join_group(a.client_id, "g"))
        self.successResultOf(self.fabric.join_group(a.client_id, "g"))
        self.successResultOf(self.fabric.join_group(b.client_id, "g"))
        self.successResultOf(self.fabric.leave_group(b.client_id, "g"))
        self.successResultOf(self.fabric.unbind_uid(b.client_id, "alice"))
        a.disconnect()
        self.assertEqual(
            self.app.events,
            [
                ("online", "alice"),
                ("join", "g", a.client_id),
                ("join", "g", b.client_id),
                ("leave", "g", b.client_id),
                ("leave", "g", a.client_id),
                ("offline", "alice"),
            ],
        )

    def test_rebind_moves_uid(self) -> None:
        """
        Binding a client to another uid takes its old uid offline.
        """
        a = self.harness.connect()
        self.successResultOf(self.fabric.bind_uid(a.client_id, "x"))
        self.successResultOf(self.fabric.bind_uid(a.client_id, "y"))
        self.assertEqual(self.app.events, [("online", "x"), ("offline", "x"), ("online", "y")])

    def test_pushes_to_configured_groups(self) -> None:
        """
        Members of a configured group receive wsfabric.presence pushes for
        joins and leaves; other groups get none.
        """
        a, b = self.harness.connect(), self.harness.connect()
        self.successResultOf(self.fabric.join_group(a.client_id, "room:1"))
        self.successResultOf(self.fabric.join_group(a.client_id, "other"))
        self.successResultOf(self.fabric.bind_uid(b.client_id, "bob"))
        self.successResultOf(self.fabric.join_group(b.client_id, "room:1"))
        b.disconnect()
        pushes = [json.loads(m) for m in a.received]
        self.assertEqual(
            pushes,
            [
                {
                    "route": "wsfabric.presence",
                    "data": {
                        "group": "room:1",
                        "client_id": a.client_id,
                        "uid": None,
                        "event": "join",
                    },
                },
                {
                    "route": "wsfabric.presence",
                    "data": {
                        "group": "room:1",
                        "client_id": b.client_id,
                        "uid": "bob",
                        "event": "join",
                    },
                },
                {
                    "route": "wsfabric.presence",
                    "data": {
                        "group": "room:1",
                        "client_id": b.client_id,
                        "uid": "bob",
                        "event": "leave",
                    },
                },
            ],
        )

    def test_hooks_run_one_at_a_time(self) -> None:
        """
        A hook that returns a Deferred holds the events after it until it
        fires.
        """
        self.app.hold = Deferred()
        a = self.harness.connect()
        self.successResultOf(self.fabric.join_group(a.client_id, "g"))
        self.app.hold, hold = None, self.app.hold
        self.successResultOf(self.fabric.leave_group(a.client_id, "g"))
        self.assertEqual(self.app.events, [("join", "g", a.client_id)])
        hold.callback(None)
        self.assertEqual(self.app.events, [("join", "g", a.client_id), ("leave", "g", a.client_id)])


@implementer(IPresenceListener)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_group_join(self, group: str, client_id: str) -> None:
        self.events.append(("join", group, client_id))

    def on_group_leave(self, group: str, client_id: str) -> None:
        self.events.append(("leave", group, client_id))

    def on_uid_online(self, uid: str) -> None:
        self.events.append(("online", uid))

    def on_uid_offline(self, uid: str) -> None:
        self.events.append(("offline", uid))


class PartitionTests(SynchronousTestCase):
    def test_each_event_once_per_service_and_groups_stick(self) -> None:
        """
        With two backends of one service and one of another, every event is
        handled by exactly one backend of each service, and all the events
        of one group by the same backend, in order.
        """
        clock, bus = Clock(), MemoryBus()
        directory = StaticDirectory({"chat": ["b1", "b2"], "audit": ["c1"]})
        apps = {name: Recorder() for name in ("b1", "b2", "c1")}
        for name, service in (("b1", "chat"), ("b2", "chat"), ("c1", "audit")):
            PresenceDispatcher(clock, bus, name, service, apps[name], directory).startService()
        sent = []
        for i in range(40):
            group = f"g{i % 10}"
            sent.append(("join", group, f"c{i}"))
            bus.publish(PRESENCE_CHANNEL, encode_event("join", group, f"c{i}"))
        for i in range(5):
            sent.append(("online", f"u{i}"))
            bus.publish(PRESENCE_CHANNEL, encode_event("online", uid=f"u{i}"))
        self.assertEqual(apps["c1"].events, sent)
        chat = apps["b1"].events + apps["b2"].events
        self.assertEqual(sorted(chat), sorted(sent))
        self.assertTrue(apps["b1"].events and apps["b2"].events)
        for group in {e[1] for e in sent if e[0] == "join"}:
            holders = [n for n in ("b1", "b2") if any(e[1] == group for e in apps[n].events)]
            self.assertEqual(len(holders), 1)
            self.assertEqual(
                [e for e in apps[holders[0]].events if e[1] == group],
                [e for e in sent if e[1] == group],
            )

    def test_membership_follows_the_directory(self) -> None:
        """
        When a backend leaves the service, the other takes its partitions
        at the next refresh.
        """
        clock, bus = Clock(), MemoryBus()
        directory = StaticDirectory({"chat": ["b1", "b2"]})
        app = Recorder()
        PresenceDispatcher(clock, bus, "b1", "chat", app, directory).startService()
        keys = [f"g{i}" for i in range(20)]
        mine = [k for k in keys if owner_of("g:" + k, ["b1", "b2"]) == "b1"]
        self.assertTrue(0 < len(mine) < len(keys))
        for key in keys:
            bus.publish(PRESENCE_CHANNEL, encode_event("leave", key, "c"))
        self.assertEqual([e[1] for e in app.events], mine)
        directory.services["chat"] = ["b1"]
        clock.advance(1.0)
        del app.events[:]
        for key in keys:
            bus.publish(PRESENCE_CHANNEL, encode_event("leave", key, "c"))
        self.assertEqual([e[1] for e in app.events], keys)

    def test_malformed_events_are_dropped(self) -> None:
        """
        A payload that is not an event is logged and ignored.
        """
        clock, bus = Clock(), MemoryBus()
        app = Recorder()
        PresenceDispatcher(
            clock, bus, "b1", "s", app, StaticDirectory(serve_all=["b1"])
        ).startService()
        bus.publish(PRESENCE_CHANNEL, b"{nope")
        bus.publish(PRESENCE_CHANNEL, b'{"e": "explode"}')
        self.assertEqual(app.events, [])

    def test_matches(self) -> None:
        """
        Group patterns are names or prefixes ending in *.
        """
        self.assertTrue(matches("room:1", ["room:*"]))
        self.assertTrue(matches("hall", ["hall"]))
        self.assertFalse(matches("hall2", ["hall"]))
        self.assertFalse(matches("x", []))
