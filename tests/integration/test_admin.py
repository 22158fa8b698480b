"""
The admin listener of real nodes: health (ready turns 503 while Redis is
paused and back once it resumes; a gate without backends is not ready),
Prometheus metrics, the HTTP API on a gate and on a backend, JSON logs, and
how a node reports an admin endpoint it cannot bind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from tests.integration.support import (
    CONTRACT_APP,
    PROJECT,
    ContractClient,
    IntegrationTestCase,
    async_test,
)
from wsfabric.testing.processes import Cluster, free_port, twistd_command
from wsfabric.testing.redis import make_test_certificates

KEY = "integration-test-api-key-0001"


def http(
    url: str, body: Any = None, key: str | None = KEY, method: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """
    One blocking HTTP request (run it in a thread).

    :return: the status, the headers and the body.
    """
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def ahttp(url: str, body: Any = None, **options: Any) -> tuple[int, Any]:
    """
    :return: the status and the decoded JSON body of one request.
    """
    status, headers, raw = await asyncio.to_thread(http, url, body, **options)
    return status, json.loads(raw) if "json" in headers.get("Content-Type", "") else raw


async def eventually(check: Any, timeout: float, what: str) -> Any:
    """
    Await ``check()`` until it returns something true; fail after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"not true after {timeout:g} s: {what} (last: {last!r})")


def metric(text: str, name: str, labels: str = "") -> float | None:
    """
    :return: the value of sample ``name{labels}`` in a Prometheus scrape.
    """
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.M)
    return float(match.group(1)) if match else None


def key_file() -> str:
    directory = tempfile.mkdtemp(prefix="wsfabric-admin-")
    path = os.path.join(directory, "keys")
    with open(path, "w") as f:
        f.write(f"# API keys\n{KEY}\n")
    return path


class ClusterAdminTests(IntegrationTestCase):
    timeout = 150

    @async_test(timeout=140)
    async def test_health_metrics_and_api(self) -> None:
        """
        A gate alone is live but not ready (no backend); once a backend links
        it is ready. The HTTP API of the gate and of the backend reach a
        client; pausing Redis turns ready into 503 naming Redis, and
        resuming it brings ready back and counts the reconnects and the
        pub/sub gap.
        """
        keys = key_file()
        cluster = Cluster(
            CONTRACT_APP, gates=0, backends=0, cwd=PROJECT,
            gate_options=["--api-key-file", keys, "--lease", "4"],
            backend_options=["--api-key-file", keys, "--lease", "4"],
        )
        self.addCleanup(cluster.stop)
        await asyncio.to_thread(cluster.start)
        gate = await asyncio.to_thread(cluster.add_gate)
        admin = gate.admin_url

        status, body = await ahttp(admin + "/health/live", key=None)
        self.assertEqual((status, body), (200, {"status": "live"}))

        async def not_ready_for_backends() -> Any:
            status, body = await ahttp(admin + "/health/ready", key=None)
            return status == 503 and "no backend is connected" in body["reason"]

        await eventually(not_ready_for_backends, 15, "gate without backends not ready")

        backend = await asyncio.to_thread(cluster.add_backend)
        await asyncio.to_thread(cluster.wait_linked)

        async def ready(url: str) -> Any:
            status, body = await ahttp(url + "/health/ready", key=None)
            return status == 200 and body

        body = await eventually(lambda: ready(admin), 15, "gate ready")
        self.assertEqual(body["checks"]["backends_connected"], 1)
        body = await eventually(lambda: ready(backend.admin_url), 15, "backend ready")
        self.assertEqual(body["checks"]["gates_connected"], 1)

        # The HTTP API, on the gate and on the backend.
        client = await ContractClient.connect(gate.ws_url)
        self.addCleanup(lambda: asyncio.ensure_future(client.close()))
        await client.call("join_group", client.client_id, "room")
        status, body = await ahttp(admin + "/api/v1/send_to_group",
                                   {"group": "room", "message": "from the gate"})
        self.assertEqual((status, body), (200, {"result": None}))
        self.assertEqual(await client.next_push(), "from the gate")
        status, body = await ahttp(backend.admin_url + "/api/v1/send_to_client", {
            "client_id": client.client_id, "message": "AAEC", "binary": True})
        self.assertEqual(status, 200, body)
        self.assertEqual(await client.next_push(), b"\x00\x01\x02")
        status, body = await ahttp(backend.admin_url + "/api/v1/set_info", {
            "client_id": client.client_id, "info": {"plan": "pro"}})
        self.assertEqual(status, 200, body)
        status, body = await ahttp(admin + "/api/v1/get_info",
                                   {"client_id": client.client_id})
        self.assertEqual((status, body), (200, {"result": {"plan": "pro"}}))
        status, body = await ahttp(admin + "/api/v1/get_client_ids_by_group", {"group": "room"})
        self.assertEqual(body, {"result": [client.client_id]})
        status, body = await ahttp(admin + "/api/v1/join_group",
                                   {"client_id": client.client_id + "x", "group": "room"})
        self.assertEqual((status, body["error"]["code"]), (404, "client_not_found"))
        status, body = await ahttp(admin + "/api/v1/get_all_groups", None, key="wrong-key")
        self.assertEqual((status, body["error"]["code"]), (401, "unauthorized"))

        # The gate's metrics.
        status, _, raw = await asyncio.to_thread(http, admin + "/metrics", None, None)
        scrape = raw.decode()
        self.assertEqual(status, 200)
        self.assertEqual(metric(scrape, "wsfabric_backends_connected"), 1.0)
        self.assertEqual(metric(scrape, "wsfabric_connections"), 1.0)
        self.assertEqual(metric(scrape, "wsfabric_ready"), 1.0)
        self.assertGreaterEqual(metric(scrape, "wsfabric_fanout_deliveries_total"), 2.0)
        self.assertGreaterEqual(metric(scrape, "wsfabric_amp_call_seconds_count"), 1.0)
        self.assertEqual(metric(scrape, "wsfabric_drops_total", 'cause="redis_gap"'), 0.0)
        self.assertEqual(metric(scrape, "wsfabric_redis_reconnects_total"), 0.0)

        # Redis paused: not ready, saying why; resumed: ready again.
        cluster.redis.pause()
        try:
            async def unavailable() -> Any:
                status, body = await ahttp(admin + "/health/ready", key=None)
                return status == 503 and body

            body = await eventually(unavailable, 15, "gate not ready while Redis is paused")
            self.assertIn("Redis", body["reason"])
            status, body = await ahttp(backend.admin_url + "/health/ready", key=None)
            self.assertEqual(status, 503, body)

            async def gap() -> bool:
                return "pub/sub gap" in gate.log()

            # Paused past the probe's timeout: the subscriber link is dropped.
            await eventually(gap, 15, "the gate noticed a pub/sub gap")
        finally:
            cluster.redis.resume()
        await eventually(lambda: ready(admin), 20, "gate ready again after Redis resumed")
        await eventually(lambda: ready(backend.admin_url), 20, "backend ready again")
        status, _, raw = await asyncio.to_thread(http, admin + "/metrics", None, None)
        scrape = raw.decode()
        self.assertGreaterEqual(metric(scrape, "wsfabric_redis_reconnects_total"), 1.0)
        self.assertGreaterEqual(metric(scrape, "wsfabric_drops_total", 'cause="redis_gap"'), 1.0)

        # The dashboard's state lists both nodes and the group.
        status, state = await ahttp(admin + "/admin/state", key=None)
        self.assertEqual(status, 200)
        roles = sorted((n["role"], n["self"]) for n in state["cluster"]["nodes"])
        self.assertEqual(roles, [("backend", False), ("gate", True)])
        self.assertEqual(state["cluster"]["groups"], [{"name": "room", "size": 1}])


