# -*- test-case-name: tests.unit.test_client -*-
"""
What the Twisted and the asyncio WebSocket client protocols of
:mod:`wsfabric.client` share: the Autobahn callbacks, reported to a
connection :class:`~wsfabric.client._core.Attempt`, and the
:class:`~wsfabric.client._core.Link` over an Autobahn protocol.
"""

from __future__ import annotations

import re
from typing import Any

from wsfabric.errors import NotConnected

_STATUS = re.compile(r"upgrade failed \[(\d{3})\]")


def handshake_status(reason: str | None) -> int | None:
    """
    :return: the HTTP status of a refused WebSocket upgrade, read from
        Autobahn's reason, or ``None``.
    """
    match = _STATUS.search(reason or "")
    return int(match.group(1)) if match else None


class WebSocketLink:
    """
    A :class:`~wsfabric.client._core.Link` over an open Autobahn protocol.
    """

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self.subprotocol: str | None = protocol.websocket_protocol_in_use

    def send(self, message: str | bytes) -> None:
        """
        Send a text (``str``) or binary (``bytes``) message.

        :raises NotConnected: if the connection is closing.
        """
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN:
            raise NotConnected("the connection is closing")
        if isinstance(message, str):
            protocol.sendMessage(message.encode("utf-8"), isBinary=False)
        else:
            protocol.sendMessage(message, isBinary=True)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Start the closing handshake.
        """
        self._protocol.sendClose(code, reason or None)

    def abort(self) -> None:
        """
        Drop the connection at once.
        """
        self._protocol.dropConnection(abort=True)


class AttemptReporter:
    """
    Mixed into an Autobahn ``WebSocketClientProtocol`` (Twisted or asyncio):
    reports the connection's life to ``self.factory.attempt``.
    """

    factory: Any
    wasNotCleanReason: str | None
    _link: WebSocketLink | None = None

    def onOpen(self) -> None:  # noqa: N802 (Autobahn's name)
        """
        The handshake is done.
        """
        self._link = WebSocketLink(self)
        self.factory.attempt.opened(self._link)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        """
        A message: text as ``str``, binary as ``bytes``.
        """
        self.factory.attempt.message(payload if isBinary else payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        """
        The connection closed, or the handshake failed.
        """
        attempt = self.factory.attempt
        if self._link is not None:
            attempt.closed(code or 1006, reason or self.wasNotCleanReason or "")
            return
        why = self.wasNotCleanReason or reason or "the WebSocket handshake failed"
        attempt.failed(why, handshake_status(why))
