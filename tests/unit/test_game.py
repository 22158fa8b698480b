"""
The game example (examples/game), driven in memory through
wsfabric.testing: a protobuf player, a JSON watcher, the rules of the grid.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from google.protobuf.message import Message
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from examples.game import game_pb2
from examples.game.app import MOVE_INTERVAL, GameApp
from examples.game.bot import Bot
from examples.game.match import Match
from wsfabric.routing.envelope_pb2 import Envelope
from wsfabric.testing import FakeClient, StandaloneHarness


class ProtoPlayer:
    """A client in the wsfabric.proto codec."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.ids = itertools.count(1)

    def envelopes(self) -> list[Envelope]:
        return [Envelope.FromString(m) for m in self.client.received if isinstance(m, bytes)]

    def request(self, route: str, message: Message | None = None) -> Envelope:
        id = next(self.ids)
        data = message.SerializeToString() if message is not None else b""
        self.client.send(Envelope(route=route, id=id, data=data).SerializeToString())
        answers = [e for e in self.envelopes() if e.id == id]
        assert len(answers) == 1, f"no single answer to {route}: {self.envelopes()}"
        return answers[0]

    def boards(self) -> list[game_pb2.Board]:
        return [
            game_pb2.Board.FromString(e.data)
            for e in self.envelopes()
            if e.route == "game.board" and not e.id
        ]


class GameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.harness = StandaloneHarness(
            lambda fabric: GameApp(fabric, clock=self.clock, rng=random.Random(7))
        )

    def player(self, name: str, match: str = "arena") -> tuple[ProtoPlayer, game_pb2.Board]:
        player = ProtoPlayer(self.harness.connect(subprotocol="wsfabric.proto"))
        answer = player.request("game.join", game_pb2.JoinRequest(match=match, name=name))
        self.assertFalse(answer.HasField("error"), answer.error)
        return player, game_pb2.Board.FromString(answer.data)

    def move(self, player: ProtoPlayer, direction: int) -> Envelope:
        # A little more than the interval: the clock's floats must not
        # make a legal move look too fast.
        self.clock.advance(MOVE_INTERVAL * 1.5)
        return player.request("game.move", game_pb2.MoveRequest(direction=direction))

    def test_join_and_move_over_protobuf(self) -> None:
        """
        A player joins, gets the board with its own id and a cell; a move
        answers with its new position and the match gets the new board.
        """
        bot, board = self.player("bot")
        self.assertEqual(board.you, bot.client.client_id)
        self.assertEqual((board.width, board.height), (16, 12))
        [me] = board.players
        self.assertEqual(me.name, "bot")
        direction = game_pb2.RIGHT if me.x < board.width - 1 else game_pb2.LEFT
        answer = self.move(bot, direction)
        moved = game_pb2.Player.FromString(answer.data)
        step = 1 if direction == game_pb2.RIGHT else -1
        self.assertEqual((moved.x, moved.y), (me.x + step, me.y))
        last = bot.boards()[-1]
        self.assertEqual([(p.x, p.y) for p in last.players], [(moved.x, moved.y)])
        self.assertGreater(last.tick, board.tick)

    def test_json_watcher_sees_protobuf_moves(self) -> None:
        """
        A JSON client watching the match takes no cell and receives the
        board as the JSON mapping of the protobuf message.
        """
        watcher = self.harness.connect(subprotocol="wsfabric.json")
        watcher.send(json.dumps(
            {"route": "game.join", "id": 1, "data": {"match": "arena", "watch": True}}
        ))
        answer = watcher.received_json()[-1]
        self.assertEqual(answer["id"], 1)
        self.assertEqual((answer["data"]["players"], answer["data"]["you"]), ([], ""))
        bot, board = self.player("bot")
        self.move(bot, game_pb2.UP if board.players[0].y > 0 else game_pb2.DOWN)
        pushes = [m["data"] for m in watcher.received_json() if m.get("route") == "game.board"]
        self.assertEqual(len(pushes), 2)  # the bot's arrival and its move
        [seen] = pushes[-1]["players"]
        self.assertEqual(seen["name"], "bot")
        self.assertEqual(
            (seen["x"], seen["y"]), (bot.boards()[-1].players[0].x, bot.boards()[-1].players[0].y)
        )
        self.assertIsInstance(seen["score"], int)

    def test_errors(self) -> None:
        """
        Moves out of turn, too fast or without a direction get error codes;
        a bad join too; the connection stays usable.
        """
        stranger = ProtoPlayer(self.harness.connect(subprotocol="wsfabric.proto"))
        answer = stranger.request("game.move", game_pb2.MoveRequest(direction=game_pb2.UP))
        self.assertEqual(answer.error.code, "not_playing")
        answer = stranger.request("game.join", game_pb2.JoinRequest(match="", name="x"))
        self.assertEqual(answer.error.code, "bad_request")
        answer = stranger.request("game.join", game_pb2.JoinRequest(match="a", name="n" * 17))
        self.assertEqual(answer.error.code, "bad_request")
        truncated = Envelope(route="game.move", id=99, data=b"\xff\xff")
        stranger.client.send(truncated.SerializeToString())
        self.assertEqual(stranger.envelopes()[-1].error.code, "bad_request")
        bot, _ = self.player("bot")
        self.assertEqual(self.move(bot, game_pb2.DIRECTION_UNSPECIFIED).error.code, "bad_request")
        self.move(bot, game_pb2.UP)
        answer = bot.request("game.move", game_pb2.MoveRequest(direction=game_pb2.UP))
        self.assertEqual(answer.error.code, "too_fast")
        self.assertFalse(self.move(bot, game_pb2.DOWN).HasField("error"))

    def test_leave_and_disconnect(self) -> None:
        """
        A player who leaves or disconnects is taken off the board the others
        see; matches are separate.
        """
        alice, _ = self.player("alice")
        bob, _ = self.player("bob")
        carol, _ = self.player("carol", match="other")
        self.assertEqual(sorted(p.name for p in alice.boards()[-1].players), ["alice", "bob"])
        bob.client.disconnect()
        self.assertEqual([p.name for p in alice.boards()[-1].players], ["alice"])
        self.assertEqual([p.name for p in carol.boards()[-1].players], ["carol"])
        alice.request("game.leave")
        dave, board = self.player("dave")
        self.assertEqual([p.name for p in board.players], ["dave"])


