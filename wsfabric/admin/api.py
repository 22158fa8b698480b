"""
The server HTTP API: every :class:`~wsfabric.interfaces.IFabric` method as
``POST /api/v1/<method>`` with a JSON body, and its OpenAPI 3.1 document.

Requests carry ``Authorization: Bearer <key>`` with a key from
``--api-key-file``. Arguments are the method's keyword arguments by name; a
``message`` is text unless ``"binary": true`` says it is base64 of bytes::

    POST /api/v1/send_to_group
    {"group": "room", "message": "hi"}
    -> 200 {"result": null}

Errors are ``{"error": {"code": ..., "message": ...}}`` with:

====  =======================  ================================================
400   ``bad_request``          the body is not JSON, not an object, lacks an
                               argument, has an unknown one or a wrong type
                               (also InvalidArgument from the fabric)
401   ``unauthorized``         no ``Authorization: Bearer`` key, or a wrong one
403   ``api_disabled``         the node runs without ``--api-key-file``
404   ``unknown_method``       no such IFabric method
404   ``client_not_found``     a mutation of a client that is not online
405   ``method_not_allowed``   not a POST
413   ``body_too_large``       the body is over :data:`MAX_BODY_BYTES`
503   ``cluster_unavailable``  the cluster state (Redis) cannot be reached
====  =======================  ================================================
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.http import Request

from wsfabric.errors import ClientNotFound, ClusterUnavailable, InvalidArgument
from wsfabric.interfaces import IFabric

#: The largest request body accepted (a 1 MiB message is 1.4 MiB in base64).
MAX_BODY_BYTES = 4 * 1024 * 1024

_log = Logger()


class ApiError(Exception):
    """
    An HTTP API request that fails with ``status``, ``code`` and a message.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# -- the methods -----------------------------------------------------------------

_TEXT = {"type": "string"}
_NAME = {"type": "string", "minLength": 1, "maxLength": 256}
_IDS = {"type": "array", "items": _TEXT}

#: Every argument the API knows: its JSON schema and description.
ARGUMENTS: dict[str, tuple[dict[str, Any], str]] = {
    "client_id": (_TEXT, "A client id (as given to on_connect)."),
    "client_ids": (_IDS, "Client ids."),
    "message": (_TEXT, "The message: text, or base64 of the bytes when binary is true."),
    "binary": ({"type": "boolean"}, "Send message as a binary frame (message is base64)."),
    "exclude": (_IDS, "Client ids that must not receive the message."),
    "uid": (_NAME, "A user id (1 to 256 characters)."),
    "group": (_NAME, "A group name (1 to 256 characters)."),
    "code": (
        {"type": "integer", "oneOf": [{"const": 1000}, {"minimum": 3000, "maximum": 4999}]},
        "WebSocket close code: 1000 or 3000-4999.",
    ),
    "reason": (_TEXT, "Close reason (at most 123 UTF-8 bytes are sent)."),
    "info": ({"type": "object"}, "Client info (any JSON object)."),
    "partial": ({"type": "object"}, "Top-level keys merged into the client's info."),
}


