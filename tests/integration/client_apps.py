"""
Routed applications for the tests of :mod:`wsfabric.client`
(tests/integration/test_client.py), run in real ``twistd`` processes.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from twisted.internet import reactor
from twisted.internet.task import deferLater

from wsfabric.errors import RouteError
from wsfabric.interfaces import IFabric
from wsfabric.routing import Router, route


class ClientTestApp(Router):
    """
    Routes that exercise every path of the client:

    - ``echo``: answers with its data; ``whoami``: the client id;
    - ``fail``: raises ``RouteError("nope", ...)``; ``crash``: raises
      ``RuntimeError`` (``internal``);
    - ``slow``: answers after ``data`` seconds;
    - ``push``: a request that pushes ``data`` to the caller on route
      ``news`` (before answering); ``note``: a notify doing the same;
    - ``proto.upper``: takes a ``StringValue`` and answers one in upper case;
      ``proto.count``: pushes ``Int64Value(value=n)`` on ``proto.tick`` for
      n in 1..data.value, then answers with ``data``.
    """

    @route("echo")
    def echo(self, client_id: str, data: Any) -> Any:
        return data

    @route("whoami")
    def whoami(self, client_id: str, data: Any) -> str:
        return client_id

    @route("fail")
    def fail(self, client_id: str, data: Any) -> None:
        raise RouteError("nope", f"refused {data!r}")

    @route("crash")
    def crash(self, client_id: str, data: Any) -> None:
        raise RuntimeError("crashed on purpose")

    @route("slow")
    async def slow(self, client_id: str, data: Any) -> str:
        await deferLater(reactor, float(data), lambda: None)
        return "done"

    @route("push")
    async def push(self, client_id: str, data: Any) -> str:
        await self.push_to_client(client_id, "news", data)
        return "pushed"

    @route("note")
    async def note(self, client_id: str, data: Any) -> None:
        await self.push_to_client(client_id, "news", data)

    @route("proto.upper", request=StringValue)
    def upper(self, client_id: str, data: StringValue) -> StringValue:
        return StringValue(value=data.value.upper())

    @route("proto.count", request=Int64Value)
    async def count(self, client_id: str, data: Int64Value) -> Int64Value:
        for n in range(1, data.value + 1):
            await self.push_to_client(client_id, "proto.tick", Int64Value(value=n))
        return data


class CompressedClientTestApp(ClientTestApp):
    """
    :class:`ClientTestApp` with route compression; ``news`` and
    ``proto.tick`` are declared push routes, so they travel as codes.
    """

    def __init__(self, fabric: IFabric) -> None:
        super().__init__(fabric, compress_routes=True)
        self.declare_push("news", "proto.tick")
