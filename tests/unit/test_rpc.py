"""
Service-to-service calls (wsfabric.rpc) over the in-memory bus, with a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from wsfabric.cluster.memory import MemoryBus
from wsfabric.errors import InvalidArgument, RemoteError, RequestTimeout, RouteError
from wsfabric.interfaces import IApplication
from wsfabric.routing import Router, route
from wsfabric.rpc import (
    AppHandler,
    RegistryDirectory,
    RpcEndpoint,
    StaticDirectory,
    request_channel,
    seal,
    unseal,
)

SECRET = b"s3cret"


class GameApp(Router):
    """
    A routed application with a few service routes.
    """

    def __init__(self, fabric: Any = None) -> None:
        super().__init__(fabric)
        self.seen: list[Any] = []
        self.hold: Deferred[Any] | None = None

    @route("game.start")
    def start(self, client_id: Any, data: Any) -> Any:
        self.seen.append((client_id, data))
        return {"match": data["players"], "by": "game"}

    @route("game.refuse")
    def refuse(self, client_id: Any, data: Any) -> Any:
        raise RouteError("full", "the game is full")

    @route("game.crash")
    def crash(self, client_id: Any, data: Any) -> Any:
        raise ZeroDivisionError("boom")

    @route("game.slow")
    def slow(self, client_id: Any, data: Any) -> Any:
        self.hold = Deferred()
        return self.hold

    @route("game.async")
    async def asynchronous(self, client_id: Any, data: Any) -> Any:
        return data * 2

    @route("game.unsendable")
    def unsendable(self, client_id: Any, data: Any) -> Any:
        return object()


@implementer(IApplication)
class PlainApp:
    """
    An application that is no Router: it answers calls with on_call.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_connect(self, client_id: str, request: Any) -> None:
        pass

    def on_message(self, client_id: str, message: Any) -> None:
        pass

    def on_close(self, client_id: str) -> None:
        pass

    def on_call(self, route: str, data: Any) -> Any:
        self.calls.append((route, data))
        return {"route": route}


class CountingBus(MemoryBus):
    """
    A memory bus whose publish answers how many receivers took the message,
    as Redis's PUBLISH does.
    """

    def publish_counted(self, channel: str, payload: bytes) -> Deferred[int]:
        count = len(self._channels.get(channel, ()))
        self.publish(channel, payload)
        return succeed(count)


class RpcTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = CountingBus()
        self.apps: dict[str, Any] = {}
        self.directory = StaticDirectory({"game": []})
        self.caller = RpcEndpoint(self.clock, self.bus, "caller", self.directory, secret=SECRET)
        self.successResultOf(self.caller.start())

    def backend(self, node_id: str, app: Any = None, service: str = "game", **kw: Any) -> Any:
        app = app if app is not None else GameApp()
        endpoint = RpcEndpoint(
            self.clock,
            self.bus,
            node_id,
            self.directory,
            secret=kw.pop("secret", SECRET),
            handler=AppHandler(app),
            **kw,
        )
        self.successResultOf(endpoint.start())
        self.directory.services.setdefault(service, []).append(node_id)
        self.apps[node_id] = app
        return app


