"""
Value types that cross wsfabric's seams: the handshake request handed to
``on_connect``, a message shared by many recipients, and the encoding of a
fan-out message on the bus.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wsfabric.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """
    What the handshake knew about a client, as passed to
    :meth:`wsfabric.interfaces.IApplication.on_connect`.

    :ivar peer: the client's address, e.g. ``"tcp4:127.0.0.1:51234"``.
    :ivar path: the request path, e.g. ``"/ws"``.
    :ivar params: the query parameters; a parameter given several times keeps
        its first value.
    :ivar headers: the request headers, names in lower case.
    :ivar subprotocol: the negotiated WebSocket subprotocol, or ``None``.
    :ivar uid: the uid bound by authentication, or ``None``.
    :ivar claims: the verified token claims, or ``{}``.
    """

    peer: str
    path: str = "/"
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    subprotocol: str | None = None
    uid: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """
        :return: a JSON-serialisable dict of every field.
        """
        return {
            "peer": self.peer,
            "path": self.path,
            "params": dict(self.params),
            "headers": dict(self.headers),
            "subprotocol": self.subprotocol,
            "uid": self.uid,
            "claims": dict(self.claims),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectRequest:
        """
        The inverse of :meth:`to_dict`.

        :param data: a dict as made by :meth:`to_dict`.
        """
        return cls(
            peer=data["peer"],
            path=data.get("path", "/"),
            params=dict(data.get("params") or {}),
            headers=dict(data.get("headers") or {}),
            subprotocol=data.get("subprotocol"),
            uid=data.get("uid"),
            claims=dict(data.get("claims") or {}),
        )


class SharedMessage:
    """
    One message going to many recipients. Each transport frames it once and
    keeps the framed form here, so a group send of N members costs one framing
    per transport, not N.

    :ivar payload: the message as bytes (UTF-8 for text).
    :ivar is_binary: whether it travels as a binary frame.
    """

    __slots__ = ("payload", "is_binary", "framed")

    def __init__(self, payload: bytes, is_binary: bool) -> None:
        self.payload = payload
        self.is_binary = is_binary
        #: Framed forms keyed by transport kind, filled in by the transports.
        self.framed: dict[str, Any] = {}

    @classmethod
    def of(cls, message: str | bytes) -> SharedMessage:
        """
        :param message: ``str`` for a text message, ``bytes`` for binary.
        """
        if isinstance(message, str):
            return cls(message.encode("utf-8"), False)
        return cls(bytes(message), True)


def check_message(message: object) -> str | bytes:
    """
    :param message: what an application asked to send.
    :return: ``message`` if it is ``str`` or bytes-like (as ``bytes``).
    :raises InvalidArgument: for any other type, or text UTF-8 cannot carry
        (a lone surrogate).
    """
    if isinstance(message, str):
        if not message.isascii():
            try:
                message.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidArgument(f"text message is not valid Unicode: {e.reason}") from None
        return message
    if isinstance(message, bytes):
        return message
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    raise InvalidArgument(
        f"message must be str (text) or bytes (binary), not {type(message).__name__}"
    )


def check_name(kind: str, value: object) -> str:
    """
    Check a uid or group name.

    :param kind: ``"uid"`` or ``"group"``, for the error message.
    :param value: the name given.
    :return: ``value``.
    :raises InvalidArgument: unless it is a non-empty ``str`` of at most 256
        characters.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{kind} must be a str, not {type(value).__name__}")
    if not value or len(value) > 256:
        raise InvalidArgument(f"{kind} must be 1 to 256 characters long")
    return value


def check_client_id(value: object) -> str:
    """
    :param value: a client id given by an application.
    :return: ``value``.
    :raises InvalidArgument: unless it is a ``str``.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"client_id must be a str, not {type(value).__name__}")
    return value


def check_info(info: object) -> dict[str, Any]:
    """
    :param info: client info given by an application.
    :return: a deep copy of ``info`` as it will be stored (through JSON).
    :raises InvalidArgument: unless it is a dict that JSON can represent.
    """
    if not isinstance(info, dict):
        raise InvalidArgument(f"info must be a dict, not {type(info).__name__}")
    try:
        return json.loads(json.dumps(info, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"info must be JSON-serialisable: {e}") from None


# The fan-out payload on the bus: one flag byte (text or binary), a two-byte
# big-endian length of the exclude list, the exclude list as client ids joined
# by newlines (client ids never contain one), then the message itself. It is
# cheap to build once per send and to parse once per gate.
_TEXT = 0
_BINARY = 1
_MAX_EXCLUDE_BYTES = 0xFFFF


def encode_fanout(message: str | bytes, exclude: Iterable[str] = ()) -> bytes:
    """
    :param message: the message to fan out.
    :param exclude: client ids that must not receive it.
    :return: the bus payload.
    :raises InvalidArgument: if the exclude list is longer than 65,535 bytes.
    """
    if isinstance(message, str):
        flag, body = _TEXT, message.encode("utf-8")
    else:
        flag, body = _BINARY, message
    excluded = "\n".join(exclude).encode("utf-8")
    if len(excluded) > _MAX_EXCLUDE_BYTES:
        raise InvalidArgument("exclude list is too long (over 65,535 bytes)")
    return bytes((flag, len(excluded) >> 8, len(excluded) & 0xFF)) + excluded + body


def decode_fanout(payload: bytes) -> tuple[SharedMessage, frozenset[str]]:
    """
    The inverse of :func:`encode_fanout`.

    :param payload: a bus payload.
    :return: the message and the set of excluded client ids.
    :raises ValueError: if the payload is malformed.
    """
    if len(payload) < 3 or payload[0] not in (_TEXT, _BINARY):
        raise ValueError("malformed fan-out payload")
    size = (payload[1] << 8) | payload[2]
    if len(payload) < 3 + size:
        raise ValueError("malformed fan-out payload")
    exclude = (
        frozenset(payload[3 : 3 + size].decode("utf-8").split("\n"))
        if size
        else frozenset()
    )
    return SharedMessage(payload[3 + size :], payload[0] == _BINARY), exclude
