"""
The chat example, driven in memory through wsfabric.testing, in the routed
JSON protocol its page speaks.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from examples.chat.app import ChatApp
from wsfabric.testing import FakeClient, StandaloneHarness


def chat_app(fabric):
    return ChatApp(fabric, clock=lambda: 1700000000.0)


class ChatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = StandaloneHarness(chat_app)
        self.ids = itertools.count(1)

    def connect(self, **request: Any) -> FakeClient:
        return self.harness.connect(subprotocol="wsfabric.json", **request)

    def request(self, client: FakeClient, route: str, data: Any = None) -> dict[str, Any]:
        """Send a request; return the response or error envelope to it."""
        id = next(self.ids)
        client.send(json.dumps({"route": route, "id": id, "data": data}))
        answers = [m for m in client.received_json() if m.get("id") == id]
        self.assertEqual(len(answers), 1, f"no single answer to {route} in {client.received}")
        return answers[0]

    def call(self, client: FakeClient, route: str, data: Any = None) -> Any:
        """Send a request that must succeed; return its data."""
        answer = self.request(client, route, data)
        self.assertNotIn("error", answer)
        return answer["data"]

    def error(self, client: FakeClient, route: str, data: Any = None) -> tuple[str, str]:
        """Send a request that must fail; return its (code, message)."""
        answer = self.request(client, route, data)
        self.assertIn("error", answer)
        return answer["error"]["code"], answer["error"]["message"]

    def pushes(self, client: FakeClient, route: str) -> list[Any]:
        return [
            m["data"] for m in client.received_json()
            if m.get("route") == route and "id" not in m and "error" not in m
        ]

    def login(self, nick: str) -> FakeClient:
        client = self.connect()
        welcome = self.call(client, "chat.login", {"nick": nick})
        self.assertEqual((welcome["nick"], welcome["client_id"]), (nick, client.client_id))
        return client

    def test_login_room_and_message(self) -> None:
        """
        Two users log in, join a room, see each other in it and exchange a
        message; a user outside the room hears nothing of it.
        """
        alice, bob, carol = self.login("alice"), self.login("bob"), self.login("carol")
        self.assertEqual(self.pushes(carol, "chat.online")[-1]["nicks"], ["alice", "bob", "carol"])
        self.call(alice, "chat.join", {"room": "lobby"})
        members = self.call(bob, "chat.join", {"room": "lobby"})
        self.assertEqual(members, {"room": "lobby", "nicks": ["alice", "bob"]})
        self.assertEqual(self.pushes(alice, "chat.joined")[-1], {"room": "lobby", "nick": "bob"})
        self.assertIsNone(self.call(alice, "chat.say", {"room": "lobby", "text": "hello bob"}))
        expected = {"room": "lobby", "from": "alice", "text": "hello bob", "ts": 1700000000.0}
        self.assertEqual(self.pushes(bob, "chat.message"), [expected])
        self.assertEqual(self.pushes(alice, "chat.message"), [expected])
        self.assertEqual(self.pushes(carol, "chat.message"), [])
        self.assertEqual(
            self.call(carol, "chat.rooms"), {"rooms": [{"name": "lobby", "count": 2}]}
        )
        self.assertEqual(self.call(bob, "chat.leave", {"room": "lobby"}), {"room": "lobby"})
        self.assertEqual(self.pushes(alice, "chat.left"), [{"room": "lobby", "nick": "bob"}])
        self.assertEqual(
            self.call(carol, "chat.who", {"room": "lobby"}), {"room": "lobby", "nicks": ["alice"]}
        )

    def test_private_message(self) -> None:
        """
        A private message reaches every connection of the recipient and of
        the sender; to an offline nick it is an error.
        """
        alice, bob, bob2 = self.login("alice"), self.login("bob"), self.login("bob")
        self.call(bob, "chat.pm", {"to": "alice", "text": "psst"})
        for client in (alice, bob, bob2):
            self.assertEqual(
                self.pushes(client, "chat.private"),
                [{"from": "bob", "to": "alice", "text": "psst", "ts": 1700000000.0}],
            )
        self.assertEqual(
            self.error(alice, "chat.pm", {"to": "nobody", "text": "?"}),
            ("offline", "nobody is not online"),
        )

    def test_disconnect_updates_online_and_rooms(self) -> None:
        """
        When a user leaves, the others get the new online list and the room
        no longer counts them.
        """
        alice, bob = self.login("alice"), self.login("bob")
        self.call(bob, "chat.join", {"room": "lobby"})
        bob.disconnect()
        self.assertEqual(self.pushes(alice, "chat.online")[-1]["nicks"], ["alice"])
        self.assertEqual(self.call(alice, "chat.who", {"room": "lobby"})["nicks"], [])
        self.assertEqual(self.call(alice, "chat.rooms"), {"rooms": []})

    def test_bad_requests(self) -> None:
        """
        Bad requests get an error with a stable code, and the connection
        stays usable.
        """
        client = self.connect()
        for route, data, expected in [
            ("chat.dance", None, ("not_found", "no route 'chat.dance'")),
            ("chat.join", {"room": "x"}, ("login_required", "log in first")),
            ("chat.login", {"nick": ""}, ("bad_request", "nick is required")),
            ("chat.login", [1], ("bad_request", "nick is required")),
            ("chat.login", {"nick": "n" * 33},
             ("bad_request", "nick is longer than 32 characters")),
        ]:
            self.assertEqual(self.error(client, route, data), expected)
        client.send("not json")
        self.assertEqual(client.received_json()[-1]["error"]["code"], "bad_request")
        self.assertEqual(self.call(client, "chat.login", {"nick": "ok"})["nick"], "ok")

    def test_say_requires_membership(self) -> None:
        """
        Only members may talk in a room.
        """
        alice = self.login("alice")
        self.assertEqual(
            self.error(alice, "chat.say", {"room": "lobby", "text": "hi"}),
            ("not_member", "join lobby first"),
        )

    def test_route_compression(self) -> None:
        """
        A client that asks for route compression gets the route table first,
        covering the pushes too, and may call routes by their codes.
        """
        client = self.connect(params={"routes": "1"})
        first = client.received_json()[0]
        self.assertEqual(first["route"], "wsfabric.routes")
        table = first["data"]
        for name in ("chat.login", "chat.join", "chat.message", "chat.online"):
            self.assertIn(name, table)
        client.send(json.dumps({"route": table["chat.login"], "id": 1, "data": {"nick": "zed"}}))
        self.assertEqual(client.received_json()[-1]["data"]["nick"], "zed")
        self.assertEqual(client.received_json()[-2]["route"], table["chat.online"])
