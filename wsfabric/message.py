"""
Value types that cross wsfabric's seams: the handshake request handed to
``on_connect``, a message shared by many recipients, a message in one form
per codec (:class:`Variants`), and the encoding of a fan-out message on the
bus.
"""

from __future__ import annotations

import json
import struct
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


#: The variant kinds of :class:`Variants`, as the gate picks them per client.
JSON_VARIANT, JSON_ROUTES_VARIANT, PROTO_VARIANT, PROTO_ROUTES_VARIANT = range(4)
#: The names of the variant kinds, by kind.
VARIANT_NAMES = ("json", "json+routes", "proto", "proto+routes")

_VARIANT_HEAD = struct.Struct("!BI")  # type (text, binary, same), length
_SAME = 2


def variant_of(request: ConnectRequest) -> int:
    """
    The variant of a :class:`Variants` message a client receives, fixed at
    connect from its handshake: the ``proto`` forms for a client that
    negotiated the ``wsfabric.proto`` subprotocol, the ``json`` forms for
    any other; the ``+routes`` (route-compressed) forms when it asked for
    route compression with the query parameter ``routes=1``.

    :param request: the client's handshake.
    :return: one of :data:`JSON_VARIANT` ... :data:`PROTO_ROUTES_VARIANT`.
    """
    kind = PROTO_VARIANT if request.subprotocol == "wsfabric.proto" else JSON_VARIANT
    if request.params.get("routes") == "1":
        kind += 1
    return kind


class Variants:
    """
    One message in a form per kind of recipient: the routing layer's pushes
    to clients that speak different codecs (JSON or protobuf, with or
    without route compression). Every :class:`~wsfabric.interfaces.IFabric`
    send method accepts it in place of ``str``/``bytes``; it travels through
    the bus and AMP as one message, and each gate gives each client the form
    of its kind (:func:`variant_of`), framing each form once.

    :param json: the form for JSON clients.
    :param proto: the form for protobuf clients.
    :param json_routes: the form for JSON clients that use route
        compression (``None``: the same as ``json``).
    :param proto_routes: the same for protobuf clients (``None``: the same
        as ``proto``).
    :raises InvalidArgument: if a form is neither ``str`` nor ``bytes``.
    :ivar messages: the four forms, indexed by variant kind.
    """

    __slots__ = ("messages",)

    def __init__(
        self,
        json: str | bytes,
        proto: str | bytes,
        json_routes: str | bytes | None = None,
        proto_routes: str | bytes | None = None,
    ) -> None:
        json = check_message(json)
        proto = check_message(proto)
        self.messages: tuple[str | bytes, ...] = (
            json,
            json if json_routes is None else check_message(json_routes),
            proto,
            proto if proto_routes is None else check_message(proto_routes),
        )

    def pick(self, kind: int) -> str | bytes:
        """
        :param kind: a variant kind (see :func:`variant_of`).
        :return: the form for that kind.
        """
        return self.messages[kind]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Variants) and self.messages == other.messages

    def __hash__(self) -> int:
        return hash(self.messages)

    def __repr__(self) -> str:
        return f"Variants{self.messages!r}"

    def encode(self) -> bytes:
        """
        :return: the four forms as bytes: per form a type byte (text, binary,
            or the same as the form before), a four-byte length and the body.
        """
        parts = []
        previous: str | bytes | None = None
        for message in self.messages:
            if message is previous or (previous is not None and message == previous):
                parts.append(_VARIANT_HEAD.pack(_SAME, 0))
                continue
            if type(message) is str:
                body = message.encode("utf-8")
                parts.append(_VARIANT_HEAD.pack(_TEXT, len(body)))
            else:
                body = message  # type: ignore[assignment]
                parts.append(_VARIANT_HEAD.pack(_BINARY, len(body)))
            parts.append(body)
            previous = message
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Variants:
        """
        The inverse of :meth:`encode`; forms that were the same are one
        object again, so that they are framed once.

        :raises ValueError: if ``data`` is malformed.
        """
        view = memoryview(data)
        offset = 0
        messages: list[str | bytes] = []
        try:
            for _ in range(4):
                kind, size = _VARIANT_HEAD.unpack_from(view, offset)
                offset += _VARIANT_HEAD.size
                if kind == _SAME:
                    if not messages:
                        raise ValueError("malformed variants: nothing to repeat")
                    messages.append(messages[-1])
                    continue
                if offset + size > len(view) or kind not in (_TEXT, _BINARY):
                    raise ValueError("malformed variants")
                body = bytes(view[offset : offset + size])
                offset += size
                messages.append(body.decode("utf-8") if kind == _TEXT else body)
        except struct.error:
            raise ValueError("malformed variants: truncated") from None
        if offset != len(view):
            raise ValueError("malformed variants: trailing bytes")
        variants = cls.__new__(cls)
        variants.messages = tuple(messages)
        return variants


