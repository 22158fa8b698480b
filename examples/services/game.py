"""
The ``game`` service: runs tic-tac-toe matches. The lobby creates a match
with a service call (``game.create``, which no client may call); players
send ``game.move``; after every change the state is pushed to the match's
group ``match:<id>``, so both players see it whichever gate they are on.

Its matches live in memory: run one game backend (each client sticks to one
backend of the service, so a second backend would not find the matches of
the first).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from examples.services.board import Board, IllegalMove
from wsfabric.errors import ClientNotFound, RouteError
from wsfabric.routing import Router, route


def _group(match: str) -> str:
    return f"match:{match}"


class GameApp(Router):
    """
    Routes:

    - ``game.create`` (services only) ``{"players": [a, b]}`` →
      ``{"match": id, "players": [...], "names": [...]}``;
    - ``game.move`` ``{"match": id, "cell": 0-8}`` → the match's state;
    - push ``game.state`` to the match after every change.

    It asks for client events (``wants_client_events``): a player who
    disconnects loses the match.
    """

    wants_client_events = True

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric)
        self.matches: dict[str, Board] = {}
        self.seats: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"

    @route("game.create")
    async def create(self, client_id: Any, data: Any) -> Any:
        if client_id is not None:
            raise RouteError("not_allowed", "matches are created by the lobby")
        players = data.get("players") if isinstance(data, dict) else None
        if (
            not isinstance(players, list)
            or len(players) != 2
            or not all(isinstance(p, str) for p in players)
            or players[0] == players[1]
        ):
            raise RouteError("bad_request", "players must be two client ids")
        match = f"{self._prefix}-{next(self._ids)}"
        names = []
        for player in players:
            info = await self.fabric.get_info(player)
            names.append(str(info.get("name") or player[-6:]))
        board = Board(match, players, names)
        try:
            for player in players:
                await self.fabric.join_group(player, _group(match))
        except ClientNotFound:
            await self.fabric.ungroup(_group(match))
            raise RouteError("player_gone", "a player left before the match began") from None
        self.matches[match] = board
        for player in players:
            self.seats[player] = match
        await self.push_to_group(_group(match), "game.state", board.state())
        return {"match": match, "players": players, "names": names}

    @route("game.move")
    async def move(self, client_id: Any, data: Any) -> Any:
        if not isinstance(data, dict):
            raise RouteError("bad_request", 'expected {"match": ..., "cell": ...}')
        board = self.matches.get(data.get("match"))  # type: ignore[arg-type]
        if board is None:
            raise RouteError("no_match", "no such match on this game server")
        try:
            board.play(client_id, data.get("cell"))
        except IllegalMove as e:
            raise RouteError(e.code, e.message) from None
        await self._changed(board)
        return board.state()

    async def _changed(self, board: Board) -> None:
        await self.push_to_group(_group(board.match), "game.state", board.state())
        if board.over:
            del self.matches[board.match]
            for player in board.players:
                if self.seats.get(player) == board.match:
                    del self.seats[player]
            await self.fabric.ungroup(_group(board.match))

    async def on_client_close(self, client_id: str) -> None:
        match = self.seats.pop(client_id, None)
        board = self.matches.get(match) if match is not None else None
        if board is not None:
            board.forfeit(client_id)
            await self._changed(board)
