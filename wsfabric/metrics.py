"""
The counters a node keeps about its own traffic.

They are plain integers updated on the hot paths (one attribute increment
each, no locks); the admin listener exports them in Prometheus format. Every
loss the node can detect is counted here by cause, so that no drop is
silent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

#: Upper bounds (seconds) of the AMP call latency histogram's buckets.
AMP_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


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
        ``oversize``, ``malformed``, ...; clients closed for sending too
        fast: ``rate_limit``, whose token expired: ``token_expired``;
        handshakes refused: ``origin``, ``unauthorized``, ``ip_limit``,
        ``uid_limit``; on a gate, client messages no backend could take:
        ``no_backend`` (no ``default`` backend registered) and
        ``service_unavailable`` (answered with that error)).
    :ivar closes: closed connections by close code.
    :ivar hook_errors: exceptions raised by application hooks.
    :ivar amp_calls: AMP calls this node made that have finished.
    :ivar amp_call_seconds: their total duration.
    :ivar amp_call_buckets: how many took at most each bound of
        :data:`AMP_LATENCY_BUCKETS` (not cumulative; the last slot counts
        the slower ones).
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
        self.amp_calls = 0
        self.amp_call_seconds = 0.0
        self.amp_call_buckets = [0] * (len(AMP_LATENCY_BUCKETS) + 1)

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

    def amp_call(self, seconds: float) -> None:
        """
        An AMP call to a peer finished (answered or failed) after ``seconds``.
        """
        self.amp_calls += 1
        self.amp_call_seconds += seconds
        self.amp_call_buckets[bisect_left(AMP_LATENCY_BUCKETS, seconds)] += 1
