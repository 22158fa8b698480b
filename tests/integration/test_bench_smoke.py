"""
The benchmark harness end to end, tiny: ``python -m bench run`` builds the C
load generator with gcc, starts raw Autobahn echo and a standalone wsfabric,
loads each for one second, stops them, and writes its JSON lines and
report. The heavy peers (Django Channels, python-socketio) and the bench
venv stay out of CI (``--no-venv``, P1 only).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile

from tests.integration.support import PROJECT, IntegrationTestCase, async_test

SERVERS = ("autobahn-echo", "wsfabric-echo")


class BenchSmokeTests(IntegrationTestCase):
    timeout = 120

    @async_test(timeout=110)
    async def test_one_tiny_scenario(self) -> None:
        """
        One repetition of P1 at a one-second window: the scenario line has
        the suite's shape, both servers measured positive figures, the
        load generator reported its own CPU, and the P1 check has a ratio.
        """
        if shutil.which("gcc") is None:
            self.skipTest("gcc is needed to build the load generator")
        out = tempfile.mkdtemp(prefix="wsfabric-bench-")
        self.addCleanup(shutil.rmtree, out, True)
        argv = [
            sys.executable, "-m", "bench", "run", "--no-venv", "--only", "P1",
            "--servers", ",".join(SERVERS), "--reps", "1", "--duration", "1",
            "--wait-quiet", "0", "--retry-noisy", "0", "--no-profile", "--out", out,
        ]
        result = await asyncio.to_thread(
            subprocess.run, argv, cwd=PROJECT, capture_output=True, text=True, timeout=100
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])

        with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        self.assertEqual(len(lines), 1)
        (scenario,) = lines
        self.assertEqual(scenario["kind"], "scenario")
        self.assertEqual(scenario["target"], "P1+P2")
        self.assertEqual(scenario["metric"], "msgs_per_s")
        self.assertEqual(scenario["servers"], list(SERVERS))
        for server in SERVERS:
            figures = scenario["figures"][server]
            self.assertEqual((figures["n"], figures["failed"]), (1, 0), server)
            for key in ("msgs_per_s", "server_cpu_pct", "client_cpu_pct"):
                self.assertGreater(figures[key]["median"], 0, (server, key))
                self.assertLessEqual(figures[key]["min"], figures[key]["max"])
        (check,) = scenario["checks"]
        self.assertEqual(check["server"], "wsfabric-echo")
        self.assertEqual(check["baseline"], "autobahn-echo")
        self.assertGreater(check["value"]["median"], 0)
        self.assertIn(check["verdict"], ("met", "not met"))

        with open(os.path.join(out, "runs.jsonl"), encoding="utf-8") as f:
            runs = [json.loads(line) for line in f if line.strip()]
        self.assertEqual(sorted(r["server"] for r in runs), sorted(SERVERS))
        for run in runs:
            self.assertTrue(run["ok"], run.get("error"))
            self.assertGreater(run["loadgen"]["msgs_recv"], 0)
            self.assertGreater(run["loadgen"]["client_cpu_total_s"], 0)
            for process in run["processes"]:  # stopped by pid
                self.assertFalse(_running(process["pid"]), process)
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            report = f.read()
        self.assertIn("| P1+P2 | P1 standalone / raw", report)

    @async_test(timeout=110)
    async def test_routed_and_jwt_scenarios(self) -> None:
        """
        The protobuf routed echo (wsload's --subprotocol and --payload-file)
        and the ES256 connection rate (tokens in the URLs), one short run
        each: both measure, with no handshake or protocol error, and the
        report has the routed section; no token is written to the results.
        """
        if shutil.which("gcc") is None:
            self.skipTest("gcc is needed to build the load generator")
        out = tempfile.mkdtemp(prefix="wsfabric-bench-")
        self.addCleanup(shutil.rmtree, out, True)
        servers = ("wsfabric-routed-proto", "wsfabric-echo-jwt-es256")
        argv = [
            sys.executable, "-m", "bench", "run", "--no-venv", "--quick", "--only", "R1,A1",
            "--servers", ",".join(servers), "--duration", "1", "--wait-quiet", "0",
            "--retry-noisy", "0", "--no-profile", "--out", out,
        ]
        result = await asyncio.to_thread(
            subprocess.run, argv, cwd=PROJECT, capture_output=True, text=True, timeout=100
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
        with open(os.path.join(out, "runs.jsonl"), encoding="utf-8") as f:
            text = f.read()
        runs = {r["server"]: r for r in map(json.loads, text.splitlines())}
        self.assertEqual(sorted(runs), sorted(servers))
        routed, jwt = runs["wsfabric-routed-proto"], runs["wsfabric-echo-jwt-es256"]
        for run in (routed, jwt):
            self.assertTrue(run["ok"], run.get("error"))
            self.assertEqual(run["loadgen"]["errors"], 0, run["loadgen"]["error_detail"])
        self.assertEqual(routed["loadgen"]["subprotocol"], "wsfabric.proto")
        self.assertEqual(routed["loadgen"]["other_msgs"], 0)  # every reply carried its stamp
        self.assertGreater(routed["msgs_per_s"], 0)
        self.assertGreater(jwt["cycles_per_s"], 0)
        self.assertIn("?token=...", " ".join(jwt["loadgen_cmd"]))
        self.assertNotIn("eyJ", text)  # a JWT's header, base64
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            self.assertIn("## Routed messages, RPC and authentication", f.read())


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            return not any(line.startswith("State:\tZ") for line in f)
    except OSError:
        return False
