"""
The AMP contract between gates and backends, shared by both roles.

A gate dials each backend and authenticates first (:class:`Challenge`, then
:class:`Hello`: both sides prove they hold the cluster secret with an HMAC
over fresh nonces, so the secret never crosses the wire); until then the
backend runs no other command. Then, on the same connection:

- gate → backend: :class:`ClientConnected` (answered once ``on_connect`` has
  run, with a rejection if it refused the client) and :class:`ClientEvents`
  (a batch of messages and closes, fire-and-forget);
- backend → gate: :class:`Deliver` (a batch of sends, fire-and-forget), the
  per-client mutations (:class:`JoinGroup`, :class:`BindUid`,
  :class:`SetInfo`, ... :class:`CloseClient`), answered once the gate has
  applied them, with the errors of :data:`ERRORS`, and the fire-and-forget
  notices :class:`Throttle` (backpressure on one client) and
  :class:`Draining` (the backend is shutting down);
- either way: :class:`Ping`, to notice a peer that hangs.

Client events and sends travel in batches: everything queued for one peer
during one reactor turn goes out as one AMP box, so the cost of AMP is paid
per batch, not per message. One connection keeps everything in order: a
mutation is sent only after the batch queued before it.

AMP limits every value to 65,535 bytes; :class:`Blob` carries longer byte
strings in several values (``name``, ``name.1``, ``name.2``, ...), so client
messages up to the configured maximum size cross intact.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Iterator
from typing import Any

from twisted.protocols import amp

from wsfabric.errors import (
    ClientNotFound,
    ClusterUnavailable,
    InvalidArgument,
    WsfabricError,
)
from wsfabric.message import Variants

#: The version of this wire protocol; Hello refuses a peer that speaks another.
PROTOCOL_VERSION = 1

#: The largest AMP value.
MAX_CHUNK = amp.MAX_VALUE_LENGTH


class AuthenticationFailed(WsfabricError):
    """
    A peer could not prove that it holds the cluster secret.
    """


class InternalError(WsfabricError):
    """
    The remote side failed while carrying out a command; the failure is
    logged there.
    """


class NotAuthenticated(WsfabricError):
    """
    A command arrived before the connection was authenticated.
    """


#: The errors every command may answer with, and their wire codes.
ERRORS: dict[type[Exception], bytes] = {
    ClientNotFound: b"CLIENT_NOT_FOUND",
    ClusterUnavailable: b"CLUSTER_UNAVAILABLE",
    InvalidArgument: b"INVALID_ARGUMENT",
    InternalError: b"INTERNAL",
}


class Blob(amp.Argument):
    """
    A byte string of any length (up to ``max_size``), carried in AMP values
    of at most 65,535 bytes each.

    :param max_size: the longest value accepted from a peer.
    """

    def __init__(self, max_size: int = 64 * 1024 * 1024, optional: bool = False) -> None:
        super().__init__(optional)
        self.max_size = max_size

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        """
        Split the value over ``name``, ``name.1``, ``name.2``, ...
        """
        data = self.encode(objects.pop(name.decode("ascii")))
        strings[name] = data[:MAX_CHUNK]
        for index, start in enumerate(range(MAX_CHUNK, len(data), MAX_CHUNK), 1):
            strings[name + b".%d" % index] = data[start : start + MAX_CHUNK]

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        """
        Join the chunks of ``name`` again.
        """
        first = strings.get(name)
        if first is None:
            if self.optional:
                objects[name.decode("ascii")] = None
                return
            raise KeyError(name)
        if len(first) < MAX_CHUNK:
            data = first
        else:
            parts = [first]
            size = len(first)
            index = 1
            while True:
                part = strings.get(name + b".%d" % index)
                if part is None:
                    break
                size += len(part)
                if size > self.max_size:
                    raise amp.TooLong(False, True, name, None)
                parts.append(part)
                index += 1
            data = b"".join(parts)
        objects[name.decode("ascii")] = self.decode(data)

    def encode(self, value: Any) -> bytes:
        """
        :return: ``value`` as bytes (it is bytes already).
        """
        return value

    def decode(self, data: bytes) -> Any:
        """
        :return: the value ``data`` holds (bytes).
        """
        return data


class JSON(Blob):
    """
    A JSON value, UTF-8 encoded and carried as a :class:`Blob`.
    """

    def encode(self, value: Any) -> bytes:
        """
        :return: ``value`` as compact JSON.
        """
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        """
        :return: the JSON value of ``data``.
        """
        return json.loads(data)


# -- authentication ---------------------------------------------------------------


class Challenge(amp.Command):
    """
    Gate → backend, first: ask for a fresh nonce to prove the secret with.
    """

    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"nonce", amp.String())]


class Hello(amp.Command):
    """
    Gate → backend, second: the gate's id and its proof of the secret; the
    backend answers with its own id, service and proof.
    """

    arguments = [
        (b"version", amp.Integer()),
        (b"gate_id", amp.Unicode()),
        (b"nonce", amp.String()),
        (b"proof", amp.String()),
    ]
    response = [
        (b"backend_id", amp.Unicode()),
        (b"service", amp.Unicode()),
        (b"proof", amp.String()),
        # Whether a backend of a service other than ``default`` wants its
        # clients' connect and close events (optional: older backends).
        (b"client_events", amp.Boolean(optional=True)),
    ]
    errors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}
    fatalErrors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}


def proof(secret: bytes, role: bytes, *parts: bytes) -> bytes:
    """
    :param secret: the cluster secret.
    :param role: ``b"gate"`` or ``b"backend"``, so one side's proof is never
        valid for the other.
    :param parts: the nonces and ids the proof binds.
    :return: the HMAC-SHA256 proof.
    """
    message = b"|".join((role, *parts))
    return hmac.new(secret, message, hashlib.sha256).digest()


def proofs_match(expected: bytes, given: bytes) -> bool:
    """
    Compare proofs in constant time.
    """
    return hmac.compare_digest(expected, given)


# -- gate → backend -----------------------------------------------------------------


class ClientConnected(amp.Command):
    """
    A client connected to the gate. Answered once ``on_connect`` has run;
    ``reject_code`` is set if the application refused the client.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"request", JSON())]
    response = [
        (b"reject_code", amp.Integer(optional=True)),
        (b"reject_reason", amp.Unicode(optional=True)),
    ]
    errors = ERRORS


