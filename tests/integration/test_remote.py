"""
The IFabric of an outside process (wsfabric.connect) from an asyncio
program, against a real cluster: sends, queries, per-client commands routed
to the owning gate, calls, and the cluster secret.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import websockets

from tests.integration.support import PROJECT, IntegrationTestCase, async_test
from tests.integration.test_services import SERVICES_APP, Caller, wait_ready
from wsfabric import aio
from wsfabric.errors import ClientNotFound, ClusterUnavailable
from wsfabric.testing.processes import Cluster

# A synchronous program (as a Django view would be): no reactor of its own,
# wsfabric.blocking runs one in a thread.
BLOCKING_PROGRAM = """
import json, sys
from wsfabric import blocking
from wsfabric.errors import ClientNotFound
client_id, redis_url, secret = sys.argv[1:4]
fabric = blocking.connect(redis_url, cluster_secret=secret)
fabric.bind_uid(client_id, "bob")
fabric.join_group(client_id, "sync-room")
fabric.send_to_group("sync-room", "from a sync program")
try:
    fabric.join_group("00000000000000ff-1", "sync-room")
    missing = "no error"
except ClientNotFound:
    missing = "ClientNotFound"
print(json.dumps({
    "members": fabric.get_client_ids_by_group("sync-room"),
    "uid": fabric.get_uid_by_client_id(client_id),
    "count": fabric.get_all_client_count(),
    "missing": missing,
}))
fabric.close()
"""


class RemoteFabricTests(IntegrationTestCase):
    @async_test(90)
    async def test_asyncio_program_drives_the_cluster(self) -> None:
        """
        An asyncio program binds, joins, sends, queries, sets info, calls a
        service and closes a client of a gate; a program with the wrong
        secret is refused.
        """
        cluster = Cluster(SERVICES_APP, gates=2, backends=1, cwd=PROJECT)
        self.addCleanup(cluster.stop)
        await asyncio.get_running_loop().run_in_executor(None, cluster.start)
        await asyncio.get_running_loop().run_in_executor(None, wait_ready, cluster)
        client = await Caller.connect(cluster.gate_urls[1])
        fabric = await aio.connect(cluster.redis.url, cluster_secret=cluster.secret)
        try:
            client_id = await client.request("relay.whoami", None)
            await fabric.bind_uid(client_id, "alice")
            await fabric.join_group(client_id, "room")
            self.assertEqual(await fabric.get_client_ids_by_group("room"), [client_id])
            self.assertTrue(await fabric.is_uid_online("alice"))
            self.assertEqual(await fabric.get_uid_by_client_id(client_id), "alice")
            await fabric.set_info(client_id, {"level": 3})
            await fabric.update_info(client_id, {"name": "A"})
            self.assertEqual(await fabric.get_info(client_id), {"level": 3, "name": "A"})

            await fabric.send_to_group("room", "to the room")
            await fabric.send_to_client(client_id, "just you")
            await fabric.send_to_uid("alice", b"\x00bin")
            received = [await asyncio.wait_for(client.connection.recv(), 5) for _ in range(3)]
            self.assertEqual(received, ["to the room", "just you", b"\x00bin"])

            # A call from outside reaches the service like one from a backend.
            answer = await fabric.call("default", "work.pid", {"x": 1})
            self.assertEqual(answer["pid"], cluster.backends[0].pid)

            await fabric.leave_group(client_id, "room")
            self.assertEqual(await fabric.get_client_count_by_group("room"), 0)
            with self.assertRaises(ClientNotFound):
                await fabric.join_group(client_id[:-1] + "zz", "room")
            # A client of a gate that never existed.
            with self.assertRaises(ClientNotFound):
                await fabric.bind_uid("00000000000000ff-1", "x")

            intruder = await aio.connect(cluster.redis.url, cluster_secret="wrong", timeout=1.0)
            try:
                with self.assertRaises(ClusterUnavailable):
                    await intruder.join_group(client_id, "stolen")
            finally:
                await intruder.close()
            self.assertEqual(await fabric.get_client_count_by_group("stolen"), 0)

            await fabric.close_client(client_id, 4001, "bye")
            with self.assertRaises(websockets.ConnectionClosed):
                while True:
                    json.loads(await asyncio.wait_for(client.connection.recv(), 5))
            self.assertEqual(client.connection.close_code, 4001)
        finally:
            await fabric.close()
            await client.close()

    @async_test(90)
    async def test_blocking_program_drives_the_cluster(self) -> None:
        """
        A synchronous program (no reactor, as in a WSGI view) binds, joins,
        sends and queries through ``wsfabric.blocking.connect``; errors
        arrive as the usual exceptions.
        """
        cluster = Cluster(SERVICES_APP, gates=1, backends=1, cwd=PROJECT)
        self.addCleanup(cluster.stop)
        await asyncio.get_running_loop().run_in_executor(None, cluster.start)
        await asyncio.get_running_loop().run_in_executor(None, wait_ready, cluster)
        client = await Caller.connect(cluster.gate_urls[0])
        try:
            client_id = await client.request("relay.whoami", None)
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", BLOCKING_PROGRAM, client_id, cluster.redis.url,
                 cluster.secret],
                capture_output=True, text=True, timeout=60, cwd=PROJECT,
            )
            self.assertEqual(done.returncode, 0, done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            self.assertEqual(result, {
                "members": [client_id], "uid": "bob", "count": 1, "missing": "ClientNotFound",
            })
            self.assertEqual(
                await asyncio.wait_for(client.connection.recv(), 5), "from a sync program"
            )
        finally:
            await client.close()
