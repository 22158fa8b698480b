"""
The chat example, driven in memory through wsfabric.testing.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from examples.chat.app import ChatApp
from wsfabric.testing import StandaloneHarness


def chat_app(fabric):
    return ChatApp(fabric, clock=lambda: 1700000000.0)


class ChatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = StandaloneHarness(chat_app)

    def login(self, nick: str):
        client = self.harness.connect()
        client.send(json.dumps({"type": "login", "nick": nick}))
        return client

    def last(self, client, kind: str):
        messages = [m for m in client.received_json() if m["type"] == kind]
        self.assertTrue(messages, f"no {kind} message in {client.received_json()}")
        return messages[-1]

    def test_login_room_and_message(self) -> None:
        """
        Two users log in, join a room, see each other in it and exchange a
        message; a user outside the room hears nothing of it.
        """
        alice, bob, carol = self.login("alice"), self.login("bob"), self.login("carol")
        welcome = self.last(alice, "welcome")
        self.assertEqual((welcome["nick"], welcome["client_id"]), ("alice", alice.client_id))
        self.assertEqual(self.last(carol, "online")["nicks"], ["alice", "bob", "carol"])
        for client in (alice, bob):
            client.send(json.dumps({"type": "join", "room": "lobby"}))
        self.assertEqual(self.last(bob, "members")["nicks"], ["alice", "bob"])
        self.assertEqual(self.last(alice, "joined")["nick"], "bob")
        alice.send(json.dumps({"type": "say", "room": "lobby", "text": "hello bob"}))
        message = self.last(bob, "message")
        self.assertEqual(
            message,
            {"type": "message", "room": "lobby", "from": "alice", "text": "hello bob",
             "ts": 1700000000.0},
        )
        self.assertEqual([m for m in carol.received_json() if m["type"] == "message"], [])
        carol.send(json.dumps({"type": "rooms"}))
        self.assertEqual(self.last(carol, "rooms")["rooms"], [{"name": "lobby", "count": 2}])

    def test_private_message(self) -> None:
        """
        A private message reaches every connection of the recipient and of
        the sender; to an offline nick it is an error.
        """
        alice, bob, bob2 = self.login("alice"), self.login("bob"), self.login("bob")
        bob.send(json.dumps({"type": "pm", "to": "alice", "text": "psst"}))
        for client in (alice, bob, bob2):
            self.assertEqual(self.last(client, "private")["text"], "psst")
        alice.send(json.dumps({"type": "pm", "to": "nobody", "text": "?"}))
        self.assertEqual(self.last(alice, "error")["message"], "nobody is not online")

    def test_disconnect_updates_online_and_rooms(self) -> None:
        """
        When a user leaves, the others get the new online list and the room
        no longer counts them.
        """
        alice, bob = self.login("alice"), self.login("bob")
        bob.send(json.dumps({"type": "join", "room": "lobby"}))
        bob.disconnect()
        self.assertEqual(self.last(alice, "online")["nicks"], ["alice"])
        alice.send(json.dumps({"type": "who", "room": "lobby"}))
        self.assertEqual(self.last(alice, "members")["nicks"], [])

    def test_bad_requests(self) -> None:
        """
        Bad requests get an error message and the connection stays usable.
        """
        client = self.harness.connect()
        for request in (
            "not json",
            json.dumps([1]),
            json.dumps({"type": "dance"}),
            json.dumps({"type": "join", "room": "x"}),
            json.dumps({"type": "login", "nick": ""}),
            json.dumps({"type": "login", "nick": "n" * 33}),
        ):
            client.send(request)
        errors = [m["message"] for m in client.received_json() if m["type"] == "error"]
        self.assertEqual(
            errors,
            [
                "not JSON",
                "expected a JSON object",
                "unknown request type 'dance'",
                "log in first",
                "nick is required",
                "nick is longer than 32 characters",
            ],
        )
        client.send(b"\x00")
        self.assertEqual(self.last(client, "error")["message"], "send JSON text frames")
        client.send(json.dumps({"type": "login", "nick": "ok"}))
        self.assertEqual(self.last(client, "welcome")["nick"], "ok")

    def test_say_requires_membership(self) -> None:
        """
        Only members may talk in a room.
        """
        alice = self.login("alice")
        alice.send(json.dumps({"type": "say", "room": "lobby", "text": "hi"}))
        self.assertEqual(self.last(alice, "error")["message"], "join lobby first")
