"""
The ``lobby`` service: players queue with ``lobby.queue``; when two are
waiting, the lobby asks the ``game`` service for a match with
``fabric.call("game", "game.create", ...)`` and tells both players where to
play (push ``lobby.matched``).

Its queue lives in memory: run one lobby backend (a second one would hold a
second queue, since each client sticks to one backend of the service).
"""

from __future__ import annotations

from typing import Any

from wsfabric.errors import RemoteError, RequestTimeout, RouteError
from wsfabric.routing import Router, route


class LobbyApp(Router):
    """
    ``lobby.queue`` → ``{"status": "queued"}`` or ``{"status": "matched",
    "match": ...}``; ``lobby.leave`` → ``{"status": "left"}``.

    It asks for client events (``wants_client_events``) so that a player who
    disconnects while queued leaves the queue.
    """

    wants_client_events = True

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric)
        #: Client ids waiting for an opponent, oldest first.
        self.queue: list[str] = []

    @route("lobby.queue")
    async def queue_up(self, client_id: Any, data: Any) -> Any:
        if client_id is None:
            raise RouteError("not_allowed", "only clients queue")
        if client_id in self.queue:
            return {"status": "queued"}
        if not self.queue:
            self.queue.append(client_id)
            return {"status": "queued"}
        opponent = self.queue.pop(0)
        players = [opponent, client_id]
        try:
            match = await self.fabric.call("game", "game.create", {"players": players},
                                           timeout=5.0)
        except RemoteError as e:
            if e.code == "player_gone":
                # The opponent left meanwhile: this player waits instead.
                self.queue.append(client_id)
                return {"status": "queued"}
            self.queue.insert(0, opponent)
            raise RouteError("no_game", f"the game service refused: {e.code}") from None
        except RequestTimeout:
            # The match may or may not exist (a call is at most once); the
            # opponent waits again at the head of the queue.
            self.queue.insert(0, opponent)
            raise RouteError("no_game", "the game service did not answer") from None
        await self.push_to_client(opponent, "lobby.matched", match)
        return {"status": "matched", **match}

    @route("lobby.leave")
    def leave(self, client_id: Any, data: Any) -> Any:
        if client_id in self.queue:
            self.queue.remove(client_id)
        return {"status": "left"}

    def on_client_close(self, client_id: str) -> None:
        if client_id in self.queue:
            self.queue.remove(client_id)
