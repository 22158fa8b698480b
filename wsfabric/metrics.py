"""
The counters a node keeps about its own traffic.

They are plain integers updated on the hot paths (one attribute increment
each, no locks); the admin listener exports them in Prometheus format. Every
loss the node can detect is counted here by cause, so that no drop is
silent.
"""

from __future__ import annotations

from collections import Counter


class Metrics:
    """
    Traffic counters of one node.

    :ivar connections: clients connected now.
    :ivar connections_opened: clients accepted since start.
    :ivar connections_closed: clients gone since start.
    :ivar rejected_total: clients refused by ``on_connect``.
    :ivar messages_in: messages received from clients.
    :ivar bytes_in: payload bytes received from clients.
    :ivar deliveries: messages handed to client connections (one per
        recipient).
    :ivar messages_out: messages written to client connections.
    :ivar bytes_out: payload bytes written to client connections.
    :ivar drops: messages or clients dropped, by cause (``slow_consumer``,
        ``oversize``, ``malformed``, ...).
    :ivar closes: closed connections by close code.
    :ivar hook_errors: exceptions raised by application hooks.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.rejected_total = 0
        self.messages_in = 0
        self.bytes_in = 0
        self.deliveries = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.drops: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.hook_errors = 0

    def connection_opened(self) -> None:
        """
        A client was accepted.
        """
        self.connections += 1
        self.connections_opened += 1

    def connection_closed(self) -> None:
        """
        A client has gone.
        """
        self.connections -= 1
        self.connections_closed += 1

    def rejected(self) -> None:
        """
        ``on_connect`` refused a client.
        """
        self.rejected_total += 1

    def message_in(self, size: int) -> None:
        """
        A client sent a message of ``size`` payload bytes.
        """
        self.messages_in += 1
        self.bytes_in += size

    def message_out(self, size: int) -> None:
        """
        A message of ``size`` payload bytes was written to a client.
        """
        self.messages_out += 1
        self.bytes_out += size

    def delivered(self, count: int) -> None:
        """
        A message was handed to ``count`` client connections.
        """
        self.deliveries += count

    def dropped(self, cause: str, count: int = 1) -> None:
        """
        ``count`` messages or clients were dropped because of ``cause``.
        """
        self.drops[cause] += count

    def closed_with(self, code: int | None) -> None:
        """
        A connection closed with ``code`` (``None`` when no close frame was
        exchanged).
        """
        self.closes[code if code is not None else 1006] += 1

    def hook_failed(self) -> None:
        """
        An application hook raised.
        """
        self.hook_errors += 1
