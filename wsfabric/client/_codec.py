"""
The client's view of the two codecs of :mod:`wsfabric.routing.codec` (the
one implementation of docs/wire-protocol.md, shared with the server).

Which frames carry envelopes depends on the codec: text frames for
``wsfabric.json``, binary frames for ``wsfabric.proto``. A message of the
other kind, or one that is not a valid envelope, is a *raw* message
(:meth:`ClientCodec.decode` returns ``None`` for it) and goes to the
client's raw handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsfabric.errors import BadEnvelope, InvalidArgument
from wsfabric.routing.codec import (
    JSON_CODEC,
    MAX_ID,
    PROTO_CODEC,
    ROUTES_PUSH,
    Codec,
)

__all__ = ["MAX_ID", "ROUTES_PUSH", "ClientCodec", "Inbound", "codec_named"]


@dataclass(frozen=True)
class Inbound:
    """
    One envelope the server sent.

    :ivar id: the request id of a response (``None`` for a push or an error
        for a notify).
    :ivar route: the route name, or its integer code under route
        compression, or ``None`` when the envelope has none.
    :ivar data: the payload as the codec carries it (a JSON value, or bytes).
    :ivar error: ``(code, message)`` of an error, else ``None``.
    """

    id: int | None
    route: str | int | None
    data: Any
    error: tuple[str, str] | None = None


class ClientCodec:
    """
    One codec, as the client uses it.

    :param codec: the codec of :mod:`wsfabric.routing.codec`.
    :param name: ``"json"`` or ``"proto"``.
    :param binary: whether its envelopes travel in binary frames.
    """

    def __init__(self, codec: Codec, name: str, binary: bool) -> None:
        self._codec = codec
        self.name = name
        self.binary = binary
        self.subprotocol = f"wsfabric.{name}"

    def encode(self, route: str | int, id: int | None, data: Any) -> str | bytes:  # noqa: A002
        """
        :param route: the route name or code.
        :param id: the request id, ``None`` for a notify.
        :param data: the payload: a JSON value or a protobuf message (and
            ``bytes`` with the protobuf codec).
        :raises InvalidArgument: if ``data`` cannot travel in this codec.
        """
        return self._codec.encode_request(route, id, data)

    def decode(self, message: str | bytes) -> Inbound | None:
        """
        :return: the envelope in ``message``, or ``None`` if it is not one.
        """
        if isinstance(message, bytes) != self.binary:
            return None
        try:
            outbound = self._codec.decode_outbound(message)
        except BadEnvelope:
            return None
        error = tuple(outbound.error) if outbound.error is not None else None
        return Inbound(outbound.id, outbound.route, outbound.data, error)  # type: ignore[arg-type]

    def table(self, data: Any) -> dict[str, int]:
        """
        :return: the route table carried by a ``wsfabric.routes`` push.
        :raises ValueError: if it is not one.
        """
        try:
            return self._codec.decode_route_table(data)
        except BadEnvelope as e:
            raise ValueError(str(e)) from None

    def unpack(self, data: Any, message_type: Any) -> Any:
        """
        :param message_type: a protobuf message class; ``bytes`` for the
            raw bytes of the protobuf codec; ``None`` for a JSON value.
        :return: ``data`` read as ``message_type``.
        :raises BadEnvelope: if it does not fit.
        """
        if message_type is bytes and self.binary:
            return bytes(data)
        return self._codec.decode_data(data, message_type)


def codec_named(name: str | None) -> ClientCodec | None:
    """
    :param name: ``"json"``, ``"proto"`` or ``None`` (no envelopes: raw
        messages only).
    :raises InvalidArgument: for another name.
    """
    if name is None:
        return None
    try:
        return _CLIENT_CODECS[name]
    except (KeyError, TypeError):
        raise InvalidArgument(f"unknown codec {name!r}: use 'json', 'proto' or None") from None


# Codecs hold no state, so these are shared.
_CLIENT_CODECS = {
    "json": ClientCodec(JSON_CODEC, "json", binary=False),
    "proto": ClientCodec(PROTO_CODEC, "proto", binary=True),
}
