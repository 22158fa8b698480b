"""
The chat example: nickname = uid, rooms = groups, the online list and member
lists come from fabric queries, private messages go to a uid. It runs
unchanged standalone or on a cluster::

    twistd -n wsfabric --app examples.chat.app:ChatApp --static examples/chat/static

The browser page is ``examples/chat/static/index.html``. Client and server
speak JSON text frames; see ``examples/chat/README.md`` for the messages.
"""

from __future__ import annotations

import json
import time
from typing import Any

from zope.interface import implementer

from wsfabric.errors import ClientNotFound
from wsfabric.interfaces import IApplication, IFabric

MAX_NICK = 32
MAX_ROOM = 64
MAX_TEXT = 2000


class ChatError(Exception):
    """
    A request the chat cannot carry out; its message goes back to the client.
    """


def _text(payload: dict[str, Any], key: str, limit: int) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ChatError(f"{key} is required")
    value = value.strip()
    if len(value) > limit:
        raise ChatError(f"{key} is longer than {limit} characters")
    return value


@implementer(IApplication)
class ChatApp:
    """
    A multi-room chat.

    :param fabric: the cluster API.
    :param clock: returns the time for message timestamps.
    """

    def __init__(self, fabric: IFabric, clock: Any = time.time) -> None:
        self.fabric = fabric
        self.clock = clock

    async def on_connect(self, client_id: str, request: Any) -> None:
        """
        Nothing happens until the client logs in.
        """

    async def on_message(self, client_id: str, message: str | bytes) -> None:
        """
        Handle one chat request.
        """
        try:
            if not isinstance(message, str):
                raise ChatError("send JSON text frames")
            try:
                payload = json.loads(message)
            except ValueError:
                raise ChatError("not JSON") from None
            if not isinstance(payload, dict):
                raise ChatError("expected a JSON object")
            handler = self._handlers.get(payload.get("type"))
            if handler is None:
                raise ChatError(f"unknown request type {payload.get('type')!r}")
            await handler(self, client_id, payload)
        except ChatError as e:
            await self._send(client_id, {"type": "error", "message": str(e)})
        except ClientNotFound:
            # The client left while its request was being handled.
            pass

    async def on_close(self, client_id: str) -> None:
        """
        The client has left every room already; tell everyone who is online.
        """
        await self._broadcast_online()

    # -- requests -----------------------------------------------------------------

    async def _login(self, client_id: str, payload: dict[str, Any]) -> None:
        nick = _text(payload, "nick", MAX_NICK)
        await self.fabric.bind_uid(client_id, nick)
        await self._send(
            client_id,
            {
                "type": "welcome",
                "nick": nick,
                "client_id": client_id,
                "rooms": await self._rooms(),
                "online": sorted(await self.fabric.get_all_uids()),
            },
        )
        await self._broadcast_online()

    async def _join(self, client_id: str, payload: dict[str, Any]) -> None:
        nick = await self._nick(client_id)
        room = _text(payload, "room", MAX_ROOM)
        await self.fabric.join_group(client_id, room)
        await self.fabric.send_to_group(
            room, _json({"type": "joined", "room": room, "nick": nick})
        )
        await self._members(client_id, room)

    async def _leave(self, client_id: str, payload: dict[str, Any]) -> None:
        nick = await self._nick(client_id)
        room = _text(payload, "room", MAX_ROOM)
        await self.fabric.leave_group(client_id, room)
        message = _json({"type": "left", "room": room, "nick": nick})
        await self.fabric.send_to_group(room, message)
        await self._send(client_id, json.loads(message))

    async def _say(self, client_id: str, payload: dict[str, Any]) -> None:
        nick = await self._nick(client_id)
        room = _text(payload, "room", MAX_ROOM)
        text = _text(payload, "text", MAX_TEXT)
        if client_id not in await self.fabric.get_client_ids_by_group(room):
            raise ChatError(f"join {room} first")
        await self.fabric.send_to_group(
            room,
            _json(
                {
                    "type": "message",
                    "room": room,
                    "from": nick,
                    "text": text,
                    "ts": self.clock(),
                }
            ),
        )

    async def _private(self, client_id: str, payload: dict[str, Any]) -> None:
        nick = await self._nick(client_id)
        to = _text(payload, "to", MAX_NICK)
        text = _text(payload, "text", MAX_TEXT)
        if not await self.fabric.is_uid_online(to):
            raise ChatError(f"{to} is not online")
        message = _json(
            {"type": "private", "from": nick, "to": to, "text": text, "ts": self.clock()}
        )
        await self.fabric.send_to_uid(to, message)
        if to != nick:
            # Every connection of the sender sees what it sent.
            await self.fabric.send_to_uid(nick, message)

    async def _who(self, client_id: str, payload: dict[str, Any]) -> None:
        await self._members(client_id, _text(payload, "room", MAX_ROOM))

    async def _list_rooms(self, client_id: str, payload: dict[str, Any]) -> None:
        await self._send(client_id, {"type": "rooms", "rooms": await self._rooms()})

    _handlers = {
        "login": _login,
        "join": _join,
        "leave": _leave,
        "say": _say,
        "pm": _private,
        "who": _who,
        "rooms": _list_rooms,
    }

    # -- helpers -------------------------------------------------------------------

    async def _nick(self, client_id: str) -> str:
        nick = await self.fabric.get_uid_by_client_id(client_id)
        if nick is None:
            raise ChatError("log in first")
        return nick

    async def _members(self, client_id: str, room: str) -> None:
        nicks = sorted(await self.fabric.get_uids_by_group(room))
        await self._send(client_id, {"type": "members", "room": room, "nicks": nicks})

    async def _rooms(self) -> list[dict[str, Any]]:
        rooms = []
        for name in sorted(await self.fabric.get_all_groups()):
            count = await self.fabric.get_client_count_by_group(name)
            if count:
                rooms.append({"name": name, "count": count})
        return rooms

    async def _broadcast_online(self) -> None:
        nicks = sorted(await self.fabric.get_all_uids())
        await self.fabric.send_to_all(_json({"type": "online", "nicks": nicks}))

    async def _send(self, client_id: str, payload: dict[str, Any]) -> None:
        await self.fabric.send_to_client(client_id, _json(payload))


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))