class CallTests(RpcTestCase):
    def test_call_returns_the_result(self) -> None:
        """
        A call runs the Router handler of the route with client_id None and
        answers its result.
        """
        app = self.backend("g1")
        result = self.successResultOf(self.caller.call("game", "game.start", {"players": [1, 2]}))
        self.assertEqual(result, {"match": [1, 2], "by": "game"})
        self.assertEqual(app.seen, [(None, {"players": [1, 2]})])
        self.assertEqual(self.caller.in_flight, 0)

    def test_coroutine_handler(self) -> None:
        """
        An async def handler's result is the answer.
        """
        self.backend("g1")
        self.assertEqual(self.successResultOf(self.caller.call("game", "game.async", 21)), 42)

    def test_route_error_carries_its_code(self) -> None:
        """
        A RouteError of the handler reaches the caller as a RemoteError with
        its code and message.
        """
        self.backend("g1")
        error = self.failureResultOf(self.caller.call("game", "game.refuse"), RemoteError).value
        self.assertEqual(
            (error.code, error.message, error.route), ("full", "the game is full", "game.refuse")
        )

    def test_handler_crash_is_internal(self) -> None:
        """
        An unexpected exception is logged on the callee and answered
        "internal", without its details.
        """
        self.backend("g1")
        error = self.failureResultOf(self.caller.call("game", "game.crash"), RemoteError).value
        self.assertEqual(error.code, "internal")
        self.assertNotIn("boom", error.message)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unknown_route(self) -> None:
        """
        A route the callee does not know is answered not_found.
        """
        self.backend("g1")
        error = self.failureResultOf(self.caller.call("game", "game.nope"), RemoteError).value
        self.assertEqual(error.code, "not_found")

    def test_unsendable_result(self) -> None:
        """
        A result JSON cannot carry is answered "internal".
        """
        self.backend("g1")
        error = self.failureResultOf(self.caller.call("game", "game.unsendable"), RemoteError).value
        self.assertEqual(error.code, "internal")

    def test_on_call_fallback(self) -> None:
        """
        An application that is no Router answers with on_call(route, data).
        """
        app = self.backend("p1", PlainApp(), service="plain")
        self.assertEqual(
            self.successResultOf(self.caller.call("plain", "anything", [1])), {"route": "anything"}
        )
        self.assertEqual(app.calls, [("anything", [1])])

    def test_no_backend_is_service_unavailable_at_once(self) -> None:
        """
        A service with no live backend fails at once, without a timeout.
        """
        error = self.failureResultOf(self.caller.call("game", "game.start", {}), RemoteError).value
        self.assertEqual(error.code, "service_unavailable")
        self.failureResultOf(self.caller.call("chat", "x"), RemoteError)
        self.assertEqual(self.caller.in_flight, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        A call without a reply fails with RequestTimeout after its timeout;
        a late reply is ignored.
        """
        app = self.backend("g1")
        calling = self.caller.call("game", "game.slow", None, timeout=2.0)
        self.clock.advance(1.9)
        self.assertNoResult(calling)
        self.clock.advance(0.2)
        self.failureResultOf(calling, RequestTimeout)
        self.assertEqual(self.caller.in_flight, 0)
        app.hold.callback("late")
        self.assertEqual(self.caller.stats["timeouts"], 1)

    def test_round_robin(self) -> None:
        """
        Calls go to the backends of the service in turn.
        """
        one, two = self.backend("g1"), self.backend("g2")
        for i in range(4):
            self.successResultOf(self.caller.call("game", "game.start", {"players": [i]}))
        self.assertEqual([d["players"] for _, d in one.seen], [[0], [2]])
        self.assertEqual([d["players"] for _, d in two.seen], [[1], [3]])

    def test_backend_not_listening_is_skipped(self) -> None:
        """
        A backend still listed but no longer subscribed (killed) is skipped
        at once: every call reaches the live one.
        """
        self.directory.services["game"] = ["dead"]
        app = self.backend("g1")
        for _ in range(3):
            self.successResultOf(self.caller.call("game", "game.start", {"players": []}))
        self.assertEqual(len(app.seen), 3)

    def test_all_backends_gone(self) -> None:
        """
        When no listed backend listens, the call fails service_unavailable.
        """
        self.directory.services["game"] = ["dead1", "dead2"]
        error = self.failureResultOf(self.caller.call("game", "game.start"), RemoteError).value
        self.assertEqual(error.code, "service_unavailable")

    def test_in_flight_cap(self) -> None:
        """
        Over max_in_flight calls waiting, a call fails "overloaded" at once.
        """
        self.backend("g1")
        self.caller.max_in_flight = 2
        first = self.caller.call("game", "game.slow")
        second = self.caller.call("game", "game.slow")
        error = self.failureResultOf(self.caller.call("game", "game.slow"), RemoteError).value
        self.assertEqual(error.code, "overloaded")
        self.assertNoResult(first)
        self.assertNoResult(second)

    def test_handling_cap(self) -> None:
        """
        A backend running max_handling calls answers more with "overloaded".
        """
        self.backend("g1", max_handling=1)
        running = self.caller.call("game", "game.slow")
        error = self.failureResultOf(self.caller.call("game", "game.slow"), RemoteError).value
        self.assertEqual(error.code, "overloaded")
        self.assertNoResult(running)

    def test_notify(self) -> None:
        """
        A notify runs the handler and answers nothing.
        """
        app = self.backend("g1")
        self.assertIsNone(
            self.successResultOf(self.caller.notify("game", "game.start", {"players": [7]}))
        )
        self.assertEqual(app.seen, [(None, {"players": [7]})])
        self.assertEqual(self.caller.in_flight, 0)

    def test_notify_without_backend(self) -> None:
        """
        A notify to a service with no backend fails service_unavailable.
        """
        error = self.failureResultOf(self.caller.notify("nobody", "x"), RemoteError).value
        self.assertEqual(error.code, "service_unavailable")

    def test_bad_arguments(self) -> None:
        """
        Bytes, unserialisable data, bad names and timeouts are refused.
        """
        self.backend("g1")
        self.failureResultOf(self.caller.call("game", "game.start", b"raw"), InvalidArgument)
        self.failureResultOf(self.caller.call("game", "game.start", {1j}), InvalidArgument)
        self.failureResultOf(self.caller.call("", "game.start"), InvalidArgument)
        self.failureResultOf(self.caller.call("game", 5), InvalidArgument)
        self.failureResultOf(self.caller.call("game", "x", None, timeout=0), InvalidArgument)
        self.failureResultOf(self.caller.notify("game", "x", float("nan")), InvalidArgument)

    def test_stop_fails_waiting_calls(self) -> None:
        """
        Stopping the caller fails the calls it waits on.
        """
        self.backend("g1")
        calling = self.caller.call("game", "game.slow")
        self.successResultOf(self.caller.stop())
        self.failureResultOf(calling, RemoteError)


class SigningTests(RpcTestCase):
    def test_seal_round_trip(self) -> None:
        """
        A sealed body opens with the same secret only.
        """
        sealed = seal(SECRET, b'{"a":1}')
        self.assertEqual(unseal(SECRET, sealed), b'{"a":1}')
        self.assertRaises(ValueError, unseal, b"other", sealed)
        self.assertRaises(ValueError, unseal, SECRET, seal(b"", b"{}"))
        self.assertRaises(ValueError, unseal, SECRET, b"garbage")

    def test_wrong_secret_is_dropped(self) -> None:
        """
        A backend with another secret drops the request (logged and
        counted): the call times out.
        """
        self.backend("g1", secret=b"another")
        calling = self.caller.call("game", "game.start", {"players": []}, timeout=1)
        self.clock.advance(1)
        self.failureResultOf(calling, RequestTimeout)
        self.assertEqual(self.apps["g1"].seen, [])

    def test_forged_request_is_dropped(self) -> None:
        """
        An unsigned request published by hand never runs.
        """
        app = self.backend("g1")
        self.bus.publish(
            request_channel("g1"),
            b'- {"t":"call","id":1,"from":"x","route":"game.start","data":{"players":[]},"ts":0}',
        )
        self.assertEqual(app.seen, [])

    def test_old_request_is_dropped(self) -> None:
        """
        A correctly signed request older than MAX_SKEW (a replay) never runs.
        """
        app = self.backend("g1")
        self.clock.advance(1000)
        self.bus.publish(
            request_channel("g1"),
            seal(
                SECRET,
                b'{"t":"note","from":"x","route":"game.start","data":{"players":[]},"ts":1}',
            ),
        )
        self.assertEqual(app.seen, [])


class DirectoryTests(SynchronousTestCase):
    def test_registry_directory_caches_and_groups_by_service(self) -> None:
        """
        The registry is read at most once per refresh interval; backends
        are grouped by service and sorted.
        """
        clock = Clock()
        reads: list[Deferred[dict[str, Any]]] = []

        def live() -> Deferred[dict[str, Any]]:
            reads.append(Deferred())
            return reads[-1]

        directory = RegistryDirectory(clock, live, refresh=1.0)
        first = directory.backends("game")
        second = directory.backends("chat")
        self.assertEqual(len(reads), 1)
        reads[0].callback(
            {
                "b2": {"service": "game"},
                "b1": {"service": "game"},
                "c": {"service": "chat"},
                "d": {},
            }
        )
        self.assertEqual(self.successResultOf(first), ["b1", "b2"])
        self.assertEqual(self.successResultOf(second), ["c"])
        self.assertEqual(self.successResultOf(directory.backends("default")), ["d"])
        self.assertEqual(len(reads), 1)
        directory.forget("b1")
        self.assertEqual(self.successResultOf(directory.backends("game")), ["b2"])
        clock.advance(1.0)
        refreshed = directory.backends("game")
        self.assertEqual(len(reads), 2)
        reads[1].errback(RuntimeError("redis down"))
        # A failed read keeps the last answer.
        self.assertEqual(self.successResultOf(refreshed), ["b2"])

    def test_registry_directory_fails_without_any_answer(self) -> None:
        """
        A first read that fails fails the lookup.
        """
        directory = RegistryDirectory(Clock(), lambda: Deferred(), refresh=1.0)
        reading = Deferred()
        directory._live_backends = lambda: reading
        looking = directory.backends("game")
        reading.errback(RuntimeError("down"))
        self.failureResultOf(looking, RuntimeError)
