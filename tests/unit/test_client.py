"""
:mod:`wsfabric.client` without sockets: the sans-IO session (ids,
timeouts, errors, route compression, handlers), the backoff policy, the
reconnection state machine, the raw TCP framing, URL parsing, and the whole
client over the raw TCP transport against the real server protocol in
memory (iosim).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from wsfabric.client._codec import MAX_ID, codec_named
from wsfabric.client._core import (
    MAX_HELD,
    Attempt,
    Backoff,
    Connector,
    Session,
    is_refusal,
)
from wsfabric.client._framing import (
    BINARY,
    CLOSE,
    HELLO,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    TcpClientConnection,
    encode_close,
    encode_frame,
)
from wsfabric.client._options import parse_target
from wsfabric.client._websocket import AttemptReporter, handshake_status
from wsfabric.client.twisted import _TcpFactory
from wsfabric.errors import (
    ConnectFailed,
    InvalidArgument,
    NotConnected,
    RemoteError,
    RequestTimeout,
)
from wsfabric.routing.envelope_pb2 import Envelope, RouteTable


class FakeLink:
    """
    A link that records what the session sends.
    """

    def __init__(self, subprotocol: str | None = "wsfabric.json") -> None:
        self.subprotocol = subprotocol
        self.sent: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        self.aborted = False

    def send(self, message: str | bytes) -> None:
        self.sent.append(message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True

    def last(self) -> Any:
        message = self.sent[-1]
        return json.loads(message) if isinstance(message, str) else Envelope.FromString(message)


def session(codec: str | None = "json", compress: bool = False,
            subprotocol: str | None = "default") -> tuple[Session, FakeLink, Clock]:
    clock = Clock()
    s = Session(codec_named(codec), clock, compress_routes=compress)
    if subprotocol == "default":
        subprotocol = f"wsfabric.{codec}" if codec else None
    link = FakeLink(subprotocol)
    s.attach(link)
    return s, link, clock


class RequestTests(SynchronousTestCase):
    def test_ids_count_up_from_one(self) -> None:
        """
        Request ids start at 1 and grow by one; the envelope carries route,
        id and data.
        """
        s, link, _ = session()
        s.request("a", {"x": 1})
        s.request("b")
        self.assertEqual(json.loads(link.sent[0]), {"route": "a", "id": 1, "data": {"x": 1}})
        self.assertEqual(json.loads(link.sent[1]), {"route": "b", "id": 2})

    def test_ids_wrap_and_skip_pending(self) -> None:
        """
        After 2**53 - 1 the ids start again at 1, skipping ids still pending.
        """
        s, link, _ = session()
        s.request("a")  # id 1, stays pending
        s._last_id = MAX_ID - 1
        s.request("b")
        s.request("c")
        self.assertEqual([json.loads(m)["id"] for m in link.sent], [1, MAX_ID, 2])

    def test_response(self) -> None:
        """
        The response with the request's id fires its Deferred with the data;
        the request is no longer pending.
        """
        s, _, _ = session()
        d = s.request("echo", [1])
        s.received('{"id": 1, "data": [1, 2]}')
        self.assertEqual(self.successResultOf(d), [1, 2])
        self.assertEqual(s.pending, 0)

    def test_responses_out_of_order(self) -> None:
        """
        Responses are matched by id, not by order.
        """
        s, _, _ = session()
        first = s.request("a")
        second = s.request("b")
        s.received('{"id": 2, "data": "two"}')
        self.assertNoResult(first)
        s.received('{"id": 1, "data": "one"}')
        self.assertEqual(self.successResultOf(first), "one")
        self.assertEqual(self.successResultOf(second), "two")

    def test_error_response(self) -> None:
        """
        An error response fails the request with RemoteError carrying the
        code, the message and the route.
        """
        s, _, _ = session()
        d = s.request("chat.send")
        s.received('{"id": 1, "error": {"code": "not_found", "message": "no route"}}')
        error = self.failureResultOf(d, RemoteError).value
        self.assertEqual((error.code, error.message, error.route),
                         ("not_found", "no route", "chat.send"))
        self.assertIn("not_found", str(error))

    def test_timeout(self) -> None:
        """
        No response within the timeout: RequestTimeout (a TimeoutError), the
        request is forgotten and a late response is ignored.
        """
        s, _, clock = session()
        d = s.request("slow", timeout=2.0)
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = self.failureResultOf(d, RequestTimeout).value
        self.assertIsInstance(error, TimeoutError)
        self.assertEqual(error.route, "slow")
        self.assertEqual(s.pending, 0)
        s.received('{"id": 1, "data": "late"}')
        self.assertEqual(s.pending, 0)

    def test_response_cancels_timer(self) -> None:
        """
        A response in time leaves no timer behind.
        """
        s, _, clock = session()
        s.request("a", timeout=5)
        s.received('{"id": 1, "data": null}')
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_timeout(self) -> None:
        """
        ``timeout=None`` waits without a timer; a bad timeout is refused.
        """
        s, _, clock = session()
        d = s.request("a", timeout=None)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertNoResult(d)
        self.failureResultOf(s.request("a", timeout=0), InvalidArgument)

    def test_cancel_forgets(self) -> None:
        """
        Cancelling the Deferred removes the request and its timer.
        """
        s, _, clock = session()
        d = s.request("a")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(s.pending, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_not_connected(self) -> None:
        """
        Without a link, requests fail at once and notifies and raw sends
        raise NotConnected.
        """
        s = Session(codec_named("json"), Clock())
        self.failureResultOf(s.request("a"), NotConnected)
        self.assertRaises(NotConnected, s.notify, "a")
        self.assertRaises(NotConnected, s.send_raw, "x")

    def test_connection_lost_fails_pending(self) -> None:
        """
        Losing the link fails every pending request with NotConnected,
        naming the route; their timers are cancelled.
        """
        s, _, clock = session()
        first, second = s.request("a"), s.request("b")
        s.detach("closed with code 1006")
        self.assertIn("'a'", str(self.failureResultOf(first, NotConnected).value))
        self.failureResultOf(second, NotConnected)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(s.connected)

    def test_link_closing(self) -> None:
        """
        A link that refuses to send (it is closing) fails the request and
        leaves nothing pending.
        """
        s, link, _ = session()

        def refuse(message: Any) -> None:
            raise NotConnected("the connection is closing")

        link.send = refuse  # type: ignore[method-assign]
        self.failureResultOf(s.request("a"), NotConnected)
        self.assertEqual(s.pending, 0)

    def test_bad_arguments(self) -> None:
        """
        A route that is not a string of 1-255 characters, data the codec
        cannot carry, or a request without a codec: InvalidArgument.
        """
        s, _, _ = session()
        self.failureResultOf(s.request(""), InvalidArgument)
        self.failureResultOf(s.request("x" * 256), InvalidArgument)
        self.failureResultOf(s.request(7), InvalidArgument)  # type: ignore[arg-type]
        self.failureResultOf(s.request("a", b"bytes"), InvalidArgument)
        self.assertRaises(InvalidArgument, s.notify, "a", object())
        self.assertRaises(InvalidArgument, s.send_raw, 42)
        raw, _, _ = session(codec=None)
        self.failureResultOf(raw.request("a"), InvalidArgument)
        self.assertEqual(s.pending, 0)

    def test_notify(self) -> None:
        """
        A notify has no id.
        """
        s, link, _ = session()
        s.notify("chat.typing", True)
        self.assertEqual(link.last(), {"route": "chat.typing", "data": True})
        self.assertEqual(s.pending, 0)


class ProtoTests(SynchronousTestCase):
    def test_request_and_response_type(self) -> None:
        """
        With the protobuf codec the message is serialised into
        Envelope.data and the response is parsed with response_type.
        """
        s, link, _ = session("proto")
        d = s.request("upper", StringValue(value="hi"), response_type=StringValue)
        sent = link.last()
        self.assertEqual((sent.route, sent.id), ("upper", 1))
        self.assertEqual(StringValue.FromString(sent.data).value, "hi")
        s.received(Envelope(id=1, data=StringValue(value="HI").SerializeToString())
                   .SerializeToString())
        self.assertEqual(self.successResultOf(d), StringValue(value="HI"))

    def test_bytes_and_json_data(self) -> None:
        """
        ``response_type=bytes`` gives the raw data; no type reads it as JSON.
        """
        s, _, _ = session("proto")
        raw = s.request("a", b"\x01\x02", response_type=bytes)
        as_json = s.request("b", {"x": 1})
        s.received(Envelope(id=1, data=b"\x00\xff").SerializeToString())
        s.received(Envelope(id=2, data=b'{"y": 2}').SerializeToString())
        self.assertEqual(self.successResultOf(raw), b"\x00\xff")
        self.assertEqual(self.successResultOf(as_json), {"y": 2})

    def test_error(self) -> None:
        """
        An Envelope with ``error`` fails the request with its code.
        """
        s, _, _ = session("proto")
        d = s.request("a")
        envelope = Envelope(id=1)
        envelope.error.code = "bad_request"
        envelope.error.message = "truncated"
        s.received(envelope.SerializeToString())
        self.assertEqual(self.failureResultOf(d, RemoteError).value.code, "bad_request")

    def test_response_that_does_not_parse(self) -> None:
        """
        A response that is not a ``response_type`` fails the request.
        """
        s, _, _ = session("proto")
        d = s.request("a", response_type=StringValue)
        s.received(Envelope(id=1, data=b"\xff\xff\xff").SerializeToString())
        self.failureResultOf(d)
        self.assertEqual(s.pending, 0)

    def test_push_message_type(self) -> None:
        """
        ``on(route, handler, message_type=...)`` parses pushes.
        """
        s, _, _ = session("proto")
        got: list[Any] = []
        s.on("tick", got.append, message_type=Int64Value)
        s.received(Envelope(route="tick", data=Int64Value(value=5).SerializeToString())
                   .SerializeToString())
        self.assertEqual(got, [Int64Value(value=5)])

    def test_server_without_subprotocol(self) -> None:
        """
        When the server negotiated no subprotocol it may push in JSON (text)
        and answer binary requests in protobuf: both are read.
        """
        s, _, _ = session("proto", subprotocol=None)
        got: list[Any] = []
        s.on("news", got.append)
        d = s.request("a", response_type=StringValue)
        s.received('{"route": "news", "data": 1}')
        s.received(Envelope(id=1, data=StringValue(value="x").SerializeToString())
                   .SerializeToString())
        self.assertEqual(got, [1])
        self.assertEqual(self.successResultOf(d).value, "x")


class PushTests(SynchronousTestCase):
    def test_handlers_per_route(self) -> None:
        """
        Each route's handlers get its pushes, in registration order; off()
        removes one.
        """
        s, _, _ = session()
        got: list[Any] = []
        off = s.on("a", lambda data: got.append(("first", data)))
        s.on("a", lambda data: got.append(("second", data)))
        s.on("b", lambda data: got.append(("b", data)))
        s.received('{"route": "a", "data": 1}')
        off()
        s.received('{"route": "a", "data": 2}')
        s.received('{"route": "b"}')
        self.assertEqual(got, [("first", 1), ("second", 1), ("second", 2), ("b", None)])

    def test_handler_error_logged(self) -> None:
        """
        A handler that raises is logged; the next handler still runs.
        """
        s, _, _ = session()
        got: list[Any] = []

        def broken(data: Any) -> None:
            raise ZeroDivisionError("handler bug")

        s.on("a", broken)
        s.on("a", got.append)
        s.received('{"route": "a", "data": 1}')
        self.assertEqual(got, [1])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_async_handler(self) -> None:
        """
        Handlers may return Deferreds or be coroutines; their failures are
        logged.
        """
        s, _, _ = session()
        waiting: Deferred[None] = Deferred()
        got: list[Any] = []

        async def handler(data: Any) -> None:
            await waiting
            got.append(data)
            raise ValueError("late failure")

        s.on("a", handler)
        s.received('{"route": "a", "data": 1}')
        self.assertEqual(got, [])
        waiting.callback(None)
        self.assertEqual(got, [1])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_push_without_handler_is_logged(self) -> None:
        """
        A push nobody listens to is logged, not dropped silently.
        """
        s, _, _ = session()
        events: list[dict[str, Any]] = []
        s._log.observer = events.append  # type: ignore[misc]
        s.received('{"route": "nobody", "data": 1}')
        self.assertEqual([e["route"] for e in events], ["nobody"])

    def test_error_for_notify(self) -> None:
        """
        An error without id goes to the error handlers as RemoteError.
        """
        s, _, _ = session()
        errors: list[RemoteError] = []
        s.on_error(errors.append)
        s.received('{"route": "chat.send", "error": {"code": "internal", "message": "x"}}')
        self.assertEqual([(e.code, e.route) for e in errors], [("internal", "chat.send")])

    def test_raw_messages(self) -> None:
        """
        Messages that are not envelopes of the codec go to the raw handlers:
        binary on the JSON codec, text that is not an envelope; every
        message without a codec.
        """
        s, _, _ = session()
        raw: list[Any] = []
        s.on_raw(raw.append)
        s.received(b"\x00binary")
        s.received("plain text")
        s.received("[1, 2]")
        self.assertEqual(raw, [b"\x00binary", "plain text", "[1, 2]"])
        none, link, _ = session(codec=None)
        raw_only: list[Any] = []
        none.on_raw(raw_only.append)
        none.received('{"id": 1, "data": 2}')
        none.send_raw(b"\x01")
        self.assertEqual(raw_only, ['{"id": 1, "data": 2}'])
        self.assertEqual(link.sent, [b"\x01"])


class CompressionTests(SynchronousTestCase):
    TABLE = '{"route": "wsfabric.routes", "data": {"chat.send": 1, "chat.message": 2}}'

    def test_codes_after_table(self) -> None:
        """
        Before the table requests carry names; after it, codes (names that
        are not in the table stay names).
        """
        s, link, _ = session(compress=True)
        s.request("chat.send")
        s.received(self.TABLE)
        s.request("chat.send")
        s.notify("other")
        self.assertEqual([json.loads(m)["route"] for m in link.sent], ["chat.send", 1, "other"])
        self.assertEqual(s.route_table, {"chat.send": 1, "chat.message": 2})

    def test_held_until_table(self) -> None:
        """
        Pushes with a code arrive before the table are held, then delivered
        in order once it arrives.
        """
        s, _, _ = session(compress=True)
        got: list[Any] = []
        s.on("chat.message", got.append)
        s.received('{"route": 2, "data": "first"}')
        s.received('{"route": "chat.message", "data": "by name"}')
        s.received('{"route": 2, "data": "second"}')
        self.assertEqual(got, ["by name"])
        s.received(self.TABLE)
        self.assertEqual(got, ["by name", "first", "second"])

    def test_unknown_code_after_table(self) -> None:
        """
        A code not in the table is dropped and logged.
        """
        s, _, _ = session(compress=True)
        events: list[dict[str, Any]] = []
        s._log.observer = events.append  # type: ignore[misc]
        s.received(self.TABLE)
        s.received('{"route": 9, "data": 1}')
        self.assertEqual([e.get("code") for e in events], [9])

    def test_hold_is_bounded(self) -> None:
        """
        At most MAX_HELD pushes wait for the table; more are dropped and
        logged.
        """
        s, _, _ = session(compress=True)
        got: list[Any] = []
        s.on("chat.message", got.append)
        events: list[dict[str, Any]] = []
        s._log.observer = events.append  # type: ignore[misc]
        for n in range(MAX_HELD + 5):
            s.received(json.dumps({"route": 2, "data": n}))
        self.assertEqual(len(events), 5)
        s.received(self.TABLE)
        self.assertEqual(got, list(range(MAX_HELD)))

    def test_new_connection_new_table(self) -> None:
        """
        A reconnection forgets the table: names again until the new one.
        """
        s, link, _ = session(compress=True)
        s.received(self.TABLE)
        s.detach("gone")
        s.attach(link)
        s.request("chat.send")
        self.assertEqual(json.loads(link.sent[-1])["route"], "chat.send")

    def test_table_not_asked_for(self) -> None:
        """
        A table the client did not ask for is ignored: names stay names.
        """
        s, link, _ = session(compress=False)
        s.received(self.TABLE)
        s.request("chat.send")
        self.assertEqual(json.loads(link.sent[-1])["route"], "chat.send")

    def test_proto_table(self) -> None:
        """
        The protobuf codec carries the table as a RouteTable, and codes in
        route_id.
        """
        s, link, _ = session("proto", compress=True)
        got: list[Any] = []
        s.on("tick", got.append, message_type=Int64Value)
        s.received(Envelope(route_id=3, data=Int64Value(value=1).SerializeToString())
                   .SerializeToString())
        table = RouteTable(routes={"tick": 3, "move": 4}).SerializeToString()
        s.received(Envelope(route="wsfabric.routes", data=table).SerializeToString())
        s.notify("move")
        self.assertEqual(got, [Int64Value(value=1)])
        sent = link.last()
        self.assertEqual((sent.route, sent.route_id), ("", 4))


class BackoffTests(SynchronousTestCase):
    def test_grows_and_caps(self) -> None:
        """
        Without jitter, the delay doubles from ``initial`` up to ``maximum``.
        """
        backoff = Backoff(initial=0.5, factor=2, maximum=4, jitter=0)
        self.assertEqual([backoff.delay(n) for n in range(1, 7)], [0.5, 1, 2, 4, 4, 4])
        self.assertEqual(backoff.delay(10_000), 4)

    def test_jitter_bounds(self) -> None:
        """
        Jitter takes up to ``jitter`` of the delay off, never adds.
        """
        for value in (0.0, 0.25, 0.999999):
            backoff = Backoff(initial=1, maximum=8, jitter=0.5, random=lambda v=value: v)
            for n in range(1, 10):
                base = min(8, 2 ** (n - 1))
                delay = backoff.delay(n)
                self.assertGreaterEqual(delay, base * 0.5)
                self.assertLessEqual(delay, base)
        self.assertEqual(Backoff(initial=2, jitter=0.5, random=lambda: 0.5).delay(1), 1.5)

    def test_gives_up(self) -> None:
        """
        ``max_retries`` bounds consecutive failures; ``None`` never gives up.
        """
        self.assertFalse(Backoff(max_retries=2).gives_up(2))
        self.assertTrue(Backoff(max_retries=2).gives_up(3))
        self.assertFalse(Backoff().gives_up(10**9))

    def test_bad_settings(self) -> None:
        """
        Nonsense settings are refused.
        """
        for settings in ({"initial": 0}, {"initial": 5, "maximum": 1}, {"factor": 0.5},
                         {"jitter": 1.5}, {"max_retries": -1}):
            self.assertRaises(InvalidArgument, Backoff, **settings)


class FakeDial:
    """
    Records connection attempts for the connector.
    """

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.cancelled: list[Attempt] = []

    def __call__(self, attempt: Attempt) -> Callable[[], None]:
        self.attempts.append(attempt)
        return lambda: self.cancelled.append(attempt)

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]


def connector(**options: Any) -> tuple[Connector, FakeDial, Clock, list[Any]]:
    clock = Clock()
    dial = FakeDial()
    events: list[Any] = []
    options.setdefault("backoff", Backoff(initial=1, maximum=8, jitter=0))
    c = Connector(
        clock, dial, Session(codec_named("json"), clock),
        on_connect=lambda: events.append("up"),
        on_disconnect=lambda code, reason: events.append(("down", code)),
        **options,
    )
    return c, dial, clock, events


class ConnectorTests(SynchronousTestCase):
    def test_connects(self) -> None:
        """
        start() dials; the open link is attached and start's Deferred fires;
        on_connect runs.
        """
        c, dial, _, events = connector()
        started = c.start()
        self.assertEqual((len(dial.attempts), c.state), (1, "connecting"))
        link = FakeLink()
        dial.last.opened(link)
        self.successResultOf(started)
        self.assertEqual((c.state, events, c.session.connected), ("open", ["up"], True))

    def test_retries_with_backoff(self) -> None:
        """
        Failed attempts are retried after growing delays.
        """
        c, dial, clock, _ = connector()
        started = c.start()
        dial.last.failed("refused")
        self.assertEqual(c.state, "waiting")
        clock.advance(0.99)
        self.assertEqual(len(dial.attempts), 1)
        clock.advance(0.01)
        self.assertEqual(len(dial.attempts), 2)
        dial.last.failed("refused")
        clock.advance(1.99)
        self.assertEqual(len(dial.attempts), 2)
        clock.advance(0.01)
        self.assertEqual(len(dial.attempts), 3)
        dial.last.opened(FakeLink())
        self.successResultOf(started)
        self.assertEqual(c.failures, 0)

    def test_gives_up_after_max_retries(self) -> None:
        """
        After max_retries retries, start fails with ConnectFailed naming the
        last error, and no more attempts are made.
        """
        c, dial, clock, _ = connector(backoff=Backoff(initial=1, jitter=0, max_retries=2))
        started = c.start()
        closed = c.when_closed()
        for _ in range(3):
            dial.last.failed("connection refused")
            clock.advance(10)
        error = self.failureResultOf(started, ConnectFailed).value
        self.assertIn("connection refused", str(error))
        self.assertEqual((len(dial.attempts), c.state), (3, "closed"))
        self.failureResultOf(closed, ConnectFailed)

    def test_refusal_is_final(self) -> None:
        """
        HTTP 401 (or a close with 4401 during the hello) is not retried.
        """
        c, dial, clock, _ = connector()
        started = c.start()
        dial.last.failed("WebSocket upgrade refused with HTTP 401", 401)
        self.assertEqual(self.failureResultOf(started, ConnectFailed).value.code, 401)
        clock.advance(100)
        self.assertEqual(len(dial.attempts), 1)

    def test_is_refusal(self) -> None:
        """
        Refusals: HTTP 4xx but 408/429, and policy or application closes.
        """
        for code in (400, 401, 403, 404, 1002, 1003, 1007, 1008, 3000, 4000, 4401, 4999):
            self.assertTrue(is_refusal(code), code)
        for code in (None, 408, 429, 500, 503, 1000, 1001, 1006, 1009, 1011, 1012, 1013):
            self.assertFalse(is_refusal(code), code)

    def test_connect_timeout(self) -> None:
        """
        No connection within connect_timeout: ConnectFailed with the last
        error; the running attempt is cancelled.
        """
        c, dial, clock, _ = connector(connect_timeout=5, attempt_timeout=100)
        started = c.start()
        dial.last.failed("connection refused")
        clock.advance(1)
        clock.advance(4)
        error = self.failureResultOf(started, ConnectFailed).value
        self.assertIn("no connection after 5 s", str(error))
        self.assertIn("connection refused", str(error))
        self.assertEqual(dial.cancelled, [dial.last])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_attempt_timeout(self) -> None:
        """
        An attempt that hangs is cancelled after attempt_timeout and retried.
        """
        c, dial, clock, _ = connector(attempt_timeout=3)
        c.start()
        clock.advance(3)
        self.assertEqual(dial.cancelled, [dial.attempts[0]])
        clock.advance(1)
        self.assertEqual(len(dial.attempts), 2)
        # The first attempt's late report is ignored.
        dial.attempts[0].opened(link := FakeLink())
        self.assertTrue(link.aborted)
        self.assertEqual(c.state, "connecting")

    def test_reconnects_after_loss(self) -> None:
        """
        A lost connection fails pending requests, calls on_disconnect and
        reconnects after a delay; on_connect runs again.
        """
        c, dial, clock, events = connector()
        c.start()
        dial.last.opened(FakeLink())
        pending = c.session.request("a")
        dial.last.closed(1006, "connection lost")
        self.failureResultOf(pending, NotConnected)
        self.assertEqual((c.state, events), ("waiting", ["up", ("down", 1006)]))
        self.failureResultOf(c.session.request("b"), NotConnected)
        clock.advance(1)
        dial.last.opened(FakeLink())
        self.assertEqual(events, ["up", ("down", 1006), "up"])
        self.assertEqual(len(dial.attempts), 2)

    def test_kicked_stays_closed(self) -> None:
        """
        A close with an application code (4000) or 1008 ends the client.
        """
        c, dial, clock, events = connector()
        c.start()
        dial.last.opened(FakeLink())
        dial.last.closed(4000, "kicked")
        self.assertEqual(self.failureResultOf(c.when_closed(), ConnectFailed).value.code, 4000)
        clock.advance(100)
        self.assertEqual(len(dial.attempts), 1)
        self.assertEqual(events, ["up", ("down", 4000)])

    def test_no_reconnect(self) -> None:
        """
        With reconnect=False the first failure fails start, and a lost
        connection ends the client.
        """
        c, dial, _, _ = connector(reconnect=False)
        started = c.start()
        dial.last.failed("connection refused")
        self.failureResultOf(started, ConnectFailed)
        c, dial, _, _ = connector(reconnect=False)
        c.start()
        dial.last.opened(FakeLink())
        dial.last.closed(1006, "lost")
        self.failureResultOf(c.when_closed(), NotConnected)

    def test_close_when_open(self) -> None:
        """
        close() closes the link and fires once it is closed; no reconnect.
        """
        c, dial, clock, _ = connector()
        c.start()
        link = FakeLink()
        dial.last.opened(link)
        closing = c.close()
        self.assertEqual((link.closed, c.state), ((1000, ""), "closing"))
        self.assertNoResult(closing)
        dial.last.closed(1000, "")
        self.successResultOf(closing)
        clock.advance(100)
        self.assertEqual((len(dial.attempts), c.state), (1, "closed"))

    def test_close_unanswered(self) -> None:
        """
        A server that never answers the close is dropped after
        attempt_timeout.
        """
        c, dial, clock, _ = connector(attempt_timeout=2)
        c.start()
        link = FakeLink()
        dial.last.opened(link)
        closing = c.close()
        clock.advance(2)
        self.assertTrue(link.aborted)
        self.successResultOf(closing)

    def test_close_while_waiting(self) -> None:
        """
        close() between attempts stops at once; start's Deferred fails.
        """
        c, dial, clock, _ = connector()
        started = c.start()
        dial.last.failed("refused")
        self.successResultOf(c.close())
        self.failureResultOf(started, ConnectFailed)
        clock.advance(100)
        self.assertEqual((len(dial.attempts), clock.getDelayedCalls()), (1, []))

    def test_close_while_connecting(self) -> None:
        """
        close() during an attempt cancels it.
        """
        c, dial, _, _ = connector()
        c.start().addErrback(lambda f: None)
        self.successResultOf(c.close())
        self.assertEqual(dial.cancelled, [dial.last])

    def test_dial_fails_synchronously(self) -> None:
        """
        A dial function that raises counts as a failed attempt (logged).
        """
        clock = Clock()

        def dial(attempt: Attempt) -> Callable[[], None]:
            raise OSError("no route to host")

        c = Connector(clock, dial, Session(codec_named("json"), clock),
                      backoff=Backoff(max_retries=0))
        self.assertIn("no route to host", str(self.failureResultOf(c.start(), ConnectFailed).value))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_start_twice(self) -> None:
        """
        A client starts once.
        """
        c, _, _, _ = connector()
        c.start()
        self.failureResultOf(c.start(), InvalidArgument)


class FramingTests(SynchronousTestCase):
    def test_frames(self) -> None:
        """
        length = 1 + len(payload), big-endian, then type and payload; the
        reader copes with any split.
        """
        data = encode_frame(TEXT, b"hi") + encode_frame(BINARY, b"") + encode_close(1000, "bye")
        self.assertEqual(data[:7], b"\x00\x00\x00\x03\x00hi")
        reader = FrameReader(100)
        frames = []
        for byte in data:
            frames += reader.feed(bytes([byte]))
        self.assertEqual(frames, [(TEXT, b"hi"), (BINARY, b""), (CLOSE, b"\x03\xe8bye")])

    def test_limits(self) -> None:
        """
        A frame over the size limit (1009) or of length 0 (1002) is refused.
        """
        self.assertEqual(self.assertRaises(FrameError, FrameReader(10).feed,
                                           encode_frame(TEXT, b"x" * 11)).code, 1009)
        self.assertEqual(FrameReader(10).feed(encode_frame(TEXT, b"x" * 10)), [(TEXT, b"x" * 10)])
        self.assertEqual(self.assertRaises(FrameError, FrameReader(10).feed,
                                           b"\x00\x00\x00\x00\x00").code, 1002)


class TcpRecorder:
    """
    A TcpClientConnection with its writes and attempt reports recorded.
    """

    def __init__(self, hello: dict[str, Any] | None = None) -> None:
        self.written = bytearray()
        self.lost: list[bool] = []
        self.reports: list[Any] = []
        recorder = self

        class Reporter:
            current = True

            def opened(self, link: Any) -> None:
                recorder.reports.append(("opened", link.subprotocol))

            def message(self, message: Any) -> None:
                recorder.reports.append(("message", message))

            def failed(self, reason: str, code: int | None = None) -> None:
                recorder.reports.append(("failed", code))

            def closed(self, code: int | None, reason: str) -> None:
                recorder.reports.append(("closed", code, reason))

        self.connection = TcpClientConnection(
            Reporter(), self.written.extend, self.lost.append,  # type: ignore[arg-type]
            hello or {"subprotocol": "wsfabric.json"}, 1000,
        )
        self.connection.connected()

    def frames(self) -> list[tuple[int, bytes]]:
        return FrameReader(10**6).feed(bytes(self.written))

    def server(self, kind: int, payload: bytes) -> None:
        self.connection.data_received(encode_frame(kind, payload))


class TcpConnectionTests(SynchronousTestCase):
    def test_hello_first(self) -> None:
        """
        The client's first frame is its hello; the server's hello opens the
        link with the subprotocol it chose.
        """
        t = TcpRecorder({"subprotocol": "wsfabric.proto", "params": {"routes": "1"}})
        self.assertEqual(t.frames(), [
            (HELLO, b'{"subprotocol": "wsfabric.proto", "params": {"routes": "1"}}')])
        t.server(HELLO, b'{"subprotocol": "wsfabric.proto"}')
        self.assertEqual(t.reports, [("opened", "wsfabric.proto")])

    def test_messages(self) -> None:
        """
        Text frames are str, binary frames bytes; both ways.
        """
        t = TcpRecorder()
        t.server(HELLO, b"{}")
        t.server(TEXT, "é".encode())
        t.server(BINARY, b"\x00")
        t.connection.send("hi")
        t.connection.send(b"\x01")
        self.assertEqual(t.reports[1:], [("message", "é"), ("message", b"\x00")])
        self.assertEqual(t.frames()[1:], [(TEXT, b"hi"), (BINARY, b"\x01")])

    def test_ping(self) -> None:
        """
        A ping is answered with a pong carrying its payload.
        """
        t = TcpRecorder()
        t.server(PING, b"abc")
        self.assertEqual(t.frames()[-1], (PONG, b"abc"))

    def test_keepalive(self) -> None:
        """
        Once open, the client pings every interval; a server that sends
        nothing for a whole interval after a ping is dropped (1006).
        """
        clock = Clock()
        t = TcpRecorder()
        t.connection = TcpClientConnection(
            t.connection._attempt, t.written.extend, t.lost.append,
            {}, 1000, clock, 5.0,
        )
        t.server(HELLO, b"{}")
        clock.advance(5)
        self.assertEqual(t.frames()[-1], (PING, b""))
        t.server(PONG, b"")
        clock.advance(5)
        self.assertEqual([k for k, _ in t.frames()].count(PING), 2)
        self.assertEqual(t.lost, [])
        clock.advance(5)
        self.assertEqual(t.lost, [True])
        t.connection.connection_lost("aborted")
        self.assertEqual(t.reports[-1][:2], ("closed", 1006))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_refused_during_hello(self) -> None:
        """
        A close frame instead of the hello fails the attempt with its code.
        """
        t = TcpRecorder()
        t.connection.data_received(encode_close(4401, "token expired"))
        self.assertEqual(t.lost, [False])
        t.connection.connection_lost("done")
        self.assertEqual(t.reports, [("failed", 4401)])

    def test_close_after_open(self) -> None:
        """
        A close frame from the server is answered and reported as closed.
        """
        t = TcpRecorder()
        t.server(HELLO, b"{}")
        t.connection.data_received(encode_close(1001, "going away"))
        self.assertEqual(t.frames()[-1][0], CLOSE)
        t.connection.connection_lost("done")
        self.assertEqual(t.reports[-1], ("closed", 1001, "going away"))

    def test_lost_without_close(self) -> None:
        """
        A dropped socket is a 1006 close.
        """
        t = TcpRecorder()
        t.server(HELLO, b"{}")
        t.connection.connection_lost("reset by peer")
        self.assertEqual(t.reports[-1], ("closed", 1006, "reset by peer"))

    def test_protocol_errors(self) -> None:
        """
        Bad UTF-8 (1007), a message before the hello, a second hello, or an
        unknown type (1002) close the connection with a close frame.
        """
        for setup, frame, code in [
            ([(HELLO, b"{}")], (TEXT, b"\xff"), 1007),
            ([], (TEXT, b"x"), 1002),
            ([(HELLO, b"{}")], (HELLO, b"{}"), 1002),
            ([(HELLO, b"{}")], (9, b""), 1002),
            ([], (HELLO, b"[]"), 1002),
        ]:
            t = TcpRecorder()
            for kind, payload in setup:
                t.server(kind, payload)
            t.server(*frame)
            kind, payload = t.frames()[-1]
            self.assertEqual((kind, struct.unpack(">H", payload[:2])[0]), (CLOSE, code))
            self.assertEqual(t.lost, [True])

    def test_close_by_client(self) -> None:
        """
        close() sends a close frame and closes the socket; later sends are
        dropped.
        """
        t = TcpRecorder()
        t.server(HELLO, b"{}")
        t.connection.close(1000, "bye")
        t.connection.send("late")
        self.assertEqual(t.frames()[-1], (CLOSE, b"\x03\xe8bye"))
        self.assertEqual(t.lost, [False])


class TargetTests(SynchronousTestCase):
    def test_websocket(self) -> None:
        """
        ws:// and wss:// URLs, default ports and path, query parameters,
        the token as a bearer header, routes=1 for compression.
        """
        t = parse_target("wss://example.com?room=1", codec_named("proto"), True, "tok",
                         {"x": "y"}, {"X-Extra": "1"})
        self.assertEqual((t.host, t.port, t.path, t.secure, t.websocket),
                         ("example.com", 443, "/ws", True, True))
        self.assertEqual(t.params, {"room": "1", "x": "y", "routes": "1"})
        self.assertEqual(t.headers, {"X-Extra": "1", "Authorization": "Bearer tok"})
        self.assertEqual(t.subprotocol, "wsfabric.proto")
        self.assertEqual(t.url, "wss://example.com:443/ws?room=1&x=y&routes=1")
        self.assertEqual(parse_target("ws://[::1]:80/x", None).url, "ws://[::1]:80/x")

    def test_tcp(self) -> None:
        """
        tcp:// needs a port; its hello carries subprotocol, params and
        lower-case headers.
        """
        t = parse_target("tcp://127.0.0.1:9000", codec_named("json"), token="t")
        self.assertFalse(t.websocket)
        self.assertEqual(t.hello(), {"subprotocol": "wsfabric.json", "path": "/ws", "params": {},
                                     "headers": {"authorization": "Bearer t"}})
        self.assertTrue(parse_target("tls://h:1", None).secure)

    def test_bad_urls(self) -> None:
        """
        Other schemes, a missing host or port, a bad port: InvalidArgument.
        """
        for url in ("http://h/ws", "tcp://h", "ws://:80", "ws://h:99999/", "h:80", 42):
            self.assertRaises(InvalidArgument, parse_target, url, None)
        self.assertRaises(InvalidArgument, codec_named, "xml")


class WebSocketReporterTests(SynchronousTestCase):
    def test_handshake_status(self) -> None:
        """
        The HTTP status of a refused upgrade is read from Autobahn's reason.
        """
        self.assertEqual(handshake_status(
            "WebSocket connection upgrade failed [401]: Unauthorized"), 401)
        self.assertIsNone(handshake_status("connection refused"))
        self.assertIsNone(handshake_status(None))

    def test_reports(self) -> None:
        """
        Open, messages and close reach the attempt; a close before open is a
        failure with the HTTP status.
        """
        reports: list[Any] = []

        class FakeAttempt:
            def opened(self, link: Any) -> None:
                reports.append(("opened", link.subprotocol))

            def message(self, message: Any) -> None:
                reports.append(message)

            def failed(self, reason: str, code: int | None = None) -> None:
                reports.append(("failed", code))

            def closed(self, code: int | None, reason: str) -> None:
                reports.append(("closed", code))

        class Factory:
            attempt = FakeAttempt()

        class Protocol(AttemptReporter):
            factory = Factory()
            websocket_protocol_in_use = "wsfabric.json"
            wasNotCleanReason = None

        p = Protocol()
        p.onOpen()
        p.onMessage("é".encode(), False)
        p.onMessage(b"\x00", True)
        p.onClose(False, None, None)
        refused = Protocol()
        refused.wasNotCleanReason = "WebSocket connection upgrade failed [403]: Forbidden"
        refused.onClose(False, 1006, None)
        self.assertEqual(reports, [("opened", "wsfabric.json"), "é", b"\x00", ("closed", 1006),
                                   ("failed", 403)])


class TcpEndToEndTests(SynchronousTestCase):
    """
    The whole client (connector, session, the Twisted TCP protocol) against
    the server's raw TCP protocol and a Router, in memory.
    """

    def setUp(self) -> None:
        from tests.unit.test_tcp import TcpHarness
        from wsfabric.routing import Router, route

        class App(Router):
            @route("echo")
            def echo(self, client_id: str, data: Any) -> Any:
                return data

            @route("news")
            def news(self, client_id: str, data: Any) -> Any:
                return self.push_to_client(client_id, "news", data)

        self.server = TcpHarness(lambda fabric: App(fabric, compress_routes=True))
        self.clock = Clock()
        self.pumps: list[iosim.IOPump] = []

    def dial(self, attempt: Attempt) -> Callable[[], None]:
        target = parse_target("tcp://127.0.0.1:1", codec_named("json"), compress_routes=True)
        client = _TcpFactory(attempt, target.hello(), 1 << 20).buildProtocol(None)
        server = self.server.factory.buildProtocol(None)
        _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client, greet=False)
        self.pumps.append(pump)
        return lambda: None

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def test_request_push_and_compression(self) -> None:
        """
        The client says hello, gets the route table, sends codes, and gets
        responses and pushes.
        """
        s = Session(codec_named("json"), self.clock, compress_routes=True)
        c = Connector(self.clock, self.dial, s)
        started = c.start()
        self.flush()
        self.successResultOf(started)
        self.assertEqual(s.route_table, {"echo": 1, "news": 2})
        got: list[Any] = []
        s.on("news", got.append)
        echo = s.request("echo", {"x": [1]})
        s.notify("news", "hello")
        self.flush()
        self.assertEqual(self.successResultOf(echo), {"x": [1]})
        self.assertEqual(got, ["hello"])
        closing = c.close()
        self.flush()
        self.successResultOf(closing)


class TwistedTcpProtocolTests(SynchronousTestCase):
    def test_moves_bytes(self) -> None:
        """
        The Twisted protocol writes the hello on connect, feeds bytes to the
        connection, and closes or aborts its transport as told.
        """
        reports: list[Any] = []

        class FakeAttempt:
            def opened(self, link: Any) -> None:
                reports.append("opened")
                link.close(1000, "")

            def failed(self, reason: str, code: int | None = None) -> None:
                reports.append(("failed", code))

            def closed(self, code: int | None, reason: str) -> None:
                reports.append(("closed", code))

        protocol = _TcpFactory(FakeAttempt(), {"subprotocol": None}, 100).buildProtocol(None)  # type: ignore[arg-type]
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), encode_frame(HELLO, b'{"subprotocol": null}'))
        protocol.dataReceived(encode_frame(HELLO, b"{}"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(reports, ["opened", ("closed", 1000)])


class OtherCodecTests(SynchronousTestCase):
    def test_json_request_on_proto_session(self) -> None:
        """
        A request sent in JSON on a protobuf session (the gate's
        wsfabric.refresh) goes as text by name, and its text answer is
        matched; other text stays raw.
        """
        s, link, _ = session("proto", compress=True)
        s.received(Envelope(route="wsfabric.routes", data=RouteTable(
            routes={"wsfabric.refresh": 1}).SerializeToString()).SerializeToString())
        raw: list[Any] = []
        s.on_raw(raw.append)
        d = s.request("wsfabric.refresh", {"token": "t"}, codec=codec_named("json"))
        self.assertEqual(json.loads(link.sent[-1]),
                         {"route": "wsfabric.refresh", "id": 1, "data": {"token": "t"}})
        s.received('{"id": 2, "data": 1}')
        s.received('{"id": 1, "data": {"exp": 5}}')
        self.assertEqual(self.successResultOf(d), {"exp": 5})
        self.assertEqual(raw, ['{"id": 2, "data": 1}'])
