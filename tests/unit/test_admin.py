"""
The admin listener's parts, in memory: readiness, the bus probe, the
Prometheus collector, the HTTP API (parsing, keys, errors, OpenAPI), the
gate's fabric for clients of other gates, the dashboard state, JSON logs and
the options.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.apps import RecordingApp
from wsfabric.admin.api import ApiError, ApiKeys, openapi_document, parse_arguments, read_key_file
from wsfabric.admin.gatefabric import gate_fabric
from wsfabric.admin.health import BusProbe, readiness
from wsfabric.admin.logs import JsonLogObserver, format_json_event
from wsfabric.admin.node import AdminNode
from wsfabric.admin.options import admin_parameters, check_admin_options
from wsfabric.admin.service import AdminRoot
from wsfabric.cluster.memory import MemoryBus, MemoryIndex
from wsfabric.errors import ClientNotFound, ClusterUnavailable
from wsfabric.metrics import Metrics
from wsfabric.options import WsfabricOptions
from wsfabric.testing import StandaloneHarness

KEY = "unit-test-key-0123456789"


class _Running:
    running = True


class _FakeRedis:
    """What readiness and the collector read of a RedisService."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.connected = True
        self.last_probe_ok: float | None = None
        self.probe_rtt: float | None = None
        self.probe_interval = 1.0
        self.probe_timeout = 2.0
        self.reconnects = 0
        self.gaps = 0

    def healthy(self) -> bool:
        return (self.connected and self.last_probe_ok is not None
                and self._clock.seconds() - self.last_probe_ok <= 3.0)


class _Link:
    gone = False
    draining = False


class _FakePool:
    def __init__(self) -> None:
        self.links: list[_Link] = []

    def connected(self) -> list[_Link]:
        return list(self.links)


class _SilentBus:
    """A bus that loses every message."""

    def publish(self, channel: str, payload: bytes) -> Deferred[None]:
        return succeed(None)

    def subscribe(self, channel: str, receiver: Any) -> Any:
        return MemoryBus().subscribe(channel, receiver)


class ReadinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = _FakeRedis(self.clock)
        self.pool = _FakePool()
        self.service = _Running()
        self.node = AdminNode("gate", lambda: "g1", Metrics(), self.service,
                              redis=self.redis, pool=self.pool)

    def test_gate(self) -> None:
        """
        A gate is ready only with a recent probe and a working backend link,
        and not while shutting down; the reason names what is missing.
        """
        state = readiness(self.node, None, self.clock)
        self.assertEqual(state["status"], "unavailable")
        self.assertIn("no probe has made the round trip through Redis", state["reason"])
        self.assertIn("no backend is connected", state["reason"])
        self.redis.last_probe_ok = 0.0
        self.pool.links.append(_Link())
        self.assertEqual(readiness(self.node, None, self.clock)["status"], "ready")
        self.clock.advance(3.5)
        state = readiness(self.node, None, self.clock)
        self.assertEqual((state["status"], state["checks"]["redis"]["probe_age_seconds"]),
                         ("unavailable", 3.5))
        self.redis.last_probe_ok = 3.5
        self.pool.links[0].draining = True
        self.assertEqual(readiness(self.node, None, self.clock)["reason"],
                         "no backend is connected")
        self.pool.links[0].draining = False
        self.redis.connected = False
        self.assertEqual(readiness(self.node, None, self.clock)["reason"],
                         "Redis is not connected")
        self.redis.connected = True
        self.service.running = False
        self.assertEqual(readiness(self.node, None, self.clock)["reason"],
                         "the node is shutting down")

    def test_bus_probe(self) -> None:
        """
        A standalone node is ready while its probe comes back through the
        in-memory bus; a bus that loses it makes it unready.
        """
        node = AdminNode("standalone", lambda: "s", Metrics(), _Running())
        probe = BusProbe(MemoryBus(), self.clock)
        probe.startService()
        self.addCleanup(probe.stopService)
        self.assertEqual(readiness(node, probe, self.clock)["status"], "ready")
        self.clock.advance(10)
        self.assertEqual(readiness(node, probe, self.clock)["status"], "ready")

        lost = BusProbe(_SilentBus(), self.clock)
        lost.startService()
        self.addCleanup(lost.stopService)
        state = readiness(node, lost, self.clock)
        self.assertEqual(state["status"], "unavailable")
        self.assertIn("in-memory bus", state["reason"])


