"""
The game example: players on a shared grid pick up coins. Its messages are
protobuf (``examples/game/game.proto``); handlers declare their request
type, answer with protobuf messages, and the server pushes the board to the
match's group after every change::

    twistd -n wsfabric --app examples.game.app:GameApp --static examples/game/static
    python -m examples.game.bot

Routes:

- ``game.join`` (:class:`~examples.game.game_pb2.JoinRequest`) →
  :class:`~examples.game.game_pb2.Board`: enter a match (group
  ``game:<match>``) as a player, or only watch it.
- ``game.move`` (:class:`~examples.game.game_pb2.MoveRequest`) →
  :class:`~examples.game.game_pb2.Player`: one step.
- ``game.leave`` (no data) → nothing: leave the match.
- push ``game.board`` (:class:`~examples.game.game_pb2.Board`): to every
  member of the match after a change.

The bot speaks the ``wsfabric.proto`` codec, the browser view
``wsfabric.json``; the router converts.

The matches live in this process's memory: run it standalone, or on a
cluster with a single backend (the clients may use any gate).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from examples.game import game_pb2
from examples.game.match import Match, MatchFull
from wsfabric.errors import RouteError
from wsfabric.interfaces import IFabric
from wsfabric.routing import Router, route

MAX_MATCH = 32
MAX_NAME = 16
#: The shortest time between two moves of one player, in seconds.
MOVE_INTERVAL = 0.05


@dataclass
class _Seat:
    """Where a client is: its match, and whether it plays or watches."""

    match: str
    playing: bool
    last_move: float = float("-inf")


def _group(match: str) -> str:
    return f"game:{match}"


def _name(value: str, what: str, limit: int) -> str:
    value = value.strip()
    if not 1 <= len(value) <= limit:
        raise RouteError("bad_request", f"{what} must have 1 to {limit} characters")
    return value


class GameApp(Router):
    """
    The game server.

    :param fabric: the cluster API.
    :param clock: the reactor's clock, for the move rate limit (the global
        reactor by default).
    :param rng: where random cells come from.
    """

    def __init__(
        self,
        fabric: IFabric,
        clock: IReactorTime | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(fabric, compress_routes=True)
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.rng = rng or random.Random()
        self.matches: dict[str, Match] = {}
        self.seats: dict[str, _Seat] = {}
        self.declare_push("game.board")

    # -- routes -------------------------------------------------------------------

    @route("game.join", request=game_pb2.JoinRequest)
    async def join(self, client_id: str, request: game_pb2.JoinRequest) -> game_pb2.Board:
        """
        Enter a match, as a player or a watcher; a client is in one match at
        a time (joining another leaves the first).
        """
        match_name = _name(request.match, "match", MAX_MATCH)
        name = "" if request.watch else _name(request.name, "name", MAX_NAME)
        seat = self.seats.get(client_id)
        if seat is not None and seat.match != match_name:
            await self._leave(client_id)
            seat = None
        if seat is None:
            # Seated before the await, so that the match cannot be dropped
            # as empty by someone else's leave meanwhile.
            seat = self.seats[client_id] = _Seat(match_name, playing=False)
            await self.fabric.join_group(client_id, _group(match_name))
        match = self.matches.get(match_name)
        if match is None:
            match = self.matches[match_name] = Match(match_name, self.rng)
        if not request.watch and not seat.playing:
            try:
                match.add(client_id, name)
            except MatchFull as e:
                raise RouteError("match_full", str(e)) from None
            seat.playing = True
            await self._broadcast(match)
        return match.board(you=client_id if seat.playing else "")

    @route("game.move", request=game_pb2.MoveRequest)
    async def move(self, client_id: str, request: game_pb2.MoveRequest) -> game_pb2.Player:
        """
        Step one cell; the match gets the new board if anything changed.
        """
        seat = self.seats.get(client_id)
        if seat is None or not seat.playing:
            raise RouteError("not_playing", "join a match as a player first")
        now = self.clock.seconds()
        if now - seat.last_move < MOVE_INTERVAL:
            raise RouteError("too_fast", f"at most one move every {MOVE_INTERVAL} s")
        match = self.matches[seat.match]
        tick = match.tick
        try:
            piece = match.move(client_id, request.direction)
        except ValueError as e:
            raise RouteError("bad_request", str(e)) from None
        seat.last_move = now
        if match.tick != tick:
            await self._broadcast(match)
        return piece.to_message()

    @route("game.leave")
    async def leave(self, client_id: str, data: Any) -> None:
        """
        Leave the match the client is in, if any.
        """
        await self._leave(client_id)

    async def on_client_close(self, client_id: str) -> None:
        """
        A player who disconnects leaves the grid (the fabric has taken it
        out of the group already).
        """
        await self._leave(client_id, in_group=False)

    # -- helpers -------------------------------------------------------------------

    async def _leave(self, client_id: str, in_group: bool = True) -> None:
        seat = self.seats.pop(client_id, None)
        if seat is None:
            return
        if in_group:
            await self.fabric.leave_group(client_id, _group(seat.match))
        match = self.matches.get(seat.match)
        if match is None:
            return
        if not any(s.match == seat.match for s in self.seats.values()):
            del self.matches[seat.match]
        if match.remove(client_id):
            await self._broadcast(match)

    def _broadcast(self, match: Match) -> Any:
        return self.push_to_group(_group(match.name), "game.board", match.board())
