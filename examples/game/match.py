"""
The rules of the game example, apart from any networking: a match is a grid
with players on it and one coin; a player steps one cell at a time, may not
step onto another player or off the grid, and scores a point by stepping on
the coin, which then moves to a random free cell.

:class:`Match` is plain state; :mod:`examples.game.app` serves it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from examples.game import game_pb2

WIDTH = 16
HEIGHT = 12
MAX_PLAYERS = 24

COLORS = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
    "#f032e6", "#808000", "#469990", "#9a6324", "#800000", "#000075",
)

STEPS = {
    game_pb2.UP: (0, -1),
    game_pb2.DOWN: (0, 1),
    game_pb2.LEFT: (-1, 0),
    game_pb2.RIGHT: (1, 0),
}


class MatchFull(Exception):
    """
    No free cell is left for another player.
    """


@dataclass
class Piece:
    """
    One player on the grid.
    """

    id: str
    name: str
    x: int
    y: int
    color: str
    score: int = 0

    def to_message(self) -> game_pb2.Player:
        """
        :return: this player as the protobuf message.
        """
        return game_pb2.Player(
            id=self.id, name=self.name, x=self.x, y=self.y, score=self.score, color=self.color
        )


class Match:
    """
    The state of one match.

    :param name: the match's name.
    :param rng: where random cells come from (seed it in tests).
    :param width: columns of the grid.
    :param height: rows of the grid.
    """

    def __init__(
        self, name: str, rng: random.Random, width: int = WIDTH, height: int = HEIGHT
    ) -> None:
        self.name = name
        self.width = width
        self.height = height
        self.players: dict[str, Piece] = {}
        self.tick = 0
        self._rng = rng
        self._colors = 0
        self.coin = self._free_cell()

    def add(self, player_id: str, name: str) -> Piece:
        """
        Put a player on a random free cell (a player already here stays).

        :raises MatchFull: when the match has no room left.
        """
        if player_id in self.players:
            return self.players[player_id]
        if len(self.players) >= MAX_PLAYERS:
            raise MatchFull(f"match {self.name} has {MAX_PLAYERS} players already")
        x, y = self._free_cell()
        color = COLORS[self._colors % len(COLORS)]
        self._colors += 1
        piece = self.players[player_id] = Piece(player_id, name, x, y, color)
        self.tick += 1
        return piece

    def remove(self, player_id: str) -> bool:
        """
        Take a player off the grid.

        :return: whether it was on it.
        """
        if self.players.pop(player_id, None) is None:
            return False
        self.tick += 1
        return True

    def move(self, player_id: str, direction: int) -> Piece:
        """
        Step a player one cell, unless the grid's edge or another player is
        in the way (then it stays, and nothing changes).

        :param direction: a ``game_pb2.Direction`` other than UNSPECIFIED.
        :raises KeyError: for a player not in the match.
        :raises ValueError: for an unknown direction.
        """
        piece = self.players[player_id]
        if direction not in STEPS:
            raise ValueError("direction must be UP, DOWN, LEFT or RIGHT")
        dx, dy = STEPS[direction]
        x, y = piece.x + dx, piece.y + dy
        if not (0 <= x < self.width and 0 <= y < self.height) or self._occupied(x, y):
            return piece
        piece.x, piece.y = x, y
        if (x, y) == self.coin:
            piece.score += 1
            self.coin = self._free_cell()
        self.tick += 1
        return piece

    def board(self, you: str = "") -> game_pb2.Board:
        """
        :param you: the player id the board is addressed to, if any.
        :return: the whole match as the protobuf message.
        """
        return game_pb2.Board(
            match=self.name,
            width=self.width,
            height=self.height,
            players=[piece.to_message() for piece in self.players.values()],
            coin=game_pb2.Cell(x=self.coin[0], y=self.coin[1]),
            you=you,
            tick=self.tick,
        )

    def _occupied(self, x: int, y: int) -> bool:
        return any(p.x == x and p.y == y for p in self.players.values())

    def _free_cell(self) -> tuple[int, int]:
        coin = getattr(self, "coin", None)
        free = [
            (x, y)
            for x in range(self.width)
            for y in range(self.height)
            if not self._occupied(x, y) and (x, y) != coin
        ]
        if not free:
            raise MatchFull(f"match {self.name} has no free cell")
        return self._rng.choice(free)