class ClientEvents(amp.Command):
    """
    A batch of client messages and closes, in order (see
    :class:`EventBatch`). Not answered.
    """

    arguments = [(b"events", Blob())]
    requiresAnswer = False


# -- backend → gate -------------------------------------------------------------------


class Deliver(amp.Command):
    """
    A batch of sends to the gate's clients (see :class:`DeliveryBatch`). Not
    answered: sends to clients that are gone are no-ops.
    """

    arguments = [(b"deliveries", Blob())]
    requiresAnswer = False


class Throttle(amp.Command):
    """
    Stop (``paused``) or resume reading from a client whose events pile up
    behind the application. Not answered.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"paused", amp.Boolean())]
    requiresAnswer = False


class Draining(amp.Command):
    """
    The backend is shutting down: send it no new clients, and move its
    clients' next events to other backends. Not answered.
    """

    arguments: list[tuple[bytes, amp.Argument]] = []
    requiresAnswer = False


class _ClientCommand(amp.Command):
    response: list[tuple[bytes, amp.Argument]] = []
    errors = ERRORS


class JoinGroup(_ClientCommand):
    """
    Add a client to a group.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"group", amp.Unicode())]


class LeaveGroup(_ClientCommand):
    """
    Remove a client from a group.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"group", amp.Unicode())]


class BindUid(_ClientCommand):
    """
    Bind a client to a uid.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"uid", amp.Unicode())]


class UnbindUid(_ClientCommand):
    """
    Unbind a client from a uid.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"uid", amp.Unicode())]


class SetInfo(_ClientCommand):
    """
    Replace a client's info.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"info", JSON())]


class UpdateInfo(_ClientCommand):
    """
    Merge into a client's info.
    """

    arguments = [(b"client_id", amp.Unicode()), (b"info", JSON())]


class CloseClient(_ClientCommand):
    """
    Close a client; answered once no query reports it.
    """

    arguments = [
        (b"client_id", amp.Unicode()),
        (b"code", amp.Integer()),
        (b"reason", amp.Unicode()),
    ]


# -- either way -----------------------------------------------------------------------


class Ping(amp.Command):
    """
    Answered at once; a peer that does not answer in time hangs.
    """

    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []


# -- batches --------------------------------------------------------------------------

# A record's kind, in the first byte.
TEXT = 1
BINARY = 2
CLOSED = 3
VARIANTS = 4  # a wsfabric.message.Variants message (deliveries only)

_HEAD = struct.Struct("!BH")  # kind, length of the client id (or count of ids)
_ID = struct.Struct("!H")
_SIZE = struct.Struct("!I")