class CollectorTests(SynchronousTestCase):
    def scrape(self, node: AdminNode, ready: bool = True) -> str:
        root = AdminRoot(node, ApiKeys(), Clock())
        root.readiness = lambda: {"status": "ready" if ready else "unavailable"}  # type: ignore
        return generate_latest(root.registry).decode()

    def test_counters(self) -> None:
        """
        The counters, drops by cause (with the causes alerts need at 0, and
        oversize from 1009 closes), closes by code, and the AMP histogram.
        """
        m = Metrics()
        m.connection_opened()
        m.connection_opened()
        m.connection_closed()
        m.closed_with(1009)
        m.closed_with(None)
        m.message_in(10)
        m.message_out(7)
        m.delivered(5)
        m.dropped("slow_consumer")
        m.amp_call(0.003)
        m.amp_call(0.2)
        m.amp_call(30.0)
        clock = Clock()
        redis = _FakeRedis(clock)
        redis.reconnects = 2
        redis.gaps = 1
        node = AdminNode("gate", lambda: "g1", m, _Running(), redis=redis, pool=_FakePool())
        text = self.scrape(node)
        for line in [
            'wsfabric_node_info{node_id="g1",role="gate"} 1.0',
            "wsfabric_ready 1.0",
            "wsfabric_connections 1.0",
            "wsfabric_connects_total 2.0",
            'wsfabric_disconnects_total{code="1006"} 1.0',
            'wsfabric_disconnects_total{code="1009"} 1.0',
            "wsfabric_bytes_in_total 10.0",
            "wsfabric_messages_out_total 1.0",
            "wsfabric_fanout_deliveries_total 5.0",
            'wsfabric_drops_total{cause="slow_consumer"} 1.0',
            'wsfabric_drops_total{cause="rate_limit"} 0.0',
            'wsfabric_drops_total{cause="oversize"} 1.0',
            'wsfabric_drops_total{cause="redis_gap"} 1.0',
            'wsfabric_amp_call_seconds_bucket{le="0.0025"} 0.0',
            'wsfabric_amp_call_seconds_bucket{le="0.005"} 1.0',
            'wsfabric_amp_call_seconds_bucket{le="0.25"} 2.0',
            'wsfabric_amp_call_seconds_bucket{le="10.0"} 2.0',
            'wsfabric_amp_call_seconds_bucket{le="+Inf"} 3.0',
            "wsfabric_amp_call_seconds_count 3.0",
            "wsfabric_backends_connected 0.0",
            "wsfabric_redis_reconnects_total 2.0",
            "wsfabric_redis_connected 1.0",
        ]:
            self.assertIn(line + "\n", text)
        self.assertIn("process_resident_memory_bytes", text)

    def test_standalone_has_no_cluster_figures(self) -> None:
        """
        A standalone node exports no Redis or backend figures; readiness 0
        shows as wsfabric_ready 0.
        """
        text = self.scrape(AdminNode("standalone", lambda: "s", Metrics(), _Running()), False)
        self.assertIn("wsfabric_ready 0.0\n", text)
        self.assertNotIn("wsfabric_redis", text)
        self.assertNotIn("wsfabric_backends_connected", text)


