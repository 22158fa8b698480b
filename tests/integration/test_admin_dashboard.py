"""
The admin dashboard in headless Chromium (Debian's), against a real cluster
of one gate and one backend with clients in groups and messages flowing:
the page shows the node ready, both nodes, the groups with their sizes and
the message rates. The screenshot is saved in the test's temporary
directory. The driver is tests/browser/dashboard_check.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile

from tests.integration.support import (
    CONTRACT_APP,
    PROJECT,
    ContractClient,
    IntegrationTestCase,
    async_test,
)
from tests.integration.test_admin import ahttp, key_file
from wsfabric.testing.processes import Cluster

BROWSER = os.path.join(PROJECT, "tests", "browser")


class DashboardTests(IntegrationTestCase):
    timeout = 180

    @async_test(timeout=170)
    async def test_dashboard(self) -> None:
        """
        The dashboard of a gate shows the cluster live.
        """
        keys = key_file()
        cluster = Cluster(CONTRACT_APP, gates=1, backends=1, cwd=PROJECT,
                          gate_options=["--api-key-file", keys])
        self.addCleanup(cluster.stop)
        await asyncio.to_thread(cluster.start)
        gate = cluster.gates[0]
        clients = [await ContractClient.connect(gate.ws_url) for _ in range(3)]
        for number, client in enumerate(clients):
            self.addCleanup(lambda c=client: asyncio.ensure_future(c.close()))
            await client.call("join_group", client.client_id, "lobby")
            if number:
                await client.call("join_group", client.client_id, "support")

        async def traffic() -> None:
            # Messages keep flowing while the page is watched (bounded).
            for _ in range(2000):
                await clients[0].call("send_to_group", "lobby", "hello")
                await ahttp(gate.admin_url + "/api/v1/send_to_group",
                            {"group": "support", "message": "hi"})
                await asyncio.sleep(0.05)

        flowing = asyncio.ensure_future(traffic())
        self.addCleanup(flowing.cancel)
        screenshot = os.path.join(tempfile.mkdtemp(prefix="wsfabric-dashboard-"),
                                  "dashboard.png")
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, os.path.join(BROWSER, "dashboard_check.py"),
             gate.admin_url + "/dashboard/", screenshot, "--group", "lobby",
             "--node-roles", "gate,backend"],
            capture_output=True, text=True, timeout=150,
            env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"),
        )
        flowing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flowing
        print(result.stdout.strip())
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr[-4000:])
        self.assertTrue(os.path.getsize(screenshot) > 10000)
