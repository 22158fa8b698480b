"""
Named-service routing at the gate against real processes: a redis-server,
one gate, a ``default`` backend and two ``chat`` backends (which asked for
client events), each a real ``twistd``; clients are ``wsfabric.client``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from twisted.internet.defer import Deferred

from tests.integration.support import PROJECT, IntegrationTestCase, async_test
from tests.integration.test_services import wait_ready
from wsfabric.client import aio
from wsfabric.errors import RemoteError
from wsfabric.routing import Router, route
from wsfabric.testing.processes import Cluster, GateNode

ROUTING_APP = "tests.integration.test_service_routing:RoutingApp"


class RoutingApp(Router):
    """
    Every backend runs this; ``--service`` tells them apart. Raw text is
    echoed with the backend's pid; routes report which backend ran them and
    what it heard of the client.
    """

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric)
        self.connected: set[str] = set()
        self.closed: set[str] = set()

    def on_client_connect(self, client_id: str, request: Any) -> None:
        self.connected.add(client_id)

    def on_client_close(self, client_id: str) -> None:
        self.closed.add(client_id)

    def on_message(self, client_id: str, message: str | bytes) -> Any:
        if isinstance(message, str) and not message.startswith("{"):
            return self.fabric.send_to_client(client_id, f"raw:{os.getpid()}:{message}")
        return super().on_message(client_id, message)

    @route("chat.where")
    def chat_where(self, client_id: Any, data: Any) -> Any:
        return {"pid": os.getpid(), "connected": client_id in self.connected}

    @route("chat.closed")
    def chat_closed(self, client_id: Any, data: Any) -> Any:
        return data in self.closed

    @route("whoami")
    def whoami(self, client_id: Any, data: Any) -> Any:
        return client_id

    @route("lobby.where")
    def lobby_where(self, client_id: Any, data: Any) -> Any:
        return {"pid": os.getpid()}


def wait_linked(gate: GateNode, count: int, timeout: float = 15.0) -> None:
    """
    Wait until ``gate`` is linked with exactly ``count`` backends.
    """
    deadline = time.monotonic() + timeout
    while gate.backends_ready() != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate is not linked with {count} backends")
        time.sleep(0.1)


class ServiceRoutingTests(IntegrationTestCase):
    """
    Routed messages reach the service their route names.
    """

    @async_test(60)
    async def test_routing_stickiness_events_and_failover(self) -> None:
        """
        ``chat.*`` goes to a chat backend, the same one for each client,
        which also heard the client connect and close; raw text and
        unclaimed routes go to ``default``; after kill -9 of a chat backend
        its clients move to the other without reconnecting; with no chat
        backend left, chat requests fail at once with
        ``service_unavailable`` while ``default`` still answers.
        """
        cluster = Cluster(ROUTING_APP, gates=1, backends=0, cwd=PROJECT)
        self.addCleanup(cluster.stop)
        cluster.redis.start()
        default = cluster.add_backend(["--service", "default"])
        chat = [cluster.add_backend(["--service", "chat", "--client-events"]) for _ in range(2)]
        gate = cluster.add_gate()
        cluster.wait_linked()
        wait_ready(cluster)

        clients = []
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(_close_all(clients))))
        owners: dict[int, list[Any]] = {}
        raw: asyncio.Queue[str] = asyncio.Queue()
        for _ in range(16):
            client = await aio.connect(gate.ws_url)
            clients.append(client)
            wheres = [await client.request("chat.where", None) for _ in range(3)]
            self.assertEqual(len({w["pid"] for w in wheres}), 1, wheres)
            self.assertTrue(wheres[0]["connected"])
            owners.setdefault(wheres[0]["pid"], []).append(client)
            if len(owners) == 2 and len(clients) >= 6:
                break
        self.assertEqual(set(owners), {backend.pid for backend in chat})

        client = clients[0]
        self.assertEqual(await client.request("lobby.where", None), {"pid": default.pid})
        client.on_raw(raw.put_nowait)
        client.send_raw("hi")
        self.assertEqual(await asyncio.wait_for(raw.get(), 10), f"raw:{default.pid}:hi")

        # The close of a client reaches its chat backend.
        victim_pid, on_victim = next((pid, cs) for pid, cs in owners.items() if len(cs) >= 2)
        gone, watcher = on_victim[0], on_victim[1]
        closed_id = await gone.request("whoami", None)
        await gone.close()
        clients.remove(gone)
        deadline = time.monotonic() + 10
        while not await watcher.request("chat.closed", closed_id):
            self.assertLess(time.monotonic(), deadline, "chat never heard the close")
            await asyncio.sleep(0.1)

        # kill -9 of that chat backend: its clients move to the other one.
        victim = next(backend for backend in chat if backend.pid == victim_pid)
        survivor = next(backend for backend in chat if backend is not victim)
        victim.kill()
        wait_linked(gate, 2)
        for moved in on_victim[1:]:
            answer = await moved.request("chat.where", None, timeout=10)
            self.assertEqual(answer["pid"], survivor.pid)
            self.assertTrue(moved.connected)

        # No chat backend left: chat requests fail at once; default answers.
        survivor.kill()
        wait_linked(gate, 1)
        client = clients[0]
        started = time.monotonic()
        with self.assertRaises(RemoteError) as raised:
            await client.request("chat.where", None, timeout=10)
        self.assertEqual(raised.exception.code, "service_unavailable")
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(await client.request("lobby.where", None), {"pid": default.pid})


async def _close_all(clients: list[Any]) -> None:
    for client in clients:
        await client.close()