class ParseTests(SynchronousTestCase):
    def bad(self, name: str, body: bytes) -> str:
        with self.assertRaises(ApiError) as caught:
            parse_arguments(name, body)
        self.assertEqual((caught.exception.status, caught.exception.code), (400, "bad_request"))
        return caught.exception.message

    def test_good(self) -> None:
        """
        Arguments by name; base64 with binary; 3000.0 is an integer; an empty
        body for a method without arguments.
        """
        self.assertEqual(parse_arguments("send_to_group", b'{"group":"g","message":"hi"}'),
                         {"group": "g", "message": "hi"})
        self.assertEqual(
            parse_arguments("send_to_client", b'{"client_id":"c","message":"AAE=","binary":true}'),
            {"client_id": "c", "message": b"\x00\x01"},
        )
        self.assertEqual(parse_arguments("close_client", b'{"client_id":"c","code":3000.0}'),
                         {"client_id": "c", "code": 3000})
        self.assertEqual(parse_arguments("get_all_groups", b""), {})

    def test_bad(self) -> None:
        """
        Each kind of bad body is a 400 saying what is wrong.
        """
        self.assertIn("not valid JSON", self.bad("send_to_all", b"{"))
        self.assertIn("not valid JSON", self.bad("send_to_all", b'{"message": NaN}'))
        self.assertIn("not valid JSON", self.bad("send_to_all", b"\xff"))
        self.assertIn("must be a JSON object, not an array", self.bad("send_to_all", b"[]"))
        self.assertIn("needs group", self.bad("send_to_group", b'{"message":"x"}'))
        self.assertIn("unknown argument 'groop'",
                      self.bad("send_to_group", b'{"groop":"g","message":"x"}'))
        self.assertIn("group must be a string, not a number",
                      self.bad("send_to_group", b'{"group":1,"message":"x"}'))
        self.assertIn("1 to 256", self.bad("send_to_group", b'{"group":"","message":"x"}'))
        self.assertIn("each of exclude",
                      self.bad("send_to_all", b'{"message":"x","exclude":[1]}'))
        self.assertIn("lone surrogate", self.bad("send_to_all", b'{"message":"\\ud800"}'))
        self.assertIn("base64",
                      self.bad("send_to_all", b'{"message":"!!","binary":true}'))
        self.assertIn("true or false", self.bad("send_to_all", b'{"message":"x","binary":1}'))
        self.assertIn("integer", self.bad("close_client", b'{"client_id":"c","code":true}'))
        self.assertIn("JSON object", self.bad("set_info", b'{"client_id":"c","info":[]}'))
        self.assertIn("a JSON object with client_id", self.bad("get_info", b""))
        # Only an empty body means "no arguments"; white space is not JSON
        # (found by schemathesis).
        self.assertIn("not valid JSON", self.bad("get_all_uids", b"\n"))


class KeyTests(SynchronousTestCase):
    def test_check(self) -> None:
        """
        403 when disabled, 401 without a bearer key or with a wrong one.
        """
        with self.assertRaises(ApiError) as caught:
            ApiKeys().check(b"Bearer " + KEY.encode())
        self.assertEqual(caught.exception.status, 403)
        keys = ApiKeys([KEY, "another-key-abcdefghij"])
        keys.check(b"Bearer " + KEY.encode())
        keys.check(b"bearer another-key-abcdefghij")
        for header in (None, b"", b"Bearer", b"Basic " + KEY.encode(), b"Bearer x" + KEY.encode()):
            with self.assertRaises(ApiError) as caught:
                keys.check(header)
            self.assertEqual(caught.exception.status, 401)

    def test_file(self) -> None:
        """
        One key per line, comments and blank lines skipped; short keys, keys
        with spaces, empty and missing files are refused.
        """
        def write(text: str) -> str:
            fd, path = tempfile.mkstemp()
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self.addCleanup(os.unlink, path)
            return path

        self.assertEqual(read_key_file(write(f"# keys\n\n  {KEY}  \n")), [KEY])
        for text, error in [("short\n", "at least 16"), ("a" * 16 + " b\n", "whitespace"),
                            ("# none\n", "no key")]:
            with self.assertRaises(ValueError) as caught:
                read_key_file(write(text))
            self.assertIn(error, str(caught.exception))
        with self.assertRaises(ValueError):
            read_key_file("/nonexistent/keys")


class ApiResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = StandaloneHarness(RecordingApp)
        node = AdminNode("standalone", lambda: self.harness.gate.gate_id, self.harness.metrics,
                         _Running(), fabric=self.harness.fabric)
        self.root = AdminRoot(node, ApiKeys([KEY]), Clock())

    def request(self, path: str, body: bytes | None = None, key: str | None = KEY,
                method: bytes = b"POST") -> tuple[int, Any]:
        request = DummyRequest(path.lstrip("/").encode().split(b"/"))
        request.method = method
        request.path = path.encode()
        request.content = io.BytesIO(body or b"")
        if key is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + key.encode()])
        resource = getChildForRequest(self.root, request)
        result = resource.render(request)
        if result != NOT_DONE_YET:
            request.write(result)
            request.finish()
        self.assertEqual(request.finished, 1)
        return request.responseCode or 200, json.loads(b"".join(request.written))

    def test_calls(self) -> None:
        """
        A call reaches the fabric and answers its result; errors are JSON.
        """
        client = self.harness.connect()
        status, body = self.request("/api/v1/join_group", json.dumps(
            {"client_id": client.client_id, "group": "room"}).encode())
        self.assertEqual((status, body), (200, {"result": None}))
        status, body = self.request("/api/v1/send_to_group", b'{"group":"room","message":"AP8=",'
                                    b'"binary":true}')
        self.assertEqual(status, 200)
        self.assertEqual(client.received, [b"\x00\xff"])
        self.assertEqual(self.request("/api/v1/get_client_ids_by_group", b'{"group":"room"}'),
                         (200, {"result": [client.client_id]}))
        status, body = self.request("/api/v1/set_info", b'{"client_id":"x","info":{}}')
        self.assertEqual((status, body["error"]["code"]), (404, "client_not_found"))
        status, body = self.request("/api/v1/nope", b"{}")
        self.assertEqual((status, body["error"]["code"]), (404, "unknown_method"))
        status, body = self.request("/api/v1/get_all_groups/more", b"{}")
        self.assertEqual((status, body["error"]["code"]), (404, "unknown_method"))
        status, body = self.request("/api/v1/get_all_groups", key=None)
        self.assertEqual((status, body["error"]["code"]), (401, "unauthorized"))
        status, body = self.request("/api/v1/get_all_groups", method=b"GET")
        self.assertEqual((status, body["error"]["code"]), (405, "method_not_allowed"))
        status, body = self.request("/api/v1/close_client", b'{"client_id":"c","code":2000}')
        self.assertEqual((status, body["error"]["code"]), (400, "bad_request"))

    def test_cluster_unavailable(self) -> None:
        """
        ClusterUnavailable from the fabric is a 503.
        """
        self.harness.fabric.get_all_groups = lambda: Deferred.fromCoroutine(_raise())  # type: ignore
        status, body = self.request("/api/v1/get_all_groups", b"{}")
        self.assertEqual((status, body["error"]["code"]), (503, "cluster_unavailable"))

    def test_health_and_state(self) -> None:
        """
        /health/live, /health/ready (the bus probe is not running here, so
        503 with a reason) and the dashboard's state.
        """
        self.assertEqual(self.request("/health/live", method=b"GET"), (200, {"status": "live"}))
        self.harness.connect()
        status, state = self.request("/admin/state", method=b"GET")
        self.assertEqual(status, 200)
        self.assertEqual(state["node"]["connections"], 1)
        self.assertEqual(state["cluster"]["clients"], 1)
        self.assertEqual(state["cluster"]["nodes"][0]["role"], "standalone")
        status, body = self.request("/nothing/here", method=b"GET")
        self.assertEqual((status, body["error"]["code"]), (404, "not_found"))

    def test_openapi(self) -> None:
        """
        The document describes every method with its arguments, and the
        error responses.
        """
        document = openapi_document()
        self.assertEqual(len(document["paths"]), 25)
        post = document["paths"]["/api/v1/send_to_group"]["post"]
        text, binary = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        self.assertEqual(text["required"], ["group", "message"])
        self.assertEqual(binary["required"], ["group", "message", "binary"])
        self.assertEqual(set(post["responses"]),
                         {"200", "400", "401", "403", "404", "413", "503"})
        status, served = self.request("/api/v1/openapi.json", method=b"GET", key=None)
        self.assertEqual(served, json.loads(json.dumps(document)))


