"""
The server side of ``wsfabric_js_routed_test.html``: a
:class:`wsfabric.routing.Router` with one route per behaviour the routed
layer of wsfabric.js must handle (answers, errors, slow answers, pushes,
raw messages, groups, server-side closes)::

    twistd -n wsfabric --app tests.browser.routed_app:RoutedTestApp --static tests/browser
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from wsfabric.errors import RouteError
from wsfabric.interfaces import IFabric
from wsfabric.routing import Router, route

#: Longest wait test.slow accepts, so that no test leaves a handler behind.
MAX_SLOW_MS = 10000


def _fields(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RouteError("bad_request", "data must be an object")
    return data


class RoutedTestApp(Router):
    """
    Test routes; route compression is on, with test.tick and test.said
    declared as pushes (test.other is pushed by name).

    :param fabric: the fabric.
    :param clock: the reactor's clock (the global reactor by default).
    """

    def __init__(self, fabric: IFabric, clock: IReactorTime | None = None) -> None:
        super().__init__(fabric, compress_routes=True)
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.declare_push("test.tick", "test.said")

    @route("test.echo")
    def echo(self, client_id: str, data: Any) -> Any:
        return data

    @route("test.fail")
    def fail(self, client_id: str, data: Any) -> Any:
        fields = _fields(data)
        raise RouteError(str(fields.get("code", "failed")), str(fields.get("message", "")))

    @route("test.boom")
    def boom(self, client_id: str, data: Any) -> Any:
        raise ValueError("test.boom fails on purpose")

    @route("test.slow")
    def slow(self, client_id: str, data: Any) -> Deferred[Any]:
        """
        Answer ``value`` after ``ms``; with ``close: {after, code, reason}``,
        close the client ``after`` ms first (the answer then goes nowhere).
        The client's later messages wait for this one, as always.
        """
        fields = _fields(data)
        ms = min(max(int(fields.get("ms", 0)), 0), MAX_SLOW_MS)
        close = fields.get("close")
        if isinstance(close, dict):
            self.clock.callLater(
                min(max(int(close.get("after", 0)), 0), MAX_SLOW_MS) / 1000,
                self.fabric.close_client,
                client_id,
                int(close.get("code", 1000)),
                str(close.get("reason", "")),
            )
        return deferLater(self.clock, ms / 1000, lambda: fields.get("value"))

    @route("test.push")
    async def push(self, client_id: str, data: Any) -> None:
        fields = _fields(data)
        for n in range(min(int(fields.get("count", 1)), 100)):
            await self.push_to_client(client_id, str(fields["route"]), {"n": n})

    @route("test.raw")
    async def raw(self, client_id: str, data: Any) -> None:
        """
        Send a raw message, not an envelope: ``text``, or ``bytes`` (a list
        of byte values) as a binary message.
        """
        fields = _fields(data)
        if "bytes" in fields:
            await self.fabric.send_to_client(client_id, bytes(fields["bytes"]))
        else:
            await self.fabric.send_to_client(client_id, str(fields["text"]))

    @route("test.close")
    async def close(self, client_id: str, data: Any) -> None:
        fields = _fields(data)
        await self.fabric.close_client(
            client_id, int(fields.get("code", 1000)), str(fields.get("reason", ""))
        )

    @route("test.join")
    async def join(self, client_id: str, data: Any) -> None:
        await self.fabric.join_group(client_id, str(_fields(data)["group"]))

    @route("test.say")
    async def say(self, client_id: str, data: Any) -> None:
        fields = _fields(data)
        await self.push_to_group(
            str(fields["group"]), "test.said", {"group": fields["group"], "text": fields["text"]}
        )