class StandaloneAdminTests(IntegrationTestCase):

    @async_test(timeout=60)
    async def test_json_logs(self) -> None:
        """
        With --log-format json every line of the log is one JSON object with
        time, level, namespace, text and fields.
        """
        node = self.standalone(options=["--log-format", "json"])
        client = await ContractClient.connect(node.ws_url)
        await client.close()
        lines = [line for line in node.log().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        self.assertTrue(records)
        for record in records:
            self.assertEqual(
                set(record) - {"traceback"}, {"time", "level", "namespace", "text", "fields"}
            )
        admin = [r for r in records if r["text"].startswith("admin listener on")]
        self.assertEqual(len(admin), 1, lines)
        self.assertEqual(admin[0]["level"], "info")
        self.assertEqual(admin[0]["namespace"], "wsfabric.admin.service")
        self.assertEqual(admin[0]["fields"]["endpoint"],
                         f"tcp:{node.admin_port}:interface=127.0.0.1")

    @async_test(timeout=60)
    async def test_admin_over_tls(self) -> None:
        """
        An ssl: admin endpoint serves health over HTTPS with a certificate
        made in the test.
        """
        ca, cert, key = make_test_certificates(tempfile.mkdtemp(prefix="wsfabric-admin-tls-"))
        port = free_port()
        node = self.standalone(options=[
            "--admin", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"])
        context = ssl.create_default_context(cafile=ca)

        def get() -> tuple[int, bytes]:
            url = f"https://127.0.0.1:{port}/health/ready"
            with urllib.request.urlopen(url, timeout=10, context=context) as response:
                return response.status, response.read()

        status, body = await asyncio.to_thread(get)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["status"], "ready")
        self.assertIn(f"admin listener on ssl:{port}", node.log())

    @async_test(timeout=60)
    async def test_admin_port_taken(self) -> None:
        """
        An --admin endpoint that cannot be bound ends the node with a one-line
        error; --admin none runs without one.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            subprocess.run,
            [*twistd_command(), "-n", "--pidfile=", "wsfabric", "--app", CONTRACT_APP,
             "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
             "--admin", f"tcp:{port}:interface=127.0.0.1"],
            cwd=PROJECT, capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"wsfabric: error: cannot listen on --admin tcp:{port}:interface=127.0.0.1",
                      result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)

        node = self.standalone(options=["--admin", "none"])
        client = await ContractClient.connect(node.ws_url)
        await client.close()
        self.assertNotIn("admin listener", node.log())