class EventBatch:
    """
    Client events queued for one backend, in order.

    Each record is a kind byte, the client id (two-byte length, ASCII) and,
    for a message, the payload (four-byte length).
    """

    __slots__ = ("_parts", "size", "count")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0
        self.count = 0

    def message(self, client_id: str, message: str | bytes) -> None:
        """
        Queue a message of ``client_id``.
        """
        if type(message) is str:
            kind, payload = TEXT, message.encode("utf-8")
        else:
            kind, payload = BINARY, message
        cid = client_id.encode("ascii")
        record = _HEAD.pack(kind, len(cid)) + cid + _SIZE.pack(len(payload))
        self._parts.append(record)
        self._parts.append(payload)
        self.size += len(record) + len(payload)
        self.count += 1

    def closed(self, client_id: str) -> None:
        """
        Queue the close of ``client_id``.
        """
        cid = client_id.encode("ascii")
        record = _HEAD.pack(CLOSED, len(cid)) + cid
        self._parts.append(record)
        self.size += len(record)
        self.count += 1

    def encode(self) -> bytes:
        """
        :return: the batch as bytes.
        """
        return b"".join(self._parts)


def decode_events(data: bytes) -> Iterator[tuple[int, str, str | bytes | None]]:
    """
    The inverse of :meth:`EventBatch.encode`.

    :return: ``(kind, client_id, message)`` for each record; ``message`` is
        ``str`` for text, ``bytes`` for binary, ``None`` for a close.
    :raises ValueError: if the batch is malformed.
    """
    view = memoryview(data)
    offset = 0
    end = len(data)
    try:
        while offset < end:
            kind, length = _HEAD.unpack_from(data, offset)
            offset += 3
            client_id = str(view[offset : offset + length], "ascii")
            offset += length
            if kind == CLOSED:
                yield kind, client_id, None
                continue
            (size,) = _SIZE.unpack_from(data, offset)
            offset += 4
            if offset + size > end:
                raise ValueError("truncated event batch")
            payload = bytes(view[offset : offset + size])
            offset += size
            if kind == TEXT:
                yield kind, client_id, payload.decode("utf-8")
            elif kind == BINARY:
                yield kind, client_id, payload
            else:
                raise ValueError(f"unknown event kind {kind}")
    except struct.error as e:
        raise ValueError(f"malformed event batch: {e}") from None


class DeliveryBatch:
    """
    Sends queued for one gate, in order.

    Each record is a kind byte (text, binary or variants), a two-byte count
    of client ids, the ids (each with a two-byte length), and the payload
    (four-byte length; for variants, as :meth:`Variants.encode` writes them).
    """

    __slots__ = ("_parts", "size", "count")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0
        self.count = 0

    def send(
        self, client_ids: list[str] | tuple[str, ...], message: str | bytes | Variants
    ) -> None:
        """
        Queue ``message`` for ``client_ids``.
        """
        if type(message) is str:
            kind, payload = TEXT, message.encode("utf-8")
        elif type(message) is Variants:
            kind, payload = VARIANTS, message.encode()
        else:
            kind, payload = BINARY, message
        ids = b"".join(
            _ID.pack(len(cid)) + cid for cid in (c.encode("ascii") for c in client_ids)
        )
        record = _HEAD.pack(kind, len(client_ids)) + ids + _SIZE.pack(len(payload))
        self._parts.append(record)
        self._parts.append(payload)
        self.size += len(record) + len(payload)
        self.count += 1

    def encode(self) -> bytes:
        """
        :return: the batch as bytes.
        """
        return b"".join(self._parts)


def decode_deliveries(data: bytes) -> Iterator[tuple[list[str], str | bytes | Variants]]:
    """
    The inverse of :meth:`DeliveryBatch.encode`.

    :return: ``(client_ids, message)`` for each record.
    :raises ValueError: if the batch is malformed.
    """
    view = memoryview(data)
    offset = 0
    end = len(data)
    try:
        while offset < end:
            kind, count = _HEAD.unpack_from(data, offset)
            offset += 3
            client_ids = []
            for _ in range(count):
                (length,) = _ID.unpack_from(data, offset)
                offset += 2
                client_ids.append(str(view[offset : offset + length], "ascii"))
                offset += length
            (size,) = _SIZE.unpack_from(data, offset)
            offset += 4
            if offset + size > end:
                raise ValueError("truncated delivery batch")
            payload = bytes(view[offset : offset + size])
            offset += size
            if kind == TEXT:
                yield client_ids, payload.decode("utf-8")
            elif kind == BINARY:
                yield client_ids, payload
            elif kind == VARIANTS:
                yield client_ids, Variants.decode(payload)
            else:
                raise ValueError(f"unknown delivery kind {kind}")
    except struct.error as e:
        raise ValueError(f"malformed delivery batch: {e}") from None
