# -*- test-case-name: tests.unit.test_client -*-
"""
The client end of the raw TCP transport of docs/wire-protocol.md, without
I/O: frames are ``length (4 bytes, big-endian) = 1 + len(payload)``, a type
byte and the payload. :class:`TcpClientConnection` sends the hello, waits for
the server's, then carries messages, pings and the close handshake; the
Twisted and asyncio protocols only move bytes in and out of it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from wsfabric.client._core import Attempt

TEXT, BINARY, CLOSE, PING, PONG, HELLO = range(6)

_HEADER = struct.Struct(">IB")


class FrameError(Exception):
    """
    The peer broke the framing; ``code`` is the close code to answer with.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def encode_frame(kind: int, payload: bytes) -> bytes:
    """
    :return: one frame of ``kind`` carrying ``payload``.
    """
    return _HEADER.pack(len(payload) + 1, kind) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """
    :return: a close frame with ``code`` and ``reason`` (at most 123 bytes).
    """
    return encode_frame(CLOSE, struct.pack(">H", code) + reason.encode("utf-8")[:123])


def decode_close(payload: bytes) -> tuple[int | None, str]:
    """
    :return: the code and reason of a close frame's payload.
    """
    if len(payload) < 2:
        return None, ""
    return struct.unpack(">H", payload[:2])[0], payload[2:].decode("utf-8", "replace")


class FrameReader:
    """
    Cuts a byte stream into frames.

    :param max_size: the largest payload accepted.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """
        :return: the complete frames in the stream so far.
        :raises FrameError: for an empty or oversized frame.
        """
        self._buffer += data
        frames = []
        while len(self._buffer) >= 5:
            length, kind = _HEADER.unpack_from(self._buffer)
            if length < 1:
                raise FrameError(1002, "empty frame")
            if length - 1 > self.max_size:
                raise FrameError(1009, "message too big")
            if len(self._buffer) < 4 + length:
                break
            frames.append((kind, bytes(self._buffer[5 : 4 + length])))
            del self._buffer[: 4 + length]
        return frames


class TcpClientConnection:
    """
    One client connection of the raw TCP transport, as a
    :class:`~wsfabric.client._core.Link` once the server's hello came.

    :param attempt: the connection attempt to report to.
    :param write: writes bytes to the socket.
    :param lose: closes the socket (``abort=True``: at once).
    :param hello: the client's hello (subprotocol, path, params, headers).
    :param max_size: the largest message accepted from the server.
    :param clock: schedules keep-alive pings (none without it).
    :param ping_interval: seconds between pings once open; a server that
        sends nothing at all for a whole interval after a ping is considered
        gone and the connection is dropped (1006). ``None``: no pings.
    """

    def __init__(
        self,
        attempt: Attempt,
        write: Callable[[bytes], None],
        lose: Callable[[bool], None],
        hello: dict[str, Any],
        max_size: int,
        clock: Any = None,
        ping_interval: float | None = None,
    ) -> None:
        self._clock = clock
        self._ping_interval = ping_interval
        self._ping_call: Any = None
        self._heard = True
        self._attempt = attempt
        self._write = write
        self._lose = lose
        self._hello = hello
        self._reader = FrameReader(max_size)
        self.subprotocol: str | None = None
        self._open = False
        self._closing = False
        self._ended = False
        self._close: tuple[int | None, str] | None = None

    # -- socket events ----------------------------------------------------------------

    def connected(self) -> None:
        """
        The socket connected: send the hello.
        """
        self._write(encode_frame(HELLO, json.dumps(self._hello).encode("utf-8")))

    def data_received(self, data: bytes) -> None:
        """
        Bytes from the server.
        """
        if self._ended or self._closing:
            return
        self._heard = True
        try:
            for kind, payload in self._reader.feed(data):
                self._frame(kind, payload)
                if self._closing:
                    return
        except FrameError as e:
            self._fail(e.code, e.reason)

    def connection_lost(self, reason: str) -> None:
        """
        The socket closed.
        """
        if self._ended:
            return
        self._ended = True
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        code, why = self._close or (1006, reason or "connection lost")
        if self._open:
            self._attempt.closed(code, why)
        else:
            self._attempt.failed(why if self._close else f"connection lost: {why}", code)

    # -- frames -----------------------------------------------------------------------

    def _frame(self, kind: int, payload: bytes) -> None:
        if kind == HELLO:
            if self._open:
                self._fail(1002, "second hello")
                return
            try:
                hello = json.loads(payload)
                if not isinstance(hello, dict):
                    raise ValueError("not an object")
            except ValueError:
                self._fail(1002, "bad hello")
                return
            self._open = True
            self.subprotocol = hello.get("subprotocol")
            self._schedule_ping()
            self._attempt.opened(self)
        elif kind == CLOSE:
            self._close = decode_close(payload)
            if not self._closing:
                self._closing = True
                self._write(encode_close(self._close[0] or 1000))
            self._lose(False)
        elif kind == PING:
            self._write(encode_frame(PONG, payload[:125]))
        elif kind == PONG:
            pass
        elif not self._open:
            self._fail(1002, "message before the server's hello")
        elif kind == TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8 in a text frame")
                return
            self._attempt.message(text)
        elif kind == BINARY:
            self._attempt.message(payload)
        else:
            self._fail(1002, f"unknown frame type {kind}")

    def _schedule_ping(self) -> None:
        if self._clock is not None and self._ping_interval:
            self._ping_call = self._clock.callLater(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_call = None
        if self._ended or self._closing:
            return
        if not self._heard:
            self._close = (1006, f"no answer to a ping within {self._ping_interval:g} s")
            self.abort()
            return
        self._heard = False
        self._write(encode_frame(PING, b""))
        self._schedule_ping()

    def _fail(self, code: int, reason: str) -> None:
        self._close = (code, f"protocol error from the server: {reason}")
        self._closing = True
        self._write(encode_close(code, reason))
        self._lose(True)

    # -- the Link ---------------------------------------------------------------------

    def send(self, message: str | bytes) -> None:
        """
        Send a text (``str``) or binary (``bytes``) message.
        """
        if self._closing:
            return
        if isinstance(message, str):
            self._write(encode_frame(TEXT, message.encode("utf-8")))
        else:
            self._write(encode_frame(BINARY, message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Send a close frame and close the socket.
        """
        if self._closing:
            return
        self._closing = True
        self._close = (code, reason or "closed by the client")
        self._write(encode_close(code, reason))
        self._lose(False)

    def abort(self) -> None:
        """
        Drop the socket at once.
        """
        self._closing = True
        self._lose(True)
