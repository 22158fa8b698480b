"""
The rules of the example's match, tic-tac-toe, without networking.
"""

from __future__ import annotations

from typing import Any

#: The lines that win: rows, columns, diagonals (cells 0-8, row by row).
LINES = (
    (0, 1, 2), (3, 4, 5), (6, 7, 8),
    (0, 3, 6), (1, 4, 7), (2, 5, 8),
    (0, 4, 8), (2, 4, 6),
)
MARKS = ("X", "O")


class IllegalMove(Exception):
    """
    A move the rules do not allow; ``code`` is the error code for the
    client.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Board:
    """
    One match of two players, X (the first) then O.

    :param match: the match id.
    :param players: the two players' client ids.
    :param names: their names, in the same order.
    """

    def __init__(self, match: str, players: list[str], names: list[str]) -> None:
        self.match = match
        self.players = list(players)
        self.names = list(names)
        self.cells = [""] * 9
        self.turn = 0
        #: The winner's client id, ``"draw"``, or ``None`` while playing.
        self.winner: str | None = None
        self.reason = ""

    @property
    def over(self) -> bool:
        """
        Whether the match has ended.
        """
        return self.winner is not None

    def play(self, player: str, cell: Any) -> None:
        """
        Put ``player``'s mark on ``cell``.

        :raises IllegalMove: if it is not allowed.
        """
        if self.over:
            raise IllegalMove("match_over", "the match is over")
        if player not in self.players:
            raise IllegalMove("not_playing", "you do not play in this match")
        if self.players[self.turn] != player:
            raise IllegalMove("not_your_turn", "wait for your turn")
        if type(cell) is not int or not 0 <= cell <= 8:
            raise IllegalMove("bad_cell", "cell must be an integer from 0 to 8")
        if self.cells[cell]:
            raise IllegalMove("taken", f"cell {cell} is taken")
        mark = MARKS[self.turn]
        self.cells[cell] = mark
        if any(all(self.cells[i] == mark for i in line) for line in LINES):
            self.winner, self.reason = player, "line"
        elif all(self.cells):
            self.winner, self.reason = "draw", "full"
        else:
            self.turn = 1 - self.turn

    def forfeit(self, player: str) -> None:
        """
        ``player`` left: the other one wins.
        """
        if not self.over and player in self.players:
            self.winner = self.players[1 - self.players.index(player)]
            self.reason = "left"

    def state(self) -> dict[str, Any]:
        """
        :return: the match as pushed to its players.
        """
        return {
            "match": self.match,
            "players": self.players,
            "names": self.names,
            "cells": self.cells,
            "turn": None if self.over else self.players[self.turn],
            "winner": self.winner,
            "reason": self.reason,
        }
