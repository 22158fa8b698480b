"""
The two codecs of routed messages: ``wsfabric.json`` (text frames carrying a
JSON object) and ``wsfabric.proto`` (binary frames carrying a
``wsfabric.Envelope``, see ``envelope.proto``). docs/wire-protocol.md is the
specification; this module is its only implementation, shared by the server
(:class:`~wsfabric.routing.Router`) and the Python client.

Each codec works in both directions:

- server side: :meth:`~JsonCodec.decode_inbound` reads what a client sent
  (raising :class:`~wsfabric.errors.BadEnvelope` with code ``bad_request``
  for anything malformed), and :meth:`~JsonCodec.encode_response`,
  :meth:`~JsonCodec.encode_error`, :meth:`~JsonCodec.encode_push` and
  :meth:`~JsonCodec.encode_route_table` write what the server sends;
- client side: :meth:`~JsonCodec.encode_request` writes a request or notify
  and :meth:`~JsonCodec.decode_outbound` reads what the server sent.

``data`` is converted at the edges: :meth:`~JsonCodec.decode_data` turns the
``data`` of a decoded envelope into what a handler (or a client's response
callback) wants — a JSON value, or an instance of a declared protobuf
message type — and the encoders accept a JSON value or a protobuf message
and write it the way the codec carries it:

========================  ===========================  ==========================
value                     ``wsfabric.json``            ``wsfabric.proto``
========================  ===========================  ==========================
protobuf message          its JSON mapping (field      its serialised bytes
                          names as in the .proto)
``bytes``                 refused (not JSON)           as is
any other JSON value      as is                        UTF-8 JSON bytes (``None``
                                                       is empty)
========================  ===========================  ==========================

Usage::

    codec = codec_for("wsfabric.json")
    inbound = codec.decode_inbound('{"route": "chat.send", "id": 7, "data": {}}')
    reply = codec.encode_response(inbound.id, {"ok": True})
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from wsfabric.errors import BadEnvelope, InvalidArgument
from wsfabric.routing.envelope_pb2 import Envelope, RouteTable

#: The WebSocket subprotocol (and TCP hello) name of the JSON codec.
JSON_NAME = "wsfabric.json"
#: The WebSocket subprotocol (and TCP hello) name of the protobuf codec.
PROTO_NAME = "wsfabric.proto"
#: The route of the push that announces the route table.
ROUTES_PUSH = "wsfabric.routes"
#: The largest request id (2^53 - 1, the largest integer JavaScript holds).
MAX_ID = 2**53 - 1
#: The longest route name, in characters.
MAX_ROUTE_LENGTH = 255
#: The largest route code (a ``uint32``).
MAX_ROUTE_CODE = 2**32 - 1
#: The deepest nesting of arrays and objects accepted in JSON.
MAX_DEPTH = 64

#: The error code of a malformed envelope.
BAD_REQUEST = "bad_request"
#: The error code of an unknown route.
NOT_FOUND = "not_found"
#: The error code of a handler that failed unexpectedly.
INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Inbound:
    """
    A routed message as a client sent it.

    :ivar route: the route name, or its integer code (route compression).
    :ivar id: the request id, or ``None`` for a notify.
    :ivar data: the payload as the codec carries it: a JSON value
        (``wsfabric.json``) or bytes (``wsfabric.proto``); see
        :meth:`JsonCodec.decode_data`.
    """

    route: str | int
    id: int | None
    data: Any


class ErrorInfo(NamedTuple):
    """
    The ``error`` of an envelope.

    :ivar code: the stable error code (``bad_request``, ``not_found``,
        ``internal``, ... or a handler's own).
    :ivar message: a human-readable explanation.
    """

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Outbound:
    """
    A message from the server, as a client reads it.

    :ivar kind: ``"response"`` (answers request ``id``), ``"error"`` (an
        error response when ``id`` is set; otherwise an error for a notify
        of ``route``, or for an envelope so broken that its id could not be
        read) or ``"push"``.
    :ivar id: the request id, or ``None``.
    :ivar route: the route name or code (pushes, errors for a notify), or
        ``None``.
    :ivar data: the payload as the codec carries it (a JSON value, or bytes);
        ``None`` for errors.
    :ivar error: the error, for ``kind == "error"``.
    """

    kind: str
    id: int | None = None
    route: str | int | None = None
    data: Any = None
    error: ErrorInfo | None = None


def _bad(message: str, id: int | None = None, route: str | int | None = None) -> BadEnvelope:
    return BadEnvelope(BAD_REQUEST, message, id, route)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepting them would let one client make
    # the server emit invalid JSON to others.
    raise ValueError(f"{name} is not valid JSON")


def _depth_ok(value: Any) -> bool:
    # Iterative, with a stack bounded by the nesting limit.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            item = item.values()
        elif type(item) is not list:
            continue
        if depth > MAX_DEPTH:
            return False
        for child in item:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return True


def loads(text: str) -> Any:
    """
    Parse JSON as the codecs accept it: no ``NaN``/``Infinity``, nesting at
    most :data:`MAX_DEPTH` deep.

    :raises ValueError: if ``text`` is not such JSON.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} deep") from None
    # A document with at most MAX_DEPTH brackets cannot be nested deeper;
    # only others need the walk.
    if (
        text.count("[") + text.count("{") > MAX_DEPTH
        and not _depth_ok(value)
    ):
        raise ValueError(f"nested more than {MAX_DEPTH} deep")
    return value


