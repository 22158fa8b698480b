"""
Routed messages: named routes with request/response, notify and push, over
the ``wsfabric.json`` and ``wsfabric.proto`` codecs. See docs/routing.md for
the guide and docs/wire-protocol.md for the wire format.
"""

from wsfabric.errors import BadEnvelope, RouteError
from wsfabric.routing.codec import (
    CODECS,
    JSON_CODEC,
    JSON_NAME,
    PROTO_CODEC,
    PROTO_NAME,
    ROUTES_PUSH,
    ErrorInfo,
    Inbound,
    JsonCodec,
    Outbound,
    ProtoCodec,
    codec_for,
)
from wsfabric.routing.router import Router, route

__all__ = [
    "CODECS",
    "JSON_CODEC",
    "JSON_NAME",
    "PROTO_CODEC",
    "PROTO_NAME",
    "ROUTES_PUSH",
    "BadEnvelope",
    "ErrorInfo",
    "Inbound",
    "JsonCodec",
    "Outbound",
    "ProtoCodec",
    "RouteError",
    "Router",
    "codec_for",
    "route",
]