class Method(NamedTuple):
    """
    One IFabric method as the API offers it.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...]
    result: dict[str, Any]
    summary: str


_NULL = {"type": "null"}
_BOOL = {"type": "boolean"}
_INT = {"type": "integer", "minimum": 0}
_STRINGS = {"type": "array", "items": _TEXT}
_MSG = ("binary",)

#: The IFabric methods (CONTRACT section 3), by name.
METHODS: dict[str, Method] = {
    "send_to_client": Method(("client_id", "message"), _MSG, _NULL,
                             "Send a message to one client (a no-op if it is offline)."),
    "send_to_clients": Method(("client_ids", "message"), _MSG, _NULL,
                              "Send a message to each of the clients that is online."),
    "send_to_all": Method(("message",), ("exclude", *_MSG), _NULL,
                          "Send a message to every client."),
    "send_to_uid": Method(("uid", "message"), _MSG, _NULL,
                          "Send a message to every client bound to a uid."),
    "send_to_group": Method(("group", "message"), ("exclude", *_MSG), _NULL,
                            "Send a message to every member of a group."),
    "bind_uid": Method(("client_id", "uid"), (), _NULL,
                       "Bind a client to a uid (replacing an earlier binding)."),
    "unbind_uid": Method(("client_id", "uid"), (), _NULL, "Unbind a client from a uid."),
    "is_uid_online": Method(("uid",), (), _BOOL, "Whether any client is bound to a uid."),
    "get_uid_by_client_id": Method(("client_id",), (), {"type": ["string", "null"]},
                                   "The uid of a client, or null."),
    "get_client_ids_by_uid": Method(("uid",), (), _STRINGS, "The clients bound to a uid."),
    "join_group": Method(("client_id", "group"), (), _NULL, "Add a client to a group."),
    "leave_group": Method(("client_id", "group"), (), _NULL, "Remove a client from a group."),
    "ungroup": Method(("group",), (), _NULL, "Make every member leave a group."),
    "get_client_count_by_group": Method(("group",), (), _INT, "The number of members of a group."),
    "get_uid_count_by_group": Method(("group",), (), _INT,
                                     "The number of distinct uids among a group's members."),
    "get_client_ids_by_group": Method(("group",), (), _STRINGS, "The members of a group."),
    "get_uids_by_group": Method(("group",), (), _STRINGS,
                                "The distinct uids among a group's members."),
    "get_all_uids": Method((), (), _STRINGS, "Every uid with a client bound to it."),
    "get_all_groups": Method((), (), _STRINGS, "Every group with members."),
    "get_all_client_count": Method((), (), _INT, "The number of clients online."),
    "is_online": Method(("client_id",), (), _BOOL, "Whether a client is online."),
    "close_client": Method(("client_id",), ("code", "reason"), _NULL,
                           "Close a client (a no-op if it is offline)."),
    "get_info": Method(("client_id",), (), {"type": "object"},
                       "The info of a client ({} when none)."),
    "set_info": Method(("client_id", "info"), (), _NULL, "Replace the info of a client."),
    "update_info": Method(("client_id", "partial"), (), _NULL,
                          "Merge top-level keys into the info of a client."),
}


def parse_arguments(name: str, body: bytes) -> dict[str, Any]:
    """
    :param name: the method.
    :param body: the request body.
    :return: the keyword arguments of the IFabric call.
    :raises ApiError: 400 naming what is wrong.
    """
    method = METHODS[name]
    # Only a truly empty body stands for "no arguments": white space alone
    # is not JSON, and is answered as such.
    if not body:
        if method.required:
            raise _bad(f"the body must be a JSON object with {_listing(method.required)}")
        return {}
    try:
        text = body.decode("utf-8")
        data = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise _bad(f"the body must be a JSON object, not {_json_type(data)}")
    allowed = set(method.required) | set(method.optional)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _bad(
            f"unknown argument {unknown[0]!r} for {name} "
            f"(it takes {_listing(method.required + method.optional) or 'none'})"
        )
    missing = [arg for arg in method.required if arg not in data]
    if missing:
        raise _bad(f"{name} needs {_listing(missing)}")
    for arg, value in data.items():
        _check(arg, value)
        if isinstance(value, float):
            data[arg] = int(value)
    binary = data.pop("binary", False)
    if binary:
        try:
            data["message"] = base64.b64decode(data["message"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad("message is not valid base64 (binary is true)") from None
    return data


def _check(arg: str, value: Any) -> None:
    schema = ARGUMENTS[arg][0]
    kind = schema["type"]
    if kind == "string":
        _check_text(arg, value)
        if "minLength" in schema and not 1 <= len(value) <= schema["maxLength"]:
            raise _bad(f"{arg} must be 1 to {schema['maxLength']} characters long")
    elif kind == "array":
        if not isinstance(value, list):
            raise _bad(f"{arg} must be an array of strings, not {_json_type(value)}")
        for item in value:
            _check_text(f"each of {arg}", item)
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _bad(f"{arg} must be true or false, not {_json_type(value)}")
    elif kind == "integer":
        # JSON has one number type: 3000.0 is the integer 3000.
        integral = isinstance(value, float) and value.is_integer()
        if isinstance(value, bool) or not (isinstance(value, int) or integral):
            raise _bad(f"{arg} must be an integer, not {_json_type(value)}")
    elif kind == "object" and not isinstance(value, dict):
        raise _bad(f"{arg} must be a JSON object, not {_json_type(value)}")


def _check_text(arg: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _bad(f"{arg} must be a string, not {_json_type(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(f"{arg} is not valid Unicode (a lone surrogate)") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _listing(names: Iterable[str]) -> str:
    return ", ".join(names)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- keys ---------------------------------------------------------------------------


class ApiKeys:
    """
    The API keys a node accepts.

    :param keys: the keys; none means the API is disabled.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = [key.encode("utf-8") for key in keys]

    @property
    def enabled(self) -> bool:
        """
        Whether any key is configured.
        """
        return bool(self._keys)

    def check(self, header: bytes | None) -> None:
        """
        :param header: the request's ``Authorization`` header.
        :raises ApiError: 403 when the API is disabled, 401 unless ``header``
            is ``Bearer <a configured key>``.
        """
        if not self._keys:
            raise ApiError(
                403, "api_disabled",
                "the HTTP API is disabled: start the node with --api-key-file FILE",
            )
        scheme, _, given = (header or b"").strip().partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key>")
        given = given.strip()
        # Compare with every key, so the time taken says nothing about which.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise ApiError(401, "unauthorized", "the API key is not valid")


