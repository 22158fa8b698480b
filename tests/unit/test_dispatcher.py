"""
The dispatcher: one client's events in order whatever the hooks return,
hook errors contained and logged, Reject, backpressure.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.unit.apps import RecordingApp
from wsfabric.backend.dispatcher import Dispatcher
from wsfabric.errors import ClientNotFound, Reject
from wsfabric.interfaces import IApplication
from wsfabric.message import ConnectRequest
from wsfabric.metrics import Metrics
from wsfabric.testing import StandaloneHarness

REQUEST = ConnectRequest(peer="tcp4:127.0.0.1:1")


@implementer(IApplication)
class SlowApp:
    """
    Every hook returns a Deferred the test fires by hand; records starts and
    ends.
    """

    def __init__(self, style: str) -> None:
        self.style = style
        self.log: list[str] = []
        self.pending: list[Deferred[None]] = []

    def _hold(self, label: str) -> Any:
        self.log.append("start " + label)
        waiter: Deferred[None] = Deferred()
        waiter.addCallback(lambda _: self.log.append("end " + label))
        self.pending.append(waiter)
        if self.style == "deferred":
            return waiter
        if self.style == "coroutine":

            async def hook() -> None:
                await waiter

            return hook()
        return None

    def on_connect(self, client_id: str, request: Any) -> Any:
        return self._hold("connect")

    def on_message(self, client_id: str, message: Any) -> Any:
        return self._hold(str(message))

    def on_close(self, client_id: str) -> Any:
        return self._hold("close")


class OrderingTests(SynchronousTestCase):
    def run_in_order(self, style: str) -> None:
        app = SlowApp(style)
        dispatcher = Dispatcher(app, Metrics())
        connected = dispatcher.client_connected("c", REQUEST)
        dispatcher.client_message("c", "1")
        dispatcher.client_message("c", "2")
        dispatcher.client_closed("c")
        dispatcher.client_message("c", "after close")
        # Only on_connect has started: the rest waits for it.
        self.assertEqual(app.log, ["start connect"])
        self.assertNoResult(connected)
        for step in range(4):
            app.pending[step].callback(None)
        self.assertIsNone(self.successResultOf(connected))
        self.assertEqual(
            app.log,
            [
                "start connect", "end connect",
                "start 1", "end 1",
                "start 2", "end 2",
                "start close", "end close",
            ],
        )
        self.assertEqual(len(dispatcher), 0)

    def test_deferred_hooks_in_order(self) -> None:
        """
        Hooks returning Deferreds run one at a time, in order, on_close last;
        nothing runs after on_close.
        """
        self.run_in_order("deferred")

    def test_coroutine_hooks_in_order(self) -> None:
        """
        async def hooks run one at a time, in order.
        """
        self.run_in_order("coroutine")

    def test_plain_hooks(self) -> None:
        """
        Plain hooks run at once, in order.
        """
        harness = StandaloneHarness(RecordingApp)
        client = harness.connect()
        for number in range(5):
            client.send(str(number))
        client.disconnect()
        self.assertEqual(
            harness.app.kinds(client.client_id),
            ["connect", "0", "1", "2", "3", "4", "close"],
        )

    def test_clients_do_not_wait_for_each_other(self) -> None:
        """
        A slow hook of one client does not hold up another client.
        """
        harness = StandaloneHarness(RecordingApp)
        harness.app.hold = True
        a, b = harness.connect(), harness.connect()
        a.send("a1")
        a.send("a2")
        b.send("b1")
        self.assertEqual(harness.app.kinds(a.client_id), ["connect", "a1"])
        self.assertEqual(harness.app.kinds(b.client_id), ["connect", "b1"])
        harness.app.held[0].callback(None)
        self.assertEqual(harness.app.kinds(a.client_id), ["connect", "a1", "a2"])

    def test_long_backlog_of_sync_hooks(self) -> None:
        """
        Thousands of queued events of synchronous hooks run without deep
        recursion.
        """
        app = SlowApp("deferred")
        dispatcher = Dispatcher(app, Metrics())
        dispatcher.client_message("c", "first")
        app.style = "plain"
        for number in range(5000):
            dispatcher.client_message("c", number)
        app.pending[0].callback(None)
        self.assertEqual(app.log[-1], "start 4999")


class ErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.harness = StandaloneHarness(RecordingApp)

    def test_hook_error_is_logged_with_client_id(self) -> None:
        """
        An exception in on_message is logged with the hook name, the client id
        and the traceback; the client stays connected and later events run.
        """
        client = self.harness.connect()
        other = self.harness.connect()
        self.harness.app.fail_on = "bad"
        client.send("bad")
        client.send("good")
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["client_id"], client.client_id)
        self.assertEqual(failures[0]["hook"], "on_message")
        self.assertIsInstance(failures[0]["log_failure"].value, RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        self.assertIsNone(client.close_code)
        self.assertEqual(self.harness.app.kinds(client.client_id)[-1], "good")
        self.assertIsNone(other.close_code)
        self.assertEqual(self.harness.metrics.hook_errors, 1)

    def test_async_hook_error(self) -> None:
        """
        A failing coroutine hook is contained the same way.
        """

        @implementer(IApplication)
        class AsyncFailing:
            def __init__(self, fabric: Any) -> None:
                pass

            async def on_connect(self, client_id: str, request: Any) -> None:
                pass

            async def on_message(self, client_id: str, message: Any) -> None:
                raise ValueError("async boom")

            async def on_close(self, client_id: str) -> None:
                pass

        harness = StandaloneHarness(AsyncFailing)
        client = harness.connect()
        client.send("x")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIsNone(client.close_code)

    def test_reject(self) -> None:
        """
        Reject from on_connect closes the client with its code; it never
        counts as online and on_close is not called.
        """
        self.harness.app.reject = Reject(4003, "go away")
        client = self.harness.connect()
        self.assertEqual(
            (client.connection.close_code, client.connection.close_reason),
            (4003, "go away"),
        )
        self.assertFalse(self.successResultOf(self.harness.fabric.is_online(client.client_id)))
        self.assertEqual(self.successResultOf(self.harness.fabric.get_all_client_count()), 0)
        client.send("ignored")
        client.disconnect()
        self.assertEqual(self.harness.app.kinds(client.client_id), ["connect"])
        self.assertEqual(self.harness.metrics.rejected_total, 1)

    def test_reject_with_reserved_code(self) -> None:
        """
        A Reject code outside 1000 and 3000-4999 becomes 1008.
        """
        self.harness.app.reject = Reject(1006, "no")
        client = self.harness.connect()
        self.assertEqual(client.close_code, 1008)

    def test_on_connect_error_closes_1011(self) -> None:
        """
        A non-Reject exception in on_connect closes the client with 1011 and
        is logged; on_close still runs so the application can clean up.
        """
        self.harness.app.reject = RuntimeError("setup failed")  # type: ignore[assignment]
        client = self.harness.connect()
        self.assertEqual(client.close_code, 1011)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.harness.app.kinds(client.client_id), ["connect", "close"])


class FlowControlTests(SynchronousTestCase):
    def test_pause_and_resume(self) -> None:
        """
        A client whose events pile up behind a slow hook is paused at the
        high-water mark and resumed at the low-water mark.
        """
        calls: list[tuple[str, bool]] = []
        app = SlowApp("deferred")
        dispatcher = Dispatcher(
            app, Metrics(), lambda c, p: calls.append((c, p)), high_water=4, low_water=1
        )
        for number in range(6):
            dispatcher.client_message("c", number)
        self.assertEqual(calls, [("c", True)])
        # Five queued events; the client resumes when one is left.
        for step in range(4):
            app.pending[step].callback(None)
        self.assertEqual(calls, [("c", True)])
        app.pending[4].callback(None)
        self.assertEqual(calls, [("c", True), ("c", False)])

    def test_when_idle(self) -> None:
        """
        when_idle fires once every client's events are handled.
        """
        app = SlowApp("deferred")
        dispatcher = Dispatcher(app, Metrics())
        self.successResultOf(dispatcher.when_idle())
        dispatcher.client_message("c", "x")
        dispatcher.client_closed("c")
        idle = dispatcher.when_idle()
        self.assertNoResult(idle)
        app.pending[0].callback(None)
        app.pending[1].callback(None)
        self.successResultOf(idle)

    def test_when_idle_ignores_connected_clients(self) -> None:
        """
        when_idle waits for hooks that are running, not for clients that
        are merely connected: a backend shutting down while its clients stay
        connected at their gates must not wait for them to leave.
        """
        app = SlowApp("deferred")
        dispatcher = Dispatcher(app, Metrics())
        dispatcher.client_connected("idle", REQUEST)
        app.pending[0].callback(None)
        dispatcher.client_connected("busy", REQUEST)
        dispatcher.client_message("busy", "x")
        self.assertEqual(len(dispatcher), 2)
        self.assertEqual(dispatcher.busy, 1)
        idle = dispatcher.when_idle()
        self.assertNoResult(idle)
        app.pending[1].callback(None)
        self.assertNoResult(idle)
        app.pending[2].callback(None)
        self.successResultOf(idle)
        self.assertEqual(dispatcher.busy, 0)
        self.successResultOf(dispatcher.when_idle())

    def test_gate_pauses_connection(self) -> None:
        """
        In standalone mode the dispatcher's flow control reaches the client's
        connection.
        """
        harness = StandaloneHarness(RecordingApp)
        harness.app.hold = True
        client = harness.connect()
        for number in range(300):
            client.send(str(number))
        self.assertFalse(client.connection.reading)
        while harness.app.held:
            harness.app.held.pop(0).callback(None)
        self.assertTrue(client.connection.reading)
        self.assertEqual(len(harness.app.kinds(client.client_id)), 301)




class ConnectOrderTests(SynchronousTestCase):
    def test_rejected_client_is_forgotten(self) -> None:
        """
        After a Reject the dispatcher keeps nothing of the client, and
        shutdown does not wait for it.
        """
        harness = StandaloneHarness(RecordingApp)
        harness.app.reject = Reject(4000, "no")
        harness.connect()
        self.assertEqual(len(harness.dispatcher), 0)
        self.successResultOf(harness.dispatcher.when_idle())

    def test_messages_wait_for_on_connect(self) -> None:
        """
        Messages a client sends while on_connect runs reach on_message only
        once on_connect has finished; if it rejects, they never do.
        """

        @implementer(IApplication)
        class SlowConnect(RecordingApp):
            def on_connect(self, client_id: str, request: Any) -> Any:
                super().on_connect(client_id, request)
                self.connecting = Deferred()
                return self.connecting

        harness = StandaloneHarness(SlowConnect)
        accepted = harness.connect()
        accepted.send("early")
        self.assertEqual(harness.app.kinds(accepted.client_id), ["connect"])
        harness.app.connecting.callback(None)
        self.assertEqual(harness.app.kinds(accepted.client_id), ["connect", "early"])

        refused = harness.connect()
        for number in range(100):
            refused.send(str(number))
        self.assertFalse(refused.connection.reading)
        harness.app.connecting.errback(Reject(4001, "no"))
        self.assertEqual(harness.app.kinds(refused.client_id), ["connect"])
        self.assertEqual(refused.close_code, 4001)

    def test_failed_on_connect_drops_pending_messages(self) -> None:
        """
        If on_connect fails, the client is closed with 1011; messages it sent
        meanwhile are dropped, and on_close comes right after on_connect.
        """

        @implementer(IApplication)
        class FailingConnect(RecordingApp):
            def on_connect(self, client_id: str, request: Any) -> Any:
                super().on_connect(client_id, request)
                self.connecting = Deferred()
                return self.connecting

        harness = StandaloneHarness(FailingConnect)
        client = harness.connect()
        client.send("lost")
        harness.app.connecting.errback(RuntimeError("setup failed"))
        self.assertEqual(client.close_code, 1011)
        self.assertEqual(harness.app.kinds(client.client_id), ["connect", "close"])
        self.flushLoggedErrors(RuntimeError)


class DeadGateTests(SynchronousTestCase):
    def test_forget_gate_closes_its_clients_once(self) -> None:
        """
        When a gate is declared dead, each of its clients gets on_close
        (after its pending events); clients of other gates are untouched,
        and events of the dead gate's clients that arrive later (a paused
        gate resuming) run nothing, not even a second on_close.
        """
        app = SlowApp("deferred")
        dispatcher = Dispatcher(app, Metrics())
        dead, alive = "0123456789abcdef", "fedcba9876543210"
        dispatcher.client_connected(f"{dead}-1", REQUEST)
        app.pending.pop(0).callback(None)
        dispatcher.client_message(f"{dead}-1", "busy")  # still running
        busy = app.pending.pop(0)
        dispatcher.client_connected(f"{dead}-2", REQUEST)
        app.pending.pop(0).callback(None)
        dispatcher.client_connected(f"{alive}-1", REQUEST)
        app.pending.pop(0).callback(None)
        app.log.clear()

        self.assertEqual(dispatcher.forget_gate(dead), 2)
        self.assertEqual(app.log, ["start close"])  # dead-2 at once
        app.pending.pop(0).callback(None)
        busy.callback(None)  # "busy" ends, then dead-1 closes
        app.pending.pop(0).callback(None)
        self.assertEqual(
            app.log, ["start close", "end close", "end busy", "start close", "end close"]
        )
        app.log.clear()
        dispatcher.client_message(f"{dead}-1", "late")
        dispatcher.client_closed(f"{dead}-2")
        refused = dispatcher.client_connected(f"{dead}-3", REQUEST)
        self.assertEqual(app.log, [])
        self.failureResultOf(refused).trap(ClientNotFound)
        self.assertEqual(len(dispatcher), 1)  # the other gate's client