class SharedVariants:
    """
    A :class:`Variants` message going to many recipients: one
    :class:`SharedMessage` per distinct form, so that each form is framed
    once per transport.

    :ivar shared: the shared forms, indexed by variant kind.
    """

    __slots__ = ("shared",)

    def __init__(self, variants: Variants) -> None:
        shared: list[SharedMessage] = []
        previous: Any = None
        for message in variants.messages:
            if shared and message is previous:
                shared.append(shared[-1])
            else:
                shared.append(SharedMessage.of(message))
            previous = message
        self.shared: tuple[SharedMessage, ...] = tuple(shared)


def check_message(message: object) -> str | bytes | Variants:
    """
    :param message: what an application asked to send.
    :return: ``message`` if it is ``str``, :class:`Variants` or bytes-like
        (as ``bytes``).
    :raises InvalidArgument: for any other type, or text UTF-8 cannot carry
        (a lone surrogate).
    """
    if type(message) is Variants:
        return message
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


# The fan-out payload on the bus: one flag byte (text, binary or variants), a
# two-byte big-endian length of the exclude list, the exclude list as client
# ids joined by newlines (client ids never contain one), then the message
# itself (for variants, as Variants.encode writes them). It is cheap to build
# once per send and to parse once per gate.
_TEXT = 0
_BINARY = 1
_VARIANTS = 2
_MAX_EXCLUDE_BYTES = 0xFFFF


def encode_fanout(message: str | bytes | Variants, exclude: Iterable[str] = ()) -> bytes:
    """
    :param message: the message to fan out.
    :param exclude: client ids that must not receive it.
    :return: the bus payload.
    :raises InvalidArgument: if the exclude list is longer than 65,535 bytes.
    """
    if isinstance(message, str):
        flag, body = _TEXT, message.encode("utf-8")
    elif type(message) is Variants:
        flag, body = _VARIANTS, message.encode()
    else:
        flag, body = _BINARY, message
    excluded = "\n".join(exclude).encode("utf-8")
    if len(excluded) > _MAX_EXCLUDE_BYTES:
        raise InvalidArgument("exclude list is too long (over 65,535 bytes)")
    return bytes((flag, len(excluded) >> 8, len(excluded) & 0xFF)) + excluded + body


def decode_fanout(
    payload: bytes,
) -> tuple[SharedMessage | SharedVariants, frozenset[str]]:
    """
    The inverse of :func:`encode_fanout`.

    :param payload: a bus payload.
    :return: the message (a :class:`SharedVariants` for variants) and the
        set of excluded client ids.
    :raises ValueError: if the payload is malformed.
    """
    if len(payload) < 3 or payload[0] not in (_TEXT, _BINARY, _VARIANTS):
        raise ValueError("malformed fan-out payload")
    size = (payload[1] << 8) | payload[2]
    if len(payload) < 3 + size:
        raise ValueError("malformed fan-out payload")
    exclude = (
        frozenset(payload[3 : 3 + size].decode("utf-8").split("\n"))
        if size
        else frozenset()
    )
    if payload[0] == _VARIANTS:
        return SharedVariants(Variants.decode(memoryview(payload)[3 + size :])), exclude
    return SharedMessage(payload[3 + size :], payload[0] == _BINARY), exclude
