"""
Small applications for unit tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from wsfabric.errors import Reject
from wsfabric.interfaces import IApplication


@implementer(IApplication)
class RecordingApp:
    """
    Records every event as ``(kind, client_id[, argument])``. Behaviour can be
    changed per test through the attributes.

    :ivar reject: a :class:`Reject` to raise from ``on_connect``, or ``None``.
    :ivar fail_on: a message that makes ``on_message`` raise.
    :ivar hold: when set, ``on_message`` returns an unfired Deferred, kept in
        ``held``.
    """

    def __init__(self, fabric: Any) -> None:
        self.fabric = fabric
        self.events: list[tuple[Any, ...]] = []
        self.reject: Reject | None = None
        self.fail_on: object = None
        self.hold = False
        self.held: list[Deferred[None]] = []

    def on_connect(self, client_id: str, request: Any) -> None:
        self.events.append(("connect", client_id, request))
        if self.reject is not None:
            raise self.reject

    def on_message(self, client_id: str, message: Any) -> Any:
        self.events.append(("message", client_id, message))
        if message == self.fail_on:
            raise RuntimeError(f"boom on {message!r}")
        if self.hold:
            waiter: Deferred[None] = Deferred()
            self.held.append(waiter)
            return waiter
        return None

    def on_close(self, client_id: str) -> None:
        self.events.append(("close", client_id))

    def kinds(self, client_id: str) -> list[Any]:
        return [
            event[0] if event[0] != "message" else event[2]
            for event in self.events
            if event[1] == client_id
        ]