async def _raise() -> None:
    raise ClusterUnavailable("Redis is away")


class GateFabricTests(SynchronousTestCase):
    def test_other_gates(self) -> None:
        """
        On a gate, a client of another gate: offline ones behave as IFabric
        says; online ones fail with ClusterUnavailable naming the way out.
        """
        index = MemoryIndex()
        bus = MemoryBus()

        class Gate:
            gate_id = "a" * 16

        fabric = gate_fabric(Gate(), index, bus)
        other = "b" * 16 + "-1"
        self.successResultOf(fabric.send_to_client(other, "x"))
        self.failureResultOf(fabric.join_group(other, "g"), ClientNotFound)
        self.successResultOf(index.add_client("b" * 16, other))
        failure = self.failureResultOf(fabric.join_group(other, "g"), ClusterUnavailable)
        self.assertIn("backend's admin listener", failure.getErrorMessage())
        self.failureResultOf(fabric.send_to_client(other, "x"), ClusterUnavailable)
        self.successResultOf(fabric.send_to_group("g", "x"))


class LogTests(SynchronousTestCase):
    def test_json_lines(self) -> None:
        """
        One JSON object per event, with its fields, level, namespace and
        traceback; values JSON cannot carry are given as their repr.
        """
        out = io.StringIO()
        log = Logger(namespace="wsfabric.test", observer=JsonLogObserver(out))
        log.info("backend {backend_id} ready", backend_id="b1", thing=object())
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("it broke for {who}", Failure(), who="me")
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual(first["text"], "backend b1 ready")
        self.assertEqual((first["level"], first["namespace"]), ("info", "wsfabric.test"))
        self.assertEqual(first["fields"]["backend_id"], "b1")
        self.assertTrue(first["fields"]["thing"].startswith("<object"))
        self.assertTrue(first["time"].endswith("Z"))
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", second["traceback"])

    def test_legacy_event(self) -> None:
        """
        An event of twisted.python.log has its message as text.
        """
        line = format_json_event({"message": ("hello",), "isError": 0, "system": "-",
                                  "time": 0.0, "log_level": LogLevel.info})
        self.assertEqual(json.loads(line)["text"], "hello")


class _Parent(dict):
    pass


class _Role(WsfabricOptions):
    optParameters = WsfabricOptions.optParameters + admin_parameters("backend")

    def postOptions(self) -> None:
        check_admin_options(self, "backend")


class OptionTests(SynchronousTestCase):
    def parse(self, *args: str) -> _Role:
        options = _Role()
        options.parent = _Parent(nodaemon=True, logfile=None)
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """
        The role's default endpoint (not explicit), the API disabled, text
        logs.
        """
        options = self.parse()
        self.assertEqual(options["admin-endpoint"], "tcp:8082:interface=127.0.0.1")
        self.assertFalse(options["admin-explicit"])
        self.assertFalse(options["api-keys"].enabled)
        self.assertIsNone(options["log-observer-factory"])

    def test_given(self) -> None:
        """
        --admin none disables the listener; --log-format json makes a JSON
        observer on standard output under -n; bad values are one-line errors.
        """
        self.assertIsNone(self.parse("--admin", "none")["admin-endpoint"])
        options = self.parse("--admin", "tcp:9000", "--log-format", "json")
        self.assertTrue(options["admin-explicit"])
        self.assertIsInstance(options["log-observer-factory"](), JsonLogObserver)
        with self.assertRaises(SystemExit) as caught:
            self.parse("--log-format", "xml")
        self.assertIn("--log-format 'xml'", str(caught.exception))
        with self.assertRaises(SystemExit) as caught:
            self.parse("--api-key-file", "/nonexistent")
        self.assertIn("--api-key-file /nonexistent", str(caught.exception))
