"""
Service-to-service calls: :meth:`IFabric.call` and :meth:`IFabric.notify`.

A call travels over the same bus as fan-out (Redis pub/sub in a cluster, the
in-memory bus in standalone mode), so RPC needs no second broker and no new
connections:

- every node that hosts an application subscribes to its own request
  channel ``rpc:<node_id>`` (the Redis channel ``{ns}:ch:rpc:<node_id>``);
- every node that makes calls subscribes to its own reply channel
  ``rpc-reply:<node_id>``;
- a call picks one live backend of the service, round robin over the
  backends registered with that service name (their leases, read through a
  :class:`RegistryDirectory` that caches the registry for a second), and
  publishes the request to its channel. ``PUBLISH`` answers how many
  subscribers took the message: 0 means the backend is not listening any
  more (killed, or cut off from Redis), and the next backend is tried at
  once, so a dead backend whose lease has not expired yet costs no timeout.

Every request and reply is JSON, signed with HMAC-SHA256 under the cluster
secret when one is set; a node with a secret drops (and logs) a message that
is unsigned, badly signed or more than :data:`MAX_SKEW` seconds old.

The callee runs the route with :class:`AppHandler`: a
:class:`~wsfabric.routing.Router` handler registered for the route (called
with ``client_id=None``: a service call has no client), else the
application's ``on_call(route, data)``. Data and results follow the rules of
the ``wsfabric.json`` codec: JSON values, protobuf messages converted to and
from JSON objects, never raw ``bytes``. docs/services.md is the guide.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Iterable
from inspect import iscoroutine
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfabric.errors import (
    InvalidArgument,
    RemoteError,
    RequestTimeout,
    RouteError,
    WsfabricError,
)
from wsfabric.interfaces import IBus, ISubscription

#: The error code of a call to a service with no live backend.
SERVICE_UNAVAILABLE = "service_unavailable"
#: The error code of a call refused because too many are in flight.
OVERLOADED = "overloaded"
#: The error code of a route the callee does not know.
NOT_FOUND = "not_found"
#: The error code of a handler that failed unexpectedly.
INTERNAL = "internal"
#: The error code of a request whose data did not fit the route.
BAD_REQUEST = "bad_request"

#: Seconds a signed message stays acceptable (clocks of the nodes must agree
#: within this).
MAX_SKEW = 300.0
#: The largest encoded request or reply, in bytes.
MAX_PAYLOAD = 1024 * 1024


def request_channel(node_id: str) -> str:
    """
    :return: the bus channel on which ``node_id`` takes requests.
    """
    return "rpc:" + node_id


def reply_channel(node_id: str) -> str:
    """
    :return: the bus channel on which ``node_id`` takes replies.
    """
    return "rpc-reply:" + node_id


# -- signing -----------------------------------------------------------------------


def seal(secret: bytes, body: bytes) -> bytes:
    """
    Prefix ``body`` with its HMAC-SHA256 under ``secret`` (``-`` when there
    is no secret).
    """
    if not secret:
        return b"- " + body
    return hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii") + b" " + body


def unseal(secret: bytes, payload: bytes) -> bytes:
    """
    :return: the body of a sealed ``payload``.
    :raises ValueError: if it is malformed, or if ``secret`` is set and the
        signature is missing or wrong.
    """
    tag, sep, body = bytes(payload).partition(b" ")
    if not sep:
        raise ValueError("not a wsfabric RPC message")
    if secret:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
        if not hmac.compare_digest(tag, expected):
            raise ValueError("unsigned or badly signed")
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_data(data: Any) -> Any:
    """
    :return: ``data`` as RPC carries it: a JSON value (a protobuf message
        becomes its JSON object, as in the ``wsfabric.json`` codec).
    :raises InvalidArgument: for ``bytes`` or a value JSON cannot represent.
    """
    from wsfabric.routing.codec import JSON_CODEC

    data = JSON_CODEC.encode_data(data)
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"RPC data must be JSON-serialisable: {e}") from None
    return data


# -- where services are ---------------------------------------------------------------


class StaticDirectory:
    """
    A fixed map of services to nodes: standalone mode (``serve_all``: its one
    application serves every service name) and tests.

    :param services: ``{service: [node ids]}``.
    :param serve_all: nodes that serve any service name not in ``services``.
    """

    def __init__(
        self, services: dict[str, list[str]] | None = None, serve_all: Iterable[str] = ()
    ) -> None:
        self.services = dict(services or {})
        self.serve_all = list(serve_all)

    def backends(self, service: str) -> Deferred[list[str]]:
        """
        :return: the nodes of ``service``.
        """
        return succeed(list(self.services.get(service, self.serve_all)))

    def forget(self, node_id: str) -> None:
        """
        Nothing to forget in a fixed map.
        """


class RegistryDirectory:
    """
    The live backends of each service, read from the node registry (leases)
    and cached for ``refresh`` seconds; a node that stopped listening is
    forgotten at once (until the next read).

    :param clock: the clock.
    :param live_backends: returns a Deferred of ``{node_id: info}`` for the
        live backends (``RedisRegistry.live_nodes("backend")``); ``info``
        carries ``"service"``.
    :param refresh: seconds a read stays fresh.
    """

    def __init__(
        self,
        clock: IReactorTime,
        live_backends: Callable[[], Deferred[dict[str, dict[str, Any]]]],
        refresh: float = 1.0,
    ) -> None:
        self._clock = clock
        self._live_backends = live_backends
        self.refresh = refresh
        self._services: dict[str, list[str]] = {}
        self._read_at: float | None = None
        self._reading: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []

    def backends(self, service: str) -> Deferred[list[str]]:
        """
        :return: the live backends of ``service``, sorted by id; fails with
            :class:`~wsfabric.errors.ClusterUnavailable` if the registry
            cannot be read and nothing is cached.
        """
        fresh = self._read_at is not None and self._clock.seconds() - self._read_at < self.refresh
        if fresh:
            return succeed(list(self._services.get(service, ())))
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        if self._reading is None:
            self._reading = self._live_backends()
            self._reading.addCallbacks(self._read, self._read_failed)
        return waiting.addCallback(lambda _: list(self._services.get(service, ())))

    def _read(self, live: dict[str, dict[str, Any]]) -> None:
        services: dict[str, list[str]] = {}
        for node_id, info in sorted(live.items()):
            name = info.get("service", "default") if isinstance(info, dict) else "default"
            services.setdefault(str(name), []).append(node_id)
        self._services = services
        self._read_at = self._clock.seconds()
        self._release(None)

    def _read_failed(self, failure: Failure) -> None:
        if self._read_at is not None:
            # Keep serving the last answer rather than failing every call
            # during a short Redis outage; sends would fail anyway.
            self._release(None)
        else:
            self._release(failure)

    def _release(self, outcome: Failure | None) -> None:
        self._reading = None
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            if outcome is None:
                deferred.callback(None)
            else:
                deferred.errback(Failure(outcome.value, outcome.type, outcome.tb))

    def forget(self, node_id: str) -> None:
        """
        Stop picking ``node_id`` until the registry is read again (it took
        no request: not subscribed any more).
        """
        for nodes in self._services.values():
            if node_id in nodes:
                nodes.remove(node_id)


# -- the callee's side ----------------------------------------------------------------


class AppHandler:
    """
    Runs calls on an application: a :class:`~wsfabric.routing.Router` handler
    of the route (called as ``handler(None, data)``; its declared protobuf
    request type is parsed from the JSON data), else the application's
    ``on_call(route, data)``.

    :param app: the application.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def _route(self, route: str) -> Any:
        find = getattr(self.app, "route_handler", None)
        return find(route) if callable(find) else None

    def handle(self, route: str, data: Any) -> Deferred[Any]:
        """
        :return: a Deferred of the handler's result; it fails with
            :class:`~wsfabric.errors.RouteError` (``not_found``,
            ``bad_request`` or the handler's own code), or with the
            handler's unexpected exception.
        """
        handler = self._route(route)
        if handler is not None:
            request = getattr(handler, "request", None)
            if request is not None:
                from wsfabric.routing.codec import JSON_CODEC

                try:
                    data = JSON_CODEC.decode_data(data, request)
                except RouteError:
                    return fail()
            return _run(handler.function, None, data)
        on_call = getattr(self.app, "on_call", None)
        if callable(on_call):
            return _run(on_call, route, data)
        return fail(RouteError(NOT_FOUND, f"no route {route!r}"))


