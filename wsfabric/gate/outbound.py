"""
The bounded outbound queue that every client transport of a gate (the
WebSocket edge, the raw TCP transport) puts in front of its socket.

A connection writes straight to its transport while the transport keeps up.
Once the transport's buffer is full (it pauses its producer, the
connection), messages wait in a queue; when more than
``max_outbound_queue`` bytes wait, the client is a slow consumer and is
closed with 1008, so that one client that stops reading cannot make the
gate hold unbounded memory. A close asked for while messages wait is sent
after them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from wsfabric.gate.gate import CLOSE_POLICY

# Queued in place of a message: the close to send once the messages before
# it are written; its "size" is (code, reason).
_CLOSE_MARK = object()


@implementer(IPushProducer)
class OutboundQueue:
    """
    A mixin for a client connection that registers itself as its transport's
    push producer.

    The class that mixes it in has ``factory`` (with ``settings``,
    ``metrics`` and ``gate``) and ``client_id``, and provides:

    - ``_can_write()``: whether messages may still be written (the
      connection is open, not closing);
    - ``_write(item, size)``: write one queued item to the transport and
      count it;
    - ``_send_close(code, reason)``: send a close and start closing (a
      no-op once closing).
    """

    _log = Logger()

    _paused = False
    _outbound: deque[tuple[Any, Any]] | None = None
    _outbound_bytes = 0

    # The class mixing this in provides these; declared for type checkers.
    factory: Any
    client_id: str | None

    def _can_write(self) -> bool:
        raise NotImplementedError

    def _write(self, item: Any, size: int) -> None:
        raise NotImplementedError

    def _send_close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    # -- IPushProducer: the transport tells us when its buffer is full -------------

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: queue messages instead.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The transport has drained: write what waited.
        """
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        """
        The transport is going away.
        """
        self._paused = True
        self._outbound = None

    # -- for the connection ----------------------------------------------------------

    def _send(self, item: Any, size: int) -> None:
        """
        Write ``item`` now, or queue it while the transport is behind.

        :param size: the message's size in bytes, for the queue bound and
            the counters.
        """
        if not self._can_write():
            return
        if self._outbound is None and not self._paused:
            self._write(item, size)
            return
        if self._outbound is None:
            self._outbound = deque()
        self._outbound.append((item, size))
        self._outbound_bytes += size
        if self._outbound_bytes > self.factory.settings.max_outbound_queue:
            self._slow_consumer()

    def _close_after_queued(self, code: int, reason: str) -> None:
        """
        Send a close after the messages that are waiting (at once if none).
        """
        if self._outbound:
            self._outbound.append((_CLOSE_MARK, (code, reason)))
        else:
            self._send_close(code, reason)

    def _forget_queued(self) -> None:
        """
        Drop what waits (the connection is closing or gone).
        """
        self._outbound = None
        self._outbound_bytes = 0

    def _flush(self) -> None:
        outbound = self._outbound
        while outbound and not self._paused:
            item, size = outbound.popleft()
            if item is _CLOSE_MARK:
                self._forget_queued()
                self._send_close(*size)
                return
            self._outbound_bytes -= size
            if self._can_write():
                self._write(item, size)
        if outbound is not None and not outbound:
            self._forget_queued()

    def _slow_consumer(self) -> None:
        factory = self.factory
        factory.metrics.dropped("slow_consumer")
        factory.metrics.dropped("slow_consumer_messages", len(self._outbound or ()))
        self._forget_queued()
        self._log.warn(
            "client {client_id} is not reading fast enough ({limit} bytes queued); "
            "closing it as a slow consumer",
            client_id=self.client_id,
            limit=factory.settings.max_outbound_queue,
        )
        if self.client_id is not None:
            # The gate forgets the client at once; it closes the connection
            # through close(), which lands in _send_close.
            factory.gate.close_client(self.client_id, CLOSE_POLICY, "slow consumer")
        # A no-op if the gate has just closed it.
        self._send_close(CLOSE_POLICY, "slow consumer")
