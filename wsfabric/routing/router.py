"""
:class:`Router`: an :class:`~wsfabric.interfaces.IApplication` that
dispatches routed messages to handlers registered on the application's own
instance, answers requests, and pushes routed messages to clients in each
client's codec. docs/routing.md is the guide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from inspect import iscoroutine
from typing import Any, TypeVar

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.errors import BadEnvelope, InvalidArgument, RouteError
from wsfabric.interfaces import IApplication, IFabric
from wsfabric.message import ConnectRequest, Variants
from wsfabric.routing.codec import (
    INTERNAL,
    JSON_CODEC,
    MAX_ROUTE_LENGTH,
    NOT_FOUND,
    PROTO_CODEC,
    Codec,
    codec_for,
    codec_of_message,
)

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute :func:`route` marks a method with.
_MARK = "__wsfabric_routes__"

#: Route names starting with this are wsfabric's own.
RESERVED_PREFIX = "wsfabric."


def route(name: str, request: type[Message] | None = None) -> Callable[[F], F]:
    """
    Mark a method of a :class:`Router` subclass as the handler of route
    ``name``. The method is called as ``handler(client_id, data)`` and may
    return a value, a ``Deferred`` or be a coroutine; its result is the
    response (a JSON value or a protobuf message). One method may carry
    several ``@route`` marks.

    :param name: the route name (1 to 255 characters, not starting with
        ``wsfabric.``).
    :param request: the protobuf message type of the request's ``data``, or
        ``None`` for a JSON value.
    """
    _check_route_name(name)
    _check_request_type(request)

    def mark(function: F) -> F:
        marks = list(getattr(function, _MARK, ()))
        marks.append((name, request))
        setattr(function, _MARK, tuple(marks))
        return function

    return mark


def _check_route_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_ROUTE_LENGTH:
        raise InvalidArgument(f"a route name must be a str of 1 to {MAX_ROUTE_LENGTH} characters")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidArgument(f"route names starting with {RESERVED_PREFIX!r} are reserved")
    return name


def _check_request_type(request: object) -> None:
    if request is not None and not (isinstance(request, type) and issubclass(request, Message)):
        raise InvalidArgument(
            f"request must be a protobuf message class or None, not {request!r}"
        )


@dataclass(frozen=True, slots=True)
class RouteHandler:
    """
    A registered route, as :meth:`Router.route_handler` returns it.

    :ivar name: the route name.
    :ivar function: called as ``function(client_id, data)``.
    :ivar request: the declared protobuf request type, or ``None``.
    """

    name: str
    function: Callable[[str, Any], Any]
    request: type[Message] | None


@implementer(IApplication)
class Router:
    """
    A routed application. Subclass it, mark handler methods with
    :func:`route` (or register callables with :meth:`add_route`), and use
    the ``push_*`` methods to send routed messages::

        class ChatApp(Router):
            @route("chat.send")
            async def send(self, client_id, data):
                await self.push_to_group("lobby", "chat.message", data)
                return {"ok": True}

    The connect and close events reach :meth:`on_client_connect` and
    :meth:`on_client_close`, which a subclass may override.

    :param fabric: the :class:`~wsfabric.interfaces.IFabric` (kept as
        ``self.fabric``).
    :param compress_routes: whether clients may ask for route compression
        (``routes=1`` in the connect URL): they then receive the route table
        as their first message and the routes' integer codes instead of
        their names.
    :ivar fabric: the fabric.
    """

    _log = Logger()

    def __init__(self, fabric: IFabric, compress_routes: bool = False) -> None:
        self.fabric = fabric
        self.compress_routes = compress_routes
        self._handlers: dict[str, RouteHandler] = {}
        self._push_routes: list[str] = []
        # name -> code, and back; fixed the first time the table is needed.
        self._codes: dict[str, int] | None = None
        self._names: dict[int, str] = {}
        # The codec of each client this router heard connect (None: chosen
        # per message, the client negotiated none).
        self._client_codecs: dict[str, Codec | None] = {}
        # The marked methods of this instance's class, the most derived
        # definition of each attribute winning (an override without @route
        # is no handler).
        definitions: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            definitions.update(vars(klass))
        for attribute, function in definitions.items():
            for name, request in getattr(function, _MARK, ()):
                self.add_route(name, getattr(self, attribute), request)

    # -- registration ----------------------------------------------------------

    def add_route(
        self,
        name: str,
        handler: Callable[[str, Any], Any],
        request: type[Message] | None = None,
    ) -> None:
        """
        Register ``handler`` for route ``name`` on this instance.

        :param handler: called as ``handler(client_id, data)``; see
            :func:`route`.
        :param request: the protobuf message type of the request's ``data``,
            or ``None`` for a JSON value.
        :raises wsfabric.errors.InvalidArgument: for a bad or reserved name, a
            name already registered, or a ``request`` that is no protobuf
            message class.
        """
        _check_route_name(name)
        _check_request_type(request)
        if name in self._handlers:
            raise InvalidArgument(f"route {name!r} is registered already")
        if not callable(handler):
            raise InvalidArgument(f"the handler of route {name!r} is not callable")
        self._handlers[name] = RouteHandler(name, handler, request)

    def declare_push(self, *names: str) -> None:
        """
        Declare routes this application pushes, so that route compression
        gives them codes too (undeclared push routes travel by name).
        """
        for name in names:
            _check_route_name(name)
            if name not in self._push_routes and name not in self._handlers:
                self._push_routes.append(name)

    def route_handler(self, name: str) -> RouteHandler | None:
        """
        :param name: a route name.
        :return: its handler, or ``None`` when no route has that name (used
            by service-to-service calls, :mod:`wsfabric.rpc`).
        """
        return self._handlers.get(name)

    def routes(self) -> list[str]:
        """
        :return: the names of the registered routes.
        """
        return list(self._handlers)

    def route_table(self) -> dict[str, int]:
        """
        The route compression table: every registered route and declared
        push route, by name, with its code (from 1, in name order, so that
        every backend running the same application agrees). It is fixed the
        first time it is needed; routes added later are not in it.
        """
        if self._codes is None:
            names = sorted(set(self._handlers) | set(self._push_routes))
            self._codes = {name: code for code, name in enumerate(names, 1)}
            self._names = {code: name for name, code in self._codes.items()}
        return self._codes

    # -- hooks for subclasses ----------------------------------------------------

    def on_client_connect(self, client_id: str, request: ConnectRequest) -> Any:
        """
        A client has connected (the router has set it up). Override it like
        :meth:`~wsfabric.interfaces.IApplication.on_connect`: it may raise
        :class:`~wsfabric.errors.Reject`, return a Deferred, or be a
        coroutine.
        """
        return None

    def on_client_close(self, client_id: str) -> Any:
        """
        A client has gone. Override it like
        :meth:`~wsfabric.interfaces.IApplication.on_close`.
        """
        return None

    # -- IApplication ------------------------------------------------------------

    def on_connect(self, client_id: str, request: ConnectRequest) -> Any:
        """
        Note the client's codec, announce the route table if it asked for
        route compression, then run :meth:`on_client_connect`.
        """
        codec = codec_for(request.subprotocol)
        self._client_codecs[client_id] = codec
        if self.compress_routes and request.params.get("routes") == "1":
            table = (codec or JSON_CODEC).encode_route_table(self.route_table())
            self._sent(self.fabric.send_to_client(client_id, table), client_id, None)
        try:
            result = self.on_client_connect(client_id, request)
            if iscoroutine(result):
                result = Deferred.fromCoroutine(result)
        except BaseException:
            # A refused (or failed) client may hear no on_close.
            self._client_codecs.pop(client_id, None)
            raise
        if isinstance(result, Deferred):
            result.addErrback(self._connect_failed, client_id)
        return result

    def _connect_failed(self, failure: Failure, client_id: str) -> Failure:
        self._client_codecs.pop(client_id, None)
        return failure

    def on_message(self, client_id: str, message: str | bytes) -> Deferred[None] | None:
        """
        Dispatch a routed message: decode it, run its handler, and answer a
        request with its result or an error (a notify gets an error only).
        A subclass that also wants raw messages may override this and call
        ``super().on_message`` for the routed ones.

        :return: ``None``, or a Deferred that fires (never fails) once the
            handler has finished and the answer is sent, so that the
            client's next message waits for it.
        """
        codec = self._client_codecs.get(client_id) or codec_of_message(message)
        try:
            inbound = codec.decode_inbound(message)
        except BadEnvelope as e:
            self._error(client_id, codec, e.id, e.route, e.code, e.message)
            return None
        name = inbound.route
        if type(name) is int:
            if self.compress_routes:
                self.route_table()
            name = self._names.get(name, name)  # type: ignore[arg-type]
        handler = self._handlers.get(name)  # type: ignore[arg-type]
        if handler is None:
            self._error(
                client_id, codec, inbound.id, inbound.route, NOT_FOUND,
                f"no route {inbound.route!r}",
            )
            return None
        try:
            data = codec.decode_data(inbound.data, handler.request)
        except BadEnvelope as e:
            self._error(client_id, codec, inbound.id, inbound.route, e.code, e.message)
            return None
        try:
            result = handler.function(client_id, data)
            if iscoroutine(result):
                result = Deferred.fromCoroutine(result)
        except Exception:
            self._failed(Failure(), client_id, codec, inbound.id, inbound.route)
            return None
        if isinstance(result, Deferred):
            return result.addCallbacks(
                self._answer,
                self._failed,
                callbackArgs=(client_id, codec, inbound.id, inbound.route),
                errbackArgs=(client_id, codec, inbound.id, inbound.route),
            )
        self._answer(result, client_id, codec, inbound.id, inbound.route)
        return None

    def on_close(self, client_id: str) -> Any:
        """
        Forget the client, then run :meth:`on_client_close`.
        """
        self._client_codecs.pop(client_id, None)
        return self.on_client_close(client_id)

    # -- answers -------------------------------------------------------------------

    def _answer(
        self, result: Any, client_id: str, codec: Codec, id: int | None, route: str | int
    ) -> None:
        if id is None:
            return
        try:
            response = codec.encode_response(id, result)
        except Exception:
            self._failed(Failure(), client_id, codec, id, route)
            return
        self._sent(self.fabric.send_to_client(client_id, response), client_id, route)

    def _failed(
        self,
        failure: Failure,
        client_id: str,
        codec: Codec,
        id: int | None,
        route: str | int,
    ) -> None:
        error = failure.value
        if isinstance(error, RouteError):
            self._error(client_id, codec, id, route, str(error.code), str(error.message))
            return
        self._log.failure(
            "route {route!r} failed for client {client_id}",
            failure,
            route=route,
            client_id=client_id,
        )
        self._error(client_id, codec, id, route, INTERNAL, "internal error")

    def _error(
        self,
        client_id: str,
        codec: Codec,
        id: int | None,
        route: str | int | None,
        code: str,
        message: str,
    ) -> None:
        try:
            error = codec.encode_error(id, route, code, message)
        except Exception:
            # Only an unencodable route name can get here; leave it out.
            error = codec.encode_error(id, None, code, message)
        self._sent(self.fabric.send_to_client(client_id, error), client_id, route)

    def _sent(self, sent: Deferred[None], client_id: str, route: str | int | None) -> None:
        sent.addErrback(
            lambda failure: self._log.failure(
                "could not answer client {client_id} (route {route!r})",
                failure,
                client_id=client_id,
                route=route,
            )
        )

    # -- pushes ----------------------------------------------------------------------

    def variants(self, route: str, data: Any = None) -> Variants:
        """
        Encode a push once for every kind of client.

        :param route: the push route name.
        :param data: a JSON value or a protobuf message.
        :return: the push as JSON and as protobuf, with and without route
            compression; any :class:`~wsfabric.interfaces.IFabric` send method
            takes it.
        :raises wsfabric.errors.InvalidArgument: if ``data`` cannot be encoded
            (bytes, or a value JSON cannot represent) or ``route`` is invalid.
        """
        if not isinstance(route, str) or not 1 <= len(route) <= MAX_ROUTE_LENGTH:
            raise InvalidArgument(
                f"a push route must be a str of 1 to {MAX_ROUTE_LENGTH} characters"
            )
        json_data = JSON_CODEC.encode_data(data)
        proto_data = PROTO_CODEC.encode_data(data)
        json_push = JSON_CODEC.encode_push(route, json_data)
        proto_push = PROTO_CODEC.encode_push(route, proto_data)
        code = self.route_table().get(route) if self.compress_routes else None
        if code is None:
            return Variants(json_push, proto_push)
        return Variants(
            json_push,
            proto_push,
            JSON_CODEC.encode_push(route, json_data, code),
            PROTO_CODEC.encode_push(route, proto_data, code),
        )

    def _push(self, send: Callable[[Variants], Deferred[None]], route: str, data: Any) -> Any:
        try:
            variants = self.variants(route, data)
        except InvalidArgument:
            return fail()
        return send(variants)

    def push_to_client(self, client_id: str, route: str, data: Any = None) -> Deferred[None]:
        """
        Push ``data`` on ``route`` to one client (in its codec).
        """
        return self._push(lambda v: self.fabric.send_to_client(client_id, v), route, data)

    def push_to_clients(
        self, client_ids: Iterable[str], route: str, data: Any = None
    ) -> Deferred[None]:
        """
        Push ``data`` on ``route`` to each of ``client_ids``.
        """
        return self._push(lambda v: self.fabric.send_to_clients(client_ids, v), route, data)

    def push_to_uid(self, uid: str, route: str, data: Any = None) -> Deferred[None]:
        """
        Push ``data`` on ``route`` to every client bound to ``uid``.
        """
        return self._push(lambda v: self.fabric.send_to_uid(uid, v), route, data)

    def push_to_group(
        self, group: str, route: str, data: Any = None, exclude: Iterable[str] = ()
    ) -> Deferred[None]:
        """
        Push ``data`` on ``route`` to every member of ``group`` except those
        in ``exclude``.
        """
        return self._push(
            lambda v: self.fabric.send_to_group(group, v, exclude), route, data
        )

    def push_to_all(
        self, route: str, data: Any = None, exclude: Iterable[str] = ()
    ) -> Deferred[None]:
        """
        Push ``data`` on ``route`` to every client except those in
        ``exclude``.
        """
        return self._push(lambda v: self.fabric.send_to_all(v, exclude), route, data)


__all__ = ["RESERVED_PREFIX", "Router", "route"]
