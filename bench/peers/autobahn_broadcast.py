"""
Raw Autobahn-on-Twisted broadcast server: the fan-out baseline of TARGETS.md (P4).

A message from any client is sent to every connected client, the sender
included. ``--mode naive`` calls ``sendMessage`` once per client (framing the
message each time); ``--mode prepared`` frames it once with
``factory.prepareMessage`` and sends it with ``sendPreparedMessage``.

    python bench/peers/autobahn_broadcast.py --port 9000 --mode prepared
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import install_epoll_reactor, listen, parse_port, raise_nofile  # noqa: E402

install_epoll_reactor()

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketServerFactory,
    WebSocketServerProtocol,
)


class BroadcastProtocol(WebSocketServerProtocol):
    """Register with the factory once open; hand every message to it."""

    factory: BroadcastFactory

    def onOpen(self) -> None:  # noqa: N802
        """Join the set of receivers."""
        self.factory.clients.add(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        """Leave the set of receivers (also called for failed handshakes)."""
        self.factory.clients.discard(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        """Fan ``payload`` out to everyone."""
        self.factory.broadcast(payload, isBinary)


class BroadcastFactory(WebSocketServerFactory):
    """Holds the open connections and sends to all of them."""

    protocol = BroadcastProtocol

    def __init__(self, mode: str) -> None:
        """:param mode: ``"naive"`` or ``"prepared"``."""
        super().__init__()
        self.clients: set[BroadcastProtocol] = set()
        self.broadcast = self._naive if mode == "naive" else self._prepared

    def _naive(self, payload: bytes, is_binary: bool) -> None:
        """Frame and send the message once per client."""
        for client in self.clients:
            client.sendMessage(payload, is_binary)

    def _prepared(self, payload: bytes, is_binary: bool) -> None:
        """Frame the message once, then queue the same bytes on every client."""
        prepared = self.prepareMessage(payload, is_binary)
        for client in self.clients:
            client.sendPreparedMessage(prepared)


def main() -> None:
    """Parse ``--port`` and ``--mode`` and serve until terminated."""
    args = parse_port(__doc__.strip().splitlines()[0])
    raise_nofile()
    listen(BroadcastFactory(args.mode), args.port)


if __name__ == "__main__":
    main()