def dumps(value: Any) -> str:
    """
    Write compact JSON that UTF-8 can carry.

    :raises InvalidArgument: if ``value`` is not JSON-serialisable.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidArgument(f"data is not JSON-serialisable: {e}") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (from a "\\ud800" escape a client sent):
            # escape everything, as JSON allows.
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text


def message_to_json(message: Message) -> dict[str, Any]:
    """
    :return: the JSON mapping of a protobuf message, with the field names of
        the .proto and every field present (zeros included).
    """
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def _readable_route(value: Any) -> str | int | None:
    # The route to name in an error about another part of the envelope, if
    # it is a valid one (never echo a megabyte of garbage).
    if type(value) is str and 1 <= len(value) <= MAX_ROUTE_LENGTH:
        return value
    if type(value) is int and 1 <= value <= MAX_ROUTE_CODE:
        return value
    return None


def _check_id(value: Any, route: str | int | None = None) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise _bad(f"id must be an integer, not {_type_name(value)}", route=route)
    if not 1 <= value <= MAX_ID:
        raise _bad(f"id must be from 1 to {MAX_ID}", route=route)
    return value


def _check_route(value: Any, id: int | None) -> str | int:
    if type(value) is str:
        if not 1 <= len(value) <= MAX_ROUTE_LENGTH:
            raise _bad(f"route must be 1 to {MAX_ROUTE_LENGTH} characters long", id)
        return value
    if type(value) is int:
        if not 1 <= value <= MAX_ROUTE_CODE:
            raise _bad(f"route code must be from 1 to {MAX_ROUTE_CODE}", id)
        return value
    if value is None:
        raise _bad("route is missing", id)
    raise _bad(f"route must be a string or a route code, not {_type_name(value)}", id)


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        float: "a number with a fraction",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _parse_message(message_type: type[Message], data: Any, codec: str) -> Message:
    try:
        if codec == PROTO_NAME:
            return message_type.FromString(data)
        if data is None:
            return message_type()
        if type(data) is not dict:
            raise ValueError(f"expected an object, not {_type_name(data)}")
        return json_format.ParseDict(data, message_type())
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as e:
        name = message_type.DESCRIPTOR.full_name
        raise _bad(f"data is not a valid {name}: {e}") from None


class JsonCodec:
    """
    The ``wsfabric.json`` codec: envelopes are JSON objects in text frames.
    """

    #: The codec's subprotocol name.
    name = JSON_NAME
    #: Whether its messages are text frames (``str``).
    text = True

    # -- server side -------------------------------------------------------------

    def decode_inbound(self, message: str | bytes) -> Inbound:
        """
        Read an envelope a client sent.

        :param message: the message (text; a binary one is read as UTF-8).
        :raises BadEnvelope: if it is not a valid request or notify; ``id``
            and ``route`` are set on it when they could be read.
        """
        if type(message) is not str:
            try:
                message = bytes(message).decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("message is not UTF-8") from None
        try:
            envelope = loads(message)
        except ValueError as e:
            raise _bad(f"message is not JSON: {e}") from None
        if type(envelope) is not dict:
            raise _bad(f"envelope must be a JSON object, not {_type_name(envelope)}")
        route = envelope.get("route")
        id = _check_id(envelope.get("id"), _readable_route(route))
        return Inbound(_check_route(route, id), id, envelope.get("data"))

    def decode_data(self, data: Any, message_type: type[Message] | None = None) -> Any:
        """
        Turn the ``data`` of an envelope into what its handler (or response
        callback) expects.

        :param data: the ``data`` of an :class:`Inbound` or :class:`Outbound`.
        :param message_type: the protobuf message type declared, or ``None``
            for a JSON value.
        :raises BadEnvelope: if ``data`` does not fit ``message_type``.
        """
        if message_type is None:
            return data
        return _parse_message(message_type, data, JSON_NAME)

    def encode_data(self, data: Any) -> Any:
        """
        :return: ``data`` (a JSON value or a protobuf message) as this codec
            carries it: a JSON value.
        :raises InvalidArgument: for ``bytes``.
        """
        if isinstance(data, Message):
            return message_to_json(data)
        if isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgument("bytes cannot travel in the wsfabric.json codec")
        return data

    def encode_response(self, id: int, data: Any) -> str:
        """
        :return: the response to request ``id``.
        :raises InvalidArgument: if ``data`` cannot be encoded.
        """
        return dumps({"id": id, "data": self.encode_data(data)})

    def encode_error(
        self, id: int | None, route: str | int | None, code: str, message: str
    ) -> str:
        """
        :param id: the request id (an error response), or ``None`` (an error
            for a notify, or for an envelope whose id could not be read).
        :param route: the route, named in an error without ``id``.
        :return: the error.
        """
        envelope: dict[str, Any] = {}
        if id is not None:
            envelope["id"] = id
        elif route is not None:
            envelope["route"] = route
        envelope["error"] = {"code": code, "message": message}
        return dumps(envelope)

    def encode_push(self, route: str, data: Any, code: int | None = None) -> str:
        """
        :param route: the push route name.
        :param code: the route's code, sent in place of the name (route
            compression), or ``None``.
        :return: the push.
        :raises InvalidArgument: if ``data`` cannot be encoded.
        """
        return dumps({"route": route if code is None else code, "data": self.encode_data(data)})

    def encode_route_table(self, table: dict[str, int]) -> str:
        """
        :return: the push announcing the route table (name → code).
        """
        return dumps({"route": ROUTES_PUSH, "data": table})

    # -- client side ---------------------------------------------------------------

    def encode_request(self, route: str | int, id: int | None, data: Any = None) -> str:
        """
        :param route: the route name, or its code.
        :param id: the request id, or ``None`` for a notify.
        :return: the request (or notify).
        :raises InvalidArgument: if ``data`` cannot be encoded, or ``route``
            or ``id`` are out of range.
        """
        _check_outgoing(route, id)
        envelope: dict[str, Any] = {"route": route}
        if id is not None:
            envelope["id"] = id
        if data is not None:
            envelope["data"] = self.encode_data(data)
        return dumps(envelope)

    def decode_outbound(self, message: str | bytes) -> Outbound:
        """
        Read a message from the server.

        :raises BadEnvelope: if it is not a valid response, error or push.
        """
        if type(message) is not str:
            try:
                message = bytes(message).decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("message is not UTF-8") from None
        try:
            envelope = loads(message)
        except ValueError as e:
            raise _bad(f"message is not JSON: {e}") from None
        if type(envelope) is not dict:
            raise _bad(f"envelope must be a JSON object, not {_type_name(envelope)}")
        id = _check_id(envelope.get("id"))
        error = envelope.get("error")
        if error is not None:
            if (
                type(error) is not dict
                or type(error.get("code")) is not str
                or type(error.get("message", "")) is not str
            ):
                raise _bad("error must be an object with a string code", id)
            route = envelope.get("route")
            if route is not None:
                route = _check_route(route, id)
            return Outbound(
                "error", id, route, None, ErrorInfo(error["code"], error.get("message", ""))
            )
        if id is not None:
            return Outbound("response", id, None, envelope.get("data"))
        return Outbound("push", None, _check_route(envelope.get("route"), None),
                        envelope.get("data"))

    def decode_route_table(self, data: Any) -> dict[str, int]:
        """
        :param data: the ``data`` of the :data:`ROUTES_PUSH` push.
        :return: the route table (name → code).
        :raises BadEnvelope: if it is not a table.
        """
        if type(data) is not dict or not all(
            type(code) is int and 1 <= code <= MAX_ROUTE_CODE for code in data.values()
        ):
            raise _bad("the route table must map names to codes")
        return dict(data)


class ProtoCodec:
    """
    The ``wsfabric.proto`` codec: envelopes are ``wsfabric.Envelope``
    protobuf messages in binary frames.
    """

    #: The codec's subprotocol name.
    name = PROTO_NAME
    #: Whether its messages are text frames (``str``).
    text = False

    # -- server side -------------------------------------------------------------

    def decode_inbound(self, message: str | bytes) -> Inbound:
        """
        Read an envelope a client sent.

        :param message: the message (binary).
        :raises BadEnvelope: if it is not a valid request or notify.
        """
        if type(message) is str:
            raise _bad("the wsfabric.proto codec takes binary messages, not text")
        try:
            envelope = Envelope.FromString(message)
        except (DecodeError, RecursionError) as e:
            raise _bad(f"message is not a wsfabric.Envelope: {e}") from None
        route: str | int | None = envelope.route or envelope.route_id or None
        raw_id = envelope.id
        if raw_id > MAX_ID:
            raise _bad(f"id must be from 1 to {MAX_ID}", route=_readable_route(route))
        id = raw_id or None
        if envelope.route and envelope.route_id:
            raise _bad("route and route_id are both set", id)
        return Inbound(_check_route(route, id), id, envelope.data)

    def decode_data(self, data: Any, message_type: type[Message] | None = None) -> Any:
        """
        Turn the ``data`` of an envelope into what its handler (or response
        callback) expects.

        :param data: the ``data`` of an :class:`Inbound` or :class:`Outbound`
            (bytes).
        :param message_type: the protobuf message type declared, or ``None``:
            then ``data`` holds UTF-8 JSON (empty for ``None``).
        :raises BadEnvelope: if ``data`` does not fit.
        """
        if message_type is not None:
            return _parse_message(message_type, data, PROTO_NAME)
        if not data:
            return None
        try:
            return loads(bytes(data).decode("utf-8"))
        except ValueError as e:
            # UnicodeDecodeError is a ValueError.
            raise _bad(
                f"data is not UTF-8 JSON (the route declares no message type): {e}"
            ) from None

    def encode_data(self, data: Any) -> bytes:
        """
        :return: ``data`` as this codec carries it: a protobuf message
            serialised, bytes as is, any other JSON value as UTF-8 JSON
            (``None`` as nothing).
        :raises InvalidArgument: if ``data`` cannot be encoded.
        """
        if isinstance(data, Message):
            return data.SerializeToString()
        if isinstance(data, bytes):
            return data
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        if data is None:
            return b""
        return dumps(data).encode("utf-8")

    def encode_response(self, id: int, data: Any) -> bytes:
        """
        :return: the response to request ``id``.
        :raises InvalidArgument: if ``data`` cannot be encoded.
        """
        return Envelope(id=id, data=self.encode_data(data)).SerializeToString()

    def encode_error(
        self, id: int | None, route: str | int | None, code: str, message: str
    ) -> bytes:
        """
        :param id: the request id (an error response), or ``None`` (an error
            for a notify, or for an envelope whose id could not be read).
        :param route: the route, named in an error without ``id``.
        :return: the error.
        """
        envelope = Envelope()
        if id is not None:
            envelope.id = id
        elif type(route) is str:
            envelope.route = route
        elif type(route) is int:
            envelope.route_id = route
        envelope.error.code = code
        envelope.error.message = message
        return envelope.SerializeToString()

    def encode_push(self, route: str, data: Any, code: int | None = None) -> bytes:
        """
        :param route: the push route name.
        :param code: the route's code, sent in place of the name (route
            compression), or ``None``.
        :return: the push.
        :raises InvalidArgument: if ``data`` cannot be encoded.
        """
        if code is None:
            return Envelope(route=route, data=self.encode_data(data)).SerializeToString()
        return Envelope(route_id=code, data=self.encode_data(data)).SerializeToString()

    def encode_route_table(self, table: dict[str, int]) -> bytes:
        """
        :return: the push announcing the route table (name → code).
        """
        data = RouteTable(routes=table).SerializeToString()
        return Envelope(route=ROUTES_PUSH, data=data).SerializeToString()

    # -- client side ---------------------------------------------------------------

    def encode_request(self, route: str | int, id: int | None, data: Any = None) -> bytes:
        """
        :param route: the route name, or its code.
        :param id: the request id, or ``None`` for a notify.
        :return: the request (or notify).
        :raises InvalidArgument: if ``data`` cannot be encoded, or ``route``
            or ``id`` are out of range.
        """
        _check_outgoing(route, id)
        envelope = Envelope(id=id or 0, data=self.encode_data(data))
        if type(route) is int:
            envelope.route_id = route
        else:
            envelope.route = route
        return envelope.SerializeToString()

    def decode_outbound(self, message: str | bytes) -> Outbound:
        """
        Read a message from the server.

        :raises BadEnvelope: if it is not a valid response, error or push.
        """
        if type(message) is str:
            raise _bad("the wsfabric.proto codec takes binary messages, not text")
        try:
            envelope = Envelope.FromString(message)
        except (DecodeError, RecursionError) as e:
            raise _bad(f"message is not a wsfabric.Envelope: {e}") from None
        id = envelope.id or None
        route: str | int | None = envelope.route or envelope.route_id or None
        if envelope.HasField("error"):
            error = ErrorInfo(envelope.error.code, envelope.error.message)
            return Outbound("error", id, None if id else route, None, error)
        if id is not None:
            return Outbound("response", id, None, envelope.data)
        if route is None:
            raise _bad("push without a route")
        return Outbound("push", None, route, envelope.data)

    def decode_route_table(self, data: Any) -> dict[str, int]:
        """
        :param data: the ``data`` of the :data:`ROUTES_PUSH` push (bytes).
        :return: the route table (name → code).
        :raises BadEnvelope: if it is not a ``wsfabric.RouteTable``.
        """
        try:
            return dict(RouteTable.FromString(data).routes)
        except (DecodeError, TypeError) as e:
            raise _bad(f"the route table is not a wsfabric.RouteTable: {e}") from None


def _check_outgoing(route: str | int, id: int | None) -> None:
    try:
        _check_route(route, id)
        _check_id(id)
    except BadEnvelope as e:
        raise InvalidArgument(e.message) from None


#: The JSON codec (codecs hold no state; share these).
JSON_CODEC = JsonCodec()
#: The protobuf codec.
PROTO_CODEC = ProtoCodec()
#: The codecs by subprotocol name.
CODECS: dict[str, JsonCodec | ProtoCodec] = {JSON_NAME: JSON_CODEC, PROTO_NAME: PROTO_CODEC}

#: Either codec.
Codec = JsonCodec | ProtoCodec


def codec_for(subprotocol: str | None) -> Codec | None:
    """
    :param subprotocol: a negotiated subprotocol, or ``None``.
    :return: its codec, or ``None`` when it names none (then text messages
        are read as JSON and binary ones as protobuf).
    """
    return CODECS.get(subprotocol) if subprotocol is not None else None


def codec_of_message(message: str | bytes) -> Codec:
    """
    :return: the codec a message is read with on a connection that
        negotiated none: JSON for text, protobuf for binary.
    """
    return JSON_CODEC if type(message) is str else PROTO_CODEC


__all__ = [
    "BAD_REQUEST",
    "CODECS",
    "INTERNAL",
    "JSON_CODEC",
    "JSON_NAME",
    "MAX_DEPTH",
    "MAX_ID",
    "MAX_ROUTE_LENGTH",
    "NOT_FOUND",
    "PROTO_CODEC",
    "PROTO_NAME",
    "ROUTES_PUSH",
    "BadEnvelope",
    "Codec",
    "ErrorInfo",
    "Inbound",
    "JsonCodec",
    "Outbound",
    "ProtoCodec",
    "codec_for",
    "codec_of_message",
    "dumps",
    "loads",
    "message_to_json",
]