class MatchTests(SynchronousTestCase):
    def test_rules(self) -> None:
        """
        Moves stay on the grid, do not walk into another player, and picking
        up the coin scores and moves it.
        """
        match = Match("m", random.Random(1), width=3, height=1)
        match.coin = (2, 0)
        a = match.add("a", "a")
        a.x, a.y = 0, 0
        self.assertEqual((match.move("a", game_pb2.LEFT).x, match.tick), (0, 1))
        b = match.add("b", "b")
        b.x = 1
        self.assertEqual(match.move("a", game_pb2.RIGHT).x, 0)
        b.x = 2
        match.coin = (1, 0)
        moved = match.move("a", game_pb2.RIGHT)
        self.assertEqual((moved.x, moved.score), (1, 1))
        self.assertNotEqual(match.coin, (1, 0))
        self.assertNotIn(match.coin, [(1, 0), (2, 0)])


class PushOnlyClient:
    """What the bot needs of a wsfabric.client client: push handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def on(self, route: str, handler: Any, message_type: Any = None) -> None:
        self.handlers[route] = (handler, message_type)


class BotTests(SynchronousTestCase):
    def test_walks_towards_the_coin(self) -> None:
        """
        The bot keeps the newest board it is pushed and steps towards the
        coin along the longer axis first; after a blocked step it tries a
        random direction.
        """
        client = PushOnlyClient()
        bot = Bot(client, "arena", "bot", random.Random(3))  # type: ignore[arg-type]
        handler, message_type = client.handlers["game.board"]
        self.assertIs(message_type, game_pb2.Board)
        bot.you = "me"
        me = game_pb2.Player(id="me", x=5, y=5)
        handler(game_pb2.Board(players=[me], coin=game_pb2.Cell(x=1, y=4), tick=2))
        handler(game_pb2.Board(players=[], coin=game_pb2.Cell(x=9, y=9), tick=1))  # older
        self.assertEqual(bot.choose(), game_pb2.LEFT)
        handler(game_pb2.Board(players=[me], coin=game_pb2.Cell(x=5, y=9), tick=3))
        self.assertEqual(bot.choose(), game_pb2.DOWN)
        bot.blocked = True
        self.assertEqual(
            {bot.choose() for _ in range(50)},
            {game_pb2.UP, game_pb2.DOWN, game_pb2.LEFT, game_pb2.RIGHT},
        )