def read_key_file(path: str) -> list[str]:
    """
    Read ``--api-key-file``: one key per line; blank lines and lines starting
    with ``#`` are skipped.

    :raises ValueError: naming the problem (unreadable, no key, a key shorter
        than 16 characters or with whitespace in it).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    keys = []
    for number, line in enumerate(lines, 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < 16:
            raise ValueError(f"line {number}: a key must be at least 16 characters long")
        if any(c.isspace() for c in key):
            raise ValueError(f"line {number}: a key must not contain whitespace")
        keys.append(key)
    if not keys:
        raise ValueError("no key in the file (one per line)")
    return keys


# -- HTTP ---------------------------------------------------------------------------


def write_json(request: Request, status: int, value: Any) -> bytes:
    """
    Set the status and JSON headers of ``request``.

    :return: ``value`` as a JSON body.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, separators=(",", ":"), default=_jsonable).encode("utf-8")


def error_body(request: Request, error: ApiError) -> bytes:
    """
    :return: the JSON body of ``error``, with its status set on ``request``.
    """
    if error.status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="wsfabric"')
    if error.status == 405:
        request.setHeader(b"allow", b"POST")
    return write_json(
        request, error.status, {"error": {"code": error.code, "message": error.message}}
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def translate(failure: Failure) -> ApiError:
    """
    :return: the API error a failed IFabric call means.
    """
    if failure.check(ApiError):
        return failure.value  # type: ignore[return-value]
    if failure.check(ClientNotFound):
        return ApiError(404, "client_not_found", str(failure.value))
    if failure.check(InvalidArgument):
        return ApiError(400, "bad_request", str(failure.value))
    if failure.check(ClusterUnavailable):
        return ApiError(503, "cluster_unavailable", str(failure.value) or "cluster unavailable")
    _log.failure("HTTP API call failed", failure)
    return ApiError(500, "internal_error", "the call failed; see the node's log")


class ApiResource(resource.Resource):
    """
    ``/api/v1/``: the methods, and ``openapi.json``.

    :param fabric: returns the node's IFabric (``None``: the node has none).
    :param keys: the accepted API keys.
    """

    def __init__(self, fabric: Callable[[], IFabric | None], keys: ApiKeys) -> None:
        super().__init__()
        self._fabric = fabric
        self._keys = keys
        self._document = json.dumps(openapi_document(), indent=1).encode("utf-8")

    def getChild(self, path: bytes, request: Request) -> resource.Resource:  # noqa: N802
        """
        Any name below ``/api/v1/``.
        """
        if path == b"openapi.json" and not request.postpath:
            return _Static(self._document, b"application/json")
        return _Call(self, path.decode("utf-8", "replace"), bool(request.postpath))

    def render(self, request: Request) -> bytes:
        """
        ``/api/v1/`` itself: the list of methods.
        """
        return write_json(request, 200, {"methods": sorted(METHODS),
                                         "openapi": "/api/v1/openapi.json"})

    def call(self, request: Request, name: str, deeper: bool) -> bytes | int:
        """
        Check, parse and run one call; answer when it is done.
        """
        try:
            self._keys.check(request.getHeader(b"authorization"))
            if deeper or name not in METHODS:
                raise ApiError(404, "unknown_method", f"no API method {name!r}")
            if request.method != b"POST":
                raise ApiError(405, "method_not_allowed", f"use POST /api/v1/{name}")
            body = request.content.read(MAX_BODY_BYTES + 1) if request.content else b""
            if len(body) > MAX_BODY_BYTES:
                raise ApiError(413, "body_too_large",
                               f"the body must be at most {MAX_BODY_BYTES} bytes")
            arguments = parse_arguments(name, body)
            fabric = self._fabric()
            if fabric is None:
                raise ApiError(503, "cluster_unavailable", "this node has no fabric yet")
        except ApiError as e:
            return error_body(request, e)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def answer(result: Any) -> None:
            if not finished[0]:
                request.write(write_json(request, 200, {"result": result}))
                request.finish()

        def failed(failure: Failure) -> None:
            if not finished[0]:
                request.write(error_body(request, translate(failure)))
                request.finish()

        maybeDeferred(getattr(fabric, name), **arguments).addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class _Call(resource.Resource):
    isLeaf = True

    def __init__(self, api: ApiResource, name: str, deeper: bool) -> None:
        super().__init__()
        self._api = api
        self._name = name
        self._deeper = deeper

    def render(self, request: Request) -> bytes | int:
        return self._api.call(request, self._name, self._deeper)


class _Static(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", self._type)
        return self._body


# -- OpenAPI --------------------------------------------------------------------------

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_ERRORS = {
    "400": "Bad body: not JSON, not an object, a missing, unknown or mistyped argument "
    "(code bad_request).",
    "401": "No Authorization: Bearer key, or a wrong one (code unauthorized).",
    "403": "The node runs without --api-key-file (code api_disabled).",
    "404": "A mutation of a client that is not online (code client_not_found).",
    "413": "The body is too large (code body_too_large).",
    "503": "The cluster state cannot be reached (code cluster_unavailable).",
}


_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def openapi_document() -> dict[str, Any]:
    """
    :return: the OpenAPI 3.1 document of the API.
    """
    paths: dict[str, Any] = {}
    for name, method in METHODS.items():
        properties = {
            arg: {**ARGUMENTS[arg][0], "description": ARGUMENTS[arg][1]}
            for arg in method.required + method.optional
        }
        body: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "required": list(method.required),
            "additionalProperties": False,
        }
        if "binary" in properties:
            # Text, or base64 of the bytes when binary is true.
            text = {**body, "properties": {**properties, "binary": {
                "const": False, "description": ARGUMENTS["binary"][1]}}}
            binary = {**body, "required": [*method.required, "binary"], "properties": {
                **properties,
                "binary": {"const": True, "description": ARGUMENTS["binary"][1]},
                "message": {"type": "string", "pattern": _BASE64,
                            "description": "The bytes, in base64."},
            }}
            body = {"oneOf": [text, binary]}
        responses: dict[str, Any] = {
            "200": {
                "description": "The call's result.",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["result"],
                    "properties": {"result": method.result},
                }}},
            }
        }
        for status, text in _ERRORS.items():
            responses[status] = {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        paths[f"/api/v1/{name}"] = {
            "post": {
                "operationId": name,
                "summary": method.summary,
                "requestBody": {
                    "required": bool(method.required),
                    "content": {"application/json": {"schema": body}},
                },
                "responses": responses,
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wsfabric server HTTP API",
            "version": "1",
            "description": "Every IFabric method as POST /api/v1/<method> with a JSON body "
            "of its arguments by name. Binary messages: base64 in message with "
            '"binary": true.',
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    }
