"""
A bot player of the game example, in the ``wsfabric.proto`` codec over
:mod:`wsfabric.client` (its Twisted front). It joins a match and walks
towards the coin, one step every ``--interval`` seconds::

    python -m examples.game.bot [--url ws://127.0.0.1:8080/ws] [--match arena]
                                [--name bot-1234] [--moves 0] [--interval 0.2]

Each change of score is printed; ``--moves N`` stops after N moves (0: run
until interrupted). After a reconnect the bot joins the match again.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater, react

from examples.game import game_pb2
from examples.game.match import STEPS
from wsfabric.client import Client
from wsfabric.errors import ConnectFailed, NotConnected, RemoteError, RequestTimeout


class Bot:
    """
    The bot's brain: the last board it saw, and where to go next.

    :param client: a connected client in the ``proto`` codec.
    :param match: the match to play in.
    :param name: the player's name.
    :param rng: where the bot's random choices come from.
    """

    def __init__(self, client: Client, match: str, name: str, rng: random.Random) -> None:
        self.client = client
        self.match = match
        self.name = name
        self.rng = rng
        self.board: game_pb2.Board | None = None
        self.you = ""
        self.score = 0
        self.blocked = False
        client.on("game.board", self.on_board, game_pb2.Board)

    def on_board(self, board: game_pb2.Board) -> None:
        """
        A push of the board: keep the newest.
        """
        if self.board is None or board.tick >= self.board.tick:
            self.board = board

    async def join(self) -> None:
        """
        Join the match as a player.
        """
        board = await self.client.request(
            "game.join",
            game_pb2.JoinRequest(match=self.match, name=self.name),
            response_type=game_pb2.Board,
        )
        self.you = board.you
        self.on_board(board)

    def me(self) -> game_pb2.Player | None:
        """
        :return: the bot on the last board, if it is on it.
        """
        if self.board is None:
            return None
        return next((p for p in self.board.players if p.id == self.you), None)

    def choose(self) -> int:
        """
        :return: the direction of the next step: towards the coin, by the
            longer way first; at random when the last step went nowhere.
        """
        me = self.me()
        if me is None or self.board is None or self.blocked:
            return self.rng.choice(list(STEPS))
        dx = self.board.coin.x - me.x
        dy = self.board.coin.y - me.y
        options = []
        if dx:
            options.append((abs(dx), game_pb2.RIGHT if dx > 0 else game_pb2.LEFT))
        if dy:
            options.append((abs(dy), game_pb2.DOWN if dy > 0 else game_pb2.UP))
        if not options:
            return self.rng.choice(list(STEPS))
        options.sort(reverse=True)
        return options[0][1]

    async def step(self) -> None:
        """
        Make one move and report a new score.
        """
        before = self.me()
        player = await self.client.request(
            "game.move",
            game_pb2.MoveRequest(direction=self.choose()),
            response_type=game_pb2.Player,
        )
        # Blocked by another player: sidestep next time.
        self.blocked = before is not None and (player.x, player.y) == (before.x, before.y)
        if player.score != self.score:
            self.score = player.score
            print(f"{self.name}: score {self.score} at ({player.x}, {player.y})", flush=True)


async def play(reactor: Any, args: argparse.Namespace) -> None:
    """
    Connect, join, and move until ``args.moves`` moves are done.
    """
    rng = random.Random()
    joined: list[Bot] = []

    def rejoin(client: Client) -> Deferred[None] | None:
        # Every connection after the first starts without a seat.
        if joined:
            return ensureDeferred(joined[0].join())
        return None

    client = Client(
        args.url,
        codec="proto",
        compress_routes=True,
        connect_timeout=10,
        reactor=reactor,
        on_connect=rejoin,
    )
    await client.connect()
    bot = Bot(client, args.match, args.name, rng)
    await bot.join()
    joined.append(bot)
    print(f"{args.name}: playing in match {args.match!r} at {args.url}", flush=True)
    moves = 0
    try:
        while args.moves == 0 or moves < args.moves:
            await deferLater(reactor, args.interval, lambda: None)
            try:
                await bot.step()
            except RemoteError as e:
                if e.code != "too_fast":
                    print(f"{args.name}: {e}", file=sys.stderr, flush=True)
            except (NotConnected, RequestTimeout) as e:
                print(f"{args.name}: {e}; waiting for the connection", file=sys.stderr, flush=True)
            moves += 1
    finally:
        await client.close()
    print(f"{args.name}: done after {moves} moves, score {bot.score}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.game.bot", description="A bot player of the wsfabric game example."
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="the server's WebSocket")
    parser.add_argument("--match", default="arena", help="the match to join (default arena)")
    parser.add_argument("--name", default=f"bot-{random.randrange(10000):04d}")
    parser.add_argument("--moves", type=int, default=0, help="stop after N moves (0: never)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between moves")
    args = parser.parse_args(argv)
    if args.moves < 0 or args.interval <= 0:
        parser.error("--moves must be >= 0 and --interval > 0")

    async def run(reactor: Any) -> None:
        try:
            await play(reactor, args)
        except (ConnectFailed, RemoteError) as e:
            print(f"bot: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
