"""
The chat example: nickname = uid, rooms = groups, the online list and member
lists come from fabric queries, private messages go to a uid. It runs
unchanged standalone or on a cluster::

    twistd -n wsfabric --app examples.chat.app:ChatApp --static examples/chat/static

The browser page is ``examples/chat/static/index.html``. The application is
a :class:`wsfabric.routing.Router`: the client calls routes (``chat.login``,
``chat.join``, ``chat.say``, ...) and the server pushes ``chat.message``,
``chat.private``, ``chat.online`` ...; see ``examples/chat/README.md``.
"""

from __future__ import annotations

import time
from typing import Any

from wsfabric.errors import RouteError
from wsfabric.interfaces import IFabric
from wsfabric.routing import Router, route

MAX_NICK = 32
MAX_ROOM = 64
MAX_TEXT = 2000

#: The routes the server pushes (declared so that route compression gives
#: them codes too).
PUSHES = ("chat.joined", "chat.left", "chat.message", "chat.private", "chat.online")


def _text(data: Any, key: str, limit: int) -> str:
    """
    :return: the stripped string ``data[key]``.
    :raises RouteError: ``bad_request`` if it is missing, empty or too long.
    """
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise RouteError("bad_request", f"{key} is required")
    value = value.strip()
    if len(value) > limit:
        raise RouteError("bad_request", f"{key} is longer than {limit} characters")
    return value


class ChatApp(Router):
    """
    A multi-room chat.

    :param fabric: the cluster API.
    :param clock: returns the time for message timestamps.
    """

    def __init__(self, fabric: IFabric, clock: Any = time.time) -> None:
        super().__init__(fabric, compress_routes=True)
        self.clock = clock
        self.declare_push(*PUSHES)

    async def on_client_close(self, client_id: str) -> None:
        """
        The client has left every room already; tell everyone who is online.
        """
        await self._broadcast_online()

    # -- routes -------------------------------------------------------------------

    @route("chat.login")
    async def login(self, client_id: str, data: Any) -> dict[str, Any]:
        """
        Bind the nickname as the client's uid; answer with the welcome.
        """
        nick = _text(data, "nick", MAX_NICK)
        await self.fabric.bind_uid(client_id, nick)
        welcome = {
            "nick": nick,
            "client_id": client_id,
            "rooms": await self._rooms(),
            "online": sorted(await self.fabric.get_all_uids()),
        }
        await self._broadcast_online()
        return welcome

    @route("chat.join")
    async def join(self, client_id: str, data: Any) -> dict[str, Any]:
        """
        Join a room; the room hears of it; answer with its members.
        """
        nick = await self._nick(client_id)
        room = _text(data, "room", MAX_ROOM)
        await self.fabric.join_group(client_id, room)
        await self.push_to_group(room, "chat.joined", {"room": room, "nick": nick})
        return await self._members(room)

    @route("chat.leave")
    async def leave(self, client_id: str, data: Any) -> dict[str, Any]:
        """
        Leave a room; the members left hear of it.
        """
        nick = await self._nick(client_id)
        room = _text(data, "room", MAX_ROOM)
        await self.fabric.leave_group(client_id, room)
        await self.push_to_group(room, "chat.left", {"room": room, "nick": nick})
        return {"room": room}

    @route("chat.say")
    async def say(self, client_id: str, data: Any) -> None:
        """
        Send a message to a room the client is in (the sender gets it too).
        """
        nick = await self._nick(client_id)
        room = _text(data, "room", MAX_ROOM)
        text = _text(data, "text", MAX_TEXT)
        if client_id not in await self.fabric.get_client_ids_by_group(room):
            raise RouteError("not_member", f"join {room} first")
        await self.push_to_group(
            room,
            "chat.message",
            {"room": room, "from": nick, "text": text, "ts": self.clock()},
        )

    @route("chat.pm")
    async def private(self, client_id: str, data: Any) -> None:
        """
        Send a private message to every connection of a uid, and of the
        sender.
        """
        nick = await self._nick(client_id)
        to = _text(data, "to", MAX_NICK)
        text = _text(data, "text", MAX_TEXT)
        if not await self.fabric.is_uid_online(to):
            raise RouteError("offline", f"{to} is not online")
        message = {"from": nick, "to": to, "text": text, "ts": self.clock()}
        await self.push_to_uid(to, "chat.private", message)
        if to != nick:
            # Every connection of the sender sees what it sent.
            await self.push_to_uid(nick, "chat.private", message)

    @route("chat.who")
    async def who(self, client_id: str, data: Any) -> dict[str, Any]:
        """
        :return: the members of a room.
        """
        return await self._members(_text(data, "room", MAX_ROOM))

    @route("chat.rooms")
    async def list_rooms(self, client_id: str, data: Any) -> dict[str, Any]:
        """
        :return: the rooms that have members, with their member counts.
        """
        return {"rooms": await self._rooms()}

    # -- helpers -------------------------------------------------------------------

    async def _nick(self, client_id: str) -> str:
        nick = await self.fabric.get_uid_by_client_id(client_id)
        if nick is None:
            raise RouteError("login_required", "log in first")
        return nick

    async def _members(self, room: str) -> dict[str, Any]:
        return {"room": room, "nicks": sorted(await self.fabric.get_uids_by_group(room))}

    async def _rooms(self) -> list[dict[str, Any]]:
        rooms = []
        for name in sorted(await self.fabric.get_all_groups()):
            count = await self.fabric.get_client_count_by_group(name)
            if count:
                rooms.append({"name": name, "count": count})
        return rooms

    async def _broadcast_online(self) -> None:
        nicks = sorted(await self.fabric.get_all_uids())
        await self.push_to_all("chat.online", {"nicks": nicks})