def _run(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    def call() -> Any:
        result = function(*args)
        if iscoroutine(result):
            return Deferred.fromCoroutine(result)
        return result

    return maybeDeferred(call)


# -- the endpoint -------------------------------------------------------------------------


class _Pending:
    __slots__ = ("deferred", "timer", "route", "service")

    def __init__(self, deferred: Deferred[Any], timer: Any, route: str, service: str) -> None:
        self.deferred = deferred
        self.timer = timer
        self.route = route
        self.service = service


class RpcEndpoint:
    """
    One node's end of RPC: it makes calls (:meth:`call`, :meth:`notify`)
    and, given a ``handler``, answers the calls sent to it.

    :param clock: for timeouts and message ages.
    :param bus: the bus requests and replies travel on.
    :param node_id: this node's id (its channels' names).
    :param directory: where services are (``backends(service)``,
        ``forget(node_id)``).
    :param secret: the cluster secret (``b""``: unsigned, accepts anything).
    :param handler: runs the calls this node takes (an :class:`AppHandler`),
        or ``None`` for a node that only calls.
    :param max_in_flight: calls this node may wait on at once; more fail at
        once with ``RemoteError("overloaded")``.
    :param max_handling: calls this node may run at once; more are answered
        ``overloaded``.
    :param publish_counted: ``(channel, payload) -> Deferred[int]``, a
        publish that answers how many subscribers took the message; by
        default ``bus.publish_counted`` when the bus has it, else the
        plain publish (counted as taken).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        bus: IBus,
        node_id: str,
        directory: Any,
        *,
        secret: bytes = b"",
        handler: AppHandler | None = None,
        max_in_flight: int = 10000,
        max_handling: int = 10000,
        publish_counted: Callable[[str, bytes], Deferred[int]] | None = None,
    ) -> None:
        self._clock = clock
        self._bus = bus
        self.node_id = node_id
        self._directory = directory
        self._secret = secret or b""
        self._handler = handler
        self.max_in_flight = max_in_flight
        self.max_handling = max_handling
        if publish_counted is None:
            publish_counted = getattr(bus, "publish_counted", None) or self._publish_plain
        self._publish_counted = publish_counted
        self._ids = itertools.count(1)
        self._turns: dict[str, int] = {}
        self._pending: dict[int, _Pending] = {}
        self._handling = 0
        self._replies: ISubscription | None = None
        self._requests: ISubscription | None = None
        #: Counters (for metrics and tests).
        self.stats = {
            "calls": 0,
            "notifies": 0,
            "handled": 0,
            "timeouts": 0,
            "rejected": 0,
            "dropped_unsigned": 0,
        }

    def _publish_plain(self, channel: str, payload: bytes) -> Deferred[int]:
        return self._bus.publish(channel, payload).addCallback(lambda _: 1)

    # -- lifecycle

    def start(self) -> Deferred[None]:
        """
        Subscribe to the reply channel (and, with a handler, the request
        channel), once; every call waits for the subscriptions to be ready
        (at once when they are). A subscription that cannot be confirmed now
        stays wanted and is restored when Redis comes back.

        :return: fires once the subscriptions are ready; fails with
            :class:`~wsfabric.errors.ClusterUnavailable`.
        """
        if self._replies is None:
            self._replies = self._bus.subscribe(reply_channel(self.node_id), self._reply_received)
            if self._handler is not None:
                self._requests = self._bus.subscribe(
                    request_channel(self.node_id), self._request_received
                )
        waits = [self._replies.when_ready()]
        if self._requests is not None:
            waits.append(self._requests.when_ready())
        if len(waits) == 1:
            return waits[0]
        return gatherResults(waits, consumeErrors=True).addCallbacks(
            lambda _: None, lambda f: f.value.subFailure
        )

    def stop(self) -> Deferred[None]:
        """
        Unsubscribe, and fail the calls still waiting with
        ``RemoteError("service_unavailable")``.
        """
        cancels = []
        for subscription in (self._replies, self._requests):
            if subscription is not None:
                cancels.append(subscription.cancel().addErrback(lambda _: None))
        self._replies = self._requests = None
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer.active():
                entry.timer.cancel()
            entry.deferred.errback(
                RemoteError(SERVICE_UNAVAILABLE, "the calling node is stopping", entry.route)
            )
        return gatherResults(cancels).addCallback(lambda _: None)

    @property
    def in_flight(self) -> int:
        """
        The calls waiting for a reply.
        """
        return len(self._pending)

    # -- the caller's side

    def call(
        self, service: str, route: str, data: Any = None, timeout: float = 10.0
    ) -> Deferred[Any]:
        """
        Call ``route`` on one backend of ``service``.

        :return: a Deferred of the handler's result (a JSON value); it fails
            with :class:`~wsfabric.errors.RemoteError` (the remote code:
            ``service_unavailable``, ``overloaded``, ``not_found``,
            ``bad_request``, ``internal`` or a ``RouteError`` code of the
            handler), :class:`~wsfabric.errors.RequestTimeout` when no reply
            comes within ``timeout`` seconds, or
            :class:`~wsfabric.errors.InvalidArgument`.
        """
        try:
            _check_call(service, route)
            if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
                raise InvalidArgument("timeout must be a number of seconds in (0, 3600]")
            data = encode_data(data)
        except WsfabricError:
            return fail()
        if len(self._pending) >= self.max_in_flight:
            self.stats["rejected"] += 1
            return fail(
                RemoteError(
                    OVERLOADED,
                    f"{self.max_in_flight} calls are in flight from this node already",
                    route,
                )
            )
        self.stats["calls"] += 1
        call_id = next(self._ids)
        result: Deferred[Any] = Deferred()
        timer = self._clock.callLater(timeout, self._expire, call_id, timeout)
        self._pending[call_id] = _Pending(result, timer, route, service)
        message = {
            "t": "call",
            "id": call_id,
            "from": self.node_id,
            "route": route,
            "svc": service,
            "data": data,
        }
        self._send(service, message).addCallbacks(
            lambda _: None, self._send_failed, errbackArgs=(call_id,)
        )
        return result

    def notify(self, service: str, route: str, data: Any = None) -> Deferred[None]:
        """
        Run ``route`` on one backend of ``service`` without waiting for its
        result.

        :return: fires once the request is handed to a listening backend;
            fails with ``RemoteError("service_unavailable")`` when the
            service has none, or :class:`~wsfabric.errors.InvalidArgument`.
        """
        try:
            _check_call(service, route)
            data = encode_data(data)
        except WsfabricError:
            return fail()
        self.stats["notifies"] += 1
        message = {"t": "note", "from": self.node_id, "route": route, "svc": service, "data": data}
        return self._send(service, message)

    def _send(self, service: str, message: dict[str, Any]) -> Deferred[None]:
        route = message["route"]
        try:
            message["ts"] = self._clock.seconds()
            payload = seal(self._secret, _dumps(message))
        except (TypeError, ValueError) as e:
            return fail(InvalidArgument(f"RPC data must be JSON-serialisable: {e}"))
        if len(payload) > MAX_PAYLOAD:
            return fail(InvalidArgument(f"RPC data over {MAX_PAYLOAD} bytes encoded"))
        ready = self.start()

        def targets(_: object) -> Deferred[list[str]]:
            return self._directory.backends(service)

        def first(nodes: list[str]) -> Deferred[None]:
            if not nodes:
                raise RemoteError(
                    SERVICE_UNAVAILABLE, f"no live backend of service {service!r}", route
                )
            turn = self._turns.get(service, 0)
            self._turns[service] = turn + 1
            order = [nodes[(turn + i) % len(nodes)] for i in range(len(nodes))]
            return self._try(order, payload, service, route)

        return ready.addCallback(targets).addCallback(first)

    def _try(self, order: list[str], payload: bytes, service: str, route: str) -> Deferred[None]:
        node = order[0]

        def taken(count: int) -> Deferred[None] | None:
            if count:
                return None
            # Nobody listens on its channel: killed or cut off from Redis,
            # though its lease may not have expired yet.
            self._directory.forget(node)
            if len(order) > 1:
                return self._try(order[1:], payload, service, route)
            raise RemoteError(
                SERVICE_UNAVAILABLE, f"no live backend of service {service!r} took the call", route
            )

        return self._publish_counted(request_channel(node), payload).addCallback(taken)

    def _send_failed(self, failure: Failure, call_id: int) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is None:
            return
        if entry.timer.active():
            entry.timer.cancel()
        entry.deferred.errback(failure)

    def _expire(self, call_id: int, timeout: float) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is None:
            return
        self.stats["timeouts"] += 1
        entry.deferred.errback(RequestTimeout(f"{entry.service}/{entry.route}", timeout))

    def _reply_received(self, channel: str, payload: bytes) -> None:
        message = self._open(payload, "reply")
        if message is None or message.get("t") != "reply":
            return
        entry = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if entry is None:
            # Timed out already (or a stray reply): the call is forgotten.
            return
        if entry.timer.active():
            entry.timer.cancel()
        if message.get("ok"):
            entry.deferred.callback(message.get("data"))
            return
        error = message.get("error")
        if not isinstance(error, dict):
            error = {}
        entry.deferred.errback(
            RemoteError(
                str(error.get("code") or INTERNAL), str(error.get("message") or ""), entry.route
            )
        )

    def _open(self, payload: bytes, kind: str) -> dict[str, Any] | None:
        try:
            body = unseal(self._secret, payload)
            message = json.loads(body)
        except ValueError as e:
            self.stats["dropped_unsigned"] += 1
            self._log.warn(
                "dropped an RPC {kind} on node {node_id}: {why}",
                kind=kind,
                node_id=self.node_id,
                why=str(e),
            )
            return None
        if not isinstance(message, dict):
            return None
        sent = message.get("ts")
        if self._secret and (
            not isinstance(sent, int | float) or abs(self._clock.seconds() - sent) > MAX_SKEW
        ):
            self.stats["dropped_unsigned"] += 1
            self._log.warn(
                "dropped an RPC {kind} on node {node_id}: too old (replayed?)",
                kind=kind,
                node_id=self.node_id,
            )
            return None
        return message

    # -- the callee's side

    def _request_received(self, channel: str, payload: bytes) -> None:
        message = self._open(payload, "request")
        if message is None or message.get("t") not in ("call", "note"):
            return
        route = message.get("route")
        caller = message.get("from")
        call_id = message.get("id") if message.get("t") == "call" else None
        if not isinstance(route, str) or not isinstance(caller, str):
            return
        if self._handler is None:
            self._answer(caller, call_id, None, RouteError(NOT_FOUND, "this node serves no calls"))
            return
        if self._handling >= self.max_handling:
            self._answer(
                caller,
                call_id,
                None,
                RouteError(OVERLOADED, f"backend {self.node_id} runs too many calls"),
            )
            return
        self._handling += 1
        self.stats["handled"] += 1
        running = self._handler.handle(route, message.get("data"))
        running.addBoth(self._handled, caller, call_id, route)

    def _handled(self, outcome: Any, caller: str, call_id: int | None, route: str) -> None:
        self._handling -= 1
        if isinstance(outcome, Failure):
            error = outcome.value
            if not isinstance(error, RouteError):
                self._log.failure(
                    "RPC route {route!r} failed (called by {caller})",
                    outcome,
                    route=route,
                    caller=caller,
                )
                error = RouteError(INTERNAL, "internal error")
            self._answer(caller, call_id, None, error)
            return
        self._answer(caller, call_id, outcome, None)

    def _answer(
        self, caller: str, call_id: int | None, result: Any, error: RouteError | None
    ) -> None:
        if call_id is None:
            if error is not None and error.code != INTERNAL:
                self._log.warn(
                    "a notify from {caller} failed: {code}: {message}",
                    caller=caller,
                    code=error.code,
                    message=error.message,
                )
            return
        reply: dict[str, Any] = {"t": "reply", "id": call_id, "ts": self._clock.seconds()}
        if error is None:
            try:
                reply["data"] = encode_data(result)
                reply["ok"] = True
                payload = seal(self._secret, _dumps(reply))
            except (WsfabricError, TypeError, ValueError) as e:
                self._log.error(
                    "RPC result of call {call_id} from {caller} cannot be sent: {error}",
                    call_id=call_id,
                    caller=caller,
                    error=str(e),
                )
                reply.pop("data", None)
                error = RouteError(INTERNAL, "the result is not JSON-serialisable")
        if error is not None:
            reply["ok"] = False
            reply["error"] = {"code": str(error.code), "message": str(error.message)}
            payload = seal(self._secret, _dumps(reply))
        if len(payload) > MAX_PAYLOAD:
            reply = {
                "t": "reply",
                "id": call_id,
                "ts": reply["ts"],
                "ok": False,
                "error": {"code": INTERNAL, "message": f"the result is over {MAX_PAYLOAD} bytes"},
            }
            payload = seal(self._secret, _dumps(reply))
        self._bus.publish(reply_channel(caller), payload).addErrback(
            lambda f: self._log.warn(
                "could not send the reply of call {call_id} to {caller}: {error}",
                call_id=call_id,
                caller=caller,
                error=f.getErrorMessage(),
            )
        )


def _check_call(service: object, route: object) -> None:
    if not isinstance(service, str) or not 1 <= len(service) <= 255:
        raise InvalidArgument("service must be a str of 1 to 255 characters")
    if not isinstance(route, str) or not 1 <= len(route) <= 255:
        raise InvalidArgument("route must be a str of 1 to 255 characters")


class RpcService(Service):
    """
    Starts and stops an :class:`RpcEndpoint` with its node.

    :param endpoint: the endpoint.
    """

    _log = Logger()

    def __init__(self, endpoint: RpcEndpoint) -> None:
        self.endpoint = endpoint

    def startService(self) -> None:
        """
        Subscribe (a failure is logged; calls retry the subscription).
        """
        super().startService()
        self.endpoint.start().addErrback(
            lambda f: self._log.warn(
                "RPC channels of {node_id} not subscribed yet: {error}",
                node_id=self.endpoint.node_id,
                error=f.getErrorMessage(),
            )
        )

    def stopService(self) -> Deferred[None]:
        """
        Unsubscribe; calls still waiting fail.
        """
        super().stopService()
        return self.endpoint.stop()


def standalone_rpc(clock: IReactorTime | None, bus: IBus, node_id: str, app: Any) -> RpcEndpoint:
    """
    The RPC endpoint of standalone mode: its one application serves every
    service name, in process, over the in-memory bus.

    :param clock: the reactor (``None``: a :class:`~twisted.internet.task.Clock`
        that never advances, for in-memory harnesses; calls then never time
        out).
    """
    if clock is None:
        from twisted.internet.task import Clock

        clock = Clock()
    return RpcEndpoint(
        clock, bus, node_id, StaticDirectory(serve_all=[node_id]), handler=AppHandler(app)
    )


def cluster_rpc(
    clock: IReactorTime, redis: Any, node_id: str, secret: bytes, app: Any = None
) -> RpcEndpoint:
    """
    The RPC endpoint of a cluster node over its
    :class:`~wsfabric.cluster.redis.RedisService`: backends found through
    the registry; with ``app``, this node answers calls too.
    """
    directory = RegistryDirectory(clock, lambda: redis.registry.live_nodes("backend"))
    handler = AppHandler(app) if app is not None else None
    return RpcEndpoint(clock, redis.bus, node_id, directory, secret=secret, handler=handler)


__all__ = [
    "BAD_REQUEST",
    "INTERNAL",
    "MAX_PAYLOAD",
    "MAX_SKEW",
    "NOT_FOUND",
    "OVERLOADED",
    "SERVICE_UNAVAILABLE",
    "AppHandler",
    "RegistryDirectory",
    "RpcEndpoint",
    "RpcService",
    "StaticDirectory",
    "cluster_rpc",
    "encode_data",
    "reply_channel",
    "request_channel",
    "seal",
    "standalone_rpc",
    "unseal",
]
