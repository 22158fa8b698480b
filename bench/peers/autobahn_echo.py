"""
Raw Autobahn-on-Twisted echo server: the echo baseline of TARGETS.md (P1, P2, P6).

Every message is sent back as it came (text or binary). Any path is accepted.

    python bench/peers/autobahn_echo.py --port 9000
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


class EchoProtocol(WebSocketServerProtocol):
    """Send every message back to its sender."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        """Echo ``payload`` with the same frame type."""
        self.sendMessage(payload, isBinary)


def main() -> None:
    """Parse ``--port`` and serve until terminated."""
    args = parse_port(__doc__.strip().splitlines()[0])
    raise_nofile()
    factory = WebSocketServerFactory()
    factory.protocol = EchoProtocol
    listen(factory, args.port)


if __name__ == "__main__":
    main()
