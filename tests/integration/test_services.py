"""
Named services and service-to-service RPC against real processes: a real
redis-server, backends of two services, a gate; and the same application
standalone.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import websockets
from twisted.internet import reactor
from twisted.internet.task import deferLater
from zope.interface import implementer

from tests.integration.support import PROJECT, IntegrationTestCase, async_test, shared
from wsfabric.errors import RemoteError, RequestTimeout, RouteError
from wsfabric.interfaces import IPresenceListener
from wsfabric.routing import Router, route
from wsfabric.testing.processes import Cluster

SERVICES_APP = "tests.integration.test_services:ServiceApp"


class ServiceApp(Router):
    """
    Every backend of these tests runs this application; ``--service`` tells
    them apart. ``relay.*`` routes let a client make service calls through
    the backend it reaches.
    """

    @route("relay.call")
    async def relay_call(self, client_id: Any, data: Any) -> Any:
        try:
            result = await self.fabric.call(
                data["service"], data["route"], data.get("data"), timeout=data.get("timeout", 10)
            )
        except RemoteError as e:
            return {"error": e.code, "message": e.message}
        except RequestTimeout:
            return {"error": "timeout"}
        return {"result": result}

    @route("relay.notify")
    async def relay_notify(self, client_id: Any, data: Any) -> Any:
        try:
            await self.fabric.notify(data["service"], data["route"], data.get("data"))
        except RemoteError as e:
            return {"error": e.code}
        return {"ok": True}

    @route("relay.whoami")
    def whoami(self, client_id: Any, data: Any) -> Any:
        return client_id

    @route("work.pid")
    def pid(self, client_id: Any, data: Any) -> Any:
        return {"pid": os.getpid(), "client": client_id, "echo": data}

    @route("work.fail")
    def fail(self, client_id: Any, data: Any) -> Any:
        raise RouteError("refused", "work refused")

    @route("work.sleep")
    def sleep(self, client_id: Any, data: Any) -> Any:
        return deferLater(reactor, float(data), lambda: "slept")

    @route("work.note")
    def note(self, client_id: Any, data: Any) -> Any:
        # Notified calls leave a mark that a later call can read.
        self.notes = getattr(self, "notes", []) + [data]

    @route("work.notes")
    def read_notes(self, client_id: Any, data: Any) -> Any:
        return getattr(self, "notes", [])


class Caller:
    """
    A routed JSON client that makes service calls through ``relay.*``.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.next_id = 0
        #: Messages that were not the awaited reply (pushes), in order.
        self.other: list[Any] = []

    @classmethod
    async def connect(cls, url: str) -> Caller:
        connection = await websockets.connect(url, subprotocols=["wsfabric.json"], open_timeout=10)
        return cls(connection)

    async def request(self, route_name: str, data: Any, timeout: float = 15.0) -> Any:
        self.next_id += 1
        await self.connection.send(
            json.dumps({"route": route_name, "id": self.next_id, "data": data})
        )
        while True:
            reply = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    return {"envelope_error": reply["error"]["code"]}
                return reply["data"]
            self.other.append(reply)

    async def call(self, service: str, route_name: str, data: Any = None, **kw: Any) -> Any:
        return await self.request(
            "relay.call", {"service": service, "route": route_name, "data": data, **kw}
        )

    async def close(self) -> None:
        await self.connection.close()


def wait_ready(cluster: Cluster, timeout: float = 20.0) -> None:
    """
    Wait until every gate answers /health/ready (registered, on the bus,
    linked to a backend).
    """
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    for gate in cluster.gates:
        while True:
            try:
                with urllib.request.urlopen(gate.admin_url + "/health/ready", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{gate.name} not ready") from None
                time.sleep(0.1)


def _start_cluster() -> Cluster:
    cluster = Cluster(SERVICES_APP, gates=1, backends=0, cwd=PROJECT)
    try:
        cluster.redis.start()
        cluster.add_backend(["--service", "default"])
        cluster.add_backend(["--service", "work"])
        cluster.add_backend(["--service", "work"])
        cluster.add_gate()
        cluster.wait_linked()
        wait_ready(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


class ClusterRpcTests(IntegrationTestCase):
    """
    RPC between backends of a real cluster.
    """

    def setUp(self) -> None:
        self.cluster = shared("services-cluster", _start_cluster)

    @async_test(60)
    async def test_call_shares_load_and_reports_errors(self) -> None:
        """
        Calls to a service of two backends reach both (round robin), see no
        client id, carry remote error codes back, fail at once for a
        service with no backend, and time out when no reply comes.
        """
        caller = await Caller.connect(self.cluster.gate_urls[0])
        try:
            pids = set()
            for i in range(8):
                answer = await caller.call("work", "work.pid", {"n": i})
                self.assertEqual(answer["result"]["echo"], {"n": i})
                self.assertIsNone(answer["result"]["client"])
                pids.add(answer["result"]["pid"])
            workers = {backend.pid for backend in self.cluster.backends[1:]}
            self.assertEqual(pids, workers)

            self.assertEqual(
                await caller.call("work", "work.fail"),
                {"error": "refused", "message": "work refused"},
            )
            self.assertEqual((await caller.call("work", "work.nope"))["error"], "not_found")
            loop = asyncio.get_running_loop()
            started = loop.time()
            self.assertEqual(
                (await caller.call("nobody", "work.pid"))["error"], "service_unavailable"
            )
            self.assertLess(loop.time() - started, 2.0)
            self.assertEqual(
                await caller.call("work", "work.sleep", 3, timeout=0.5), {"error": "timeout"}
            )
            # A notify runs on one of the workers: one of them holds it.
            self.assertEqual(
                await caller.request(
                    "relay.notify", {"service": "work", "route": "work.note", "data": "n1"}
                ),
                {"ok": True},
            )
            seen = []
            for _ in range(2):
                seen += (await caller.call("work", "work.notes"))["result"]
            self.assertEqual(seen, ["n1"])
        finally:
            await caller.close()


class KilledBackendRpcTests(IntegrationTestCase):
    """
    A backend killed with SIGKILL costs its callers nothing.
    """

    @async_test(60)
    async def test_calls_skip_a_killed_backend(self) -> None:
        """
        After kill -9 of one backend of the service (its lease still
        running), every call is answered by the other, without a timeout.
        """
        cluster = Cluster(SERVICES_APP, gates=1, backends=0, cwd=PROJECT)
        self.addCleanup(cluster.stop)
        cluster.redis.start()
        cluster.add_backend(["--service", "default"])
        cluster.add_backend(["--service", "work"])
        victim = cluster.add_backend(["--service", "work"])
        cluster.add_gate()
        cluster.wait_linked()
        wait_ready(cluster)
        caller = await Caller.connect(cluster.gate_urls[0])
        try:
            await caller.call("work", "work.pid")
            victim.kill()
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(6):
                answer = await caller.call("work", "work.pid", timeout=5)
                self.assertEqual(answer["result"]["pid"], cluster.backends[1].pid)
            self.assertLess(loop.time() - started, 4.0)
        finally:
            await caller.close()


class StandaloneRpcTests(IntegrationTestCase):
    """
    In standalone mode the one application serves every service name.
    """

    @async_test(60)
    async def test_call_in_process(self) -> None:
        """
        call() reaches the node's own application, errors and all.
        """
        node = self.standalone(SERVICES_APP)
        caller = await Caller.connect(node.ws_url)
        try:
            answer = await caller.call("work", "work.pid", [1])
            self.assertEqual(answer["result"]["pid"], node.pid)
            self.assertEqual((await caller.call("game", "work.fail"))["error"], "refused")
            self.assertEqual(
                await caller.call("work", "work.sleep", 3, timeout=0.3), {"error": "timeout"}
            )
        finally:
            await caller.close()


@implementer(IPresenceListener)
class PresenceApp(ServiceApp):
    """
    Records presence events; rooms get presence pushes.
    """

    presence_push_groups = ("room:*",)

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric)
        self.events: list[list[Any]] = []

    def on_group_join(self, group: str, client_id: str) -> None:
        self.events.append(["join", group, client_id])

    def on_group_leave(self, group: str, client_id: str) -> None:
        self.events.append(["leave", group, client_id])

    def on_uid_online(self, uid: str) -> None:
        self.events.append(["online", uid])

    def on_uid_offline(self, uid: str) -> None:
        self.events.append(["offline", uid])

    @route("p.join")
    async def join(self, client_id: Any, data: Any) -> Any:
        await self.fabric.bind_uid(client_id, data["uid"])
        await self.fabric.join_group(client_id, data["group"])
        return client_id

    @route("p.events")
    def read_events(self, client_id: Any, data: Any) -> Any:
        return self.events


class PresenceTests(IntegrationTestCase):
    """
    Presence events and pushes in a cluster of two gates, after a clean
    close and after kill -9 of a gate.
    """

    @async_test(90)
    async def test_events_after_close_and_gate_kill(self) -> None:
        """
        Joins, binds, a clean close and the sweep of a killed gate's clients
        reach the listener once each, in order, and room members get pushes.
        """
        lease = ["--lease", "2"]
        cluster = Cluster(
            "tests.integration.test_services:PresenceApp", gates=2, backends=1, cwd=PROJECT,
            gate_options=lease, backend_options=lease,
        )
        self.addCleanup(cluster.stop)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, cluster.start)
        await loop.run_in_executor(None, wait_ready, cluster)
        await asyncio.sleep(1.5)  # the backend's presence flag is set within 1 s
        watcher = await Caller.connect(cluster.gate_urls[0])
        leaver = await Caller.connect(cluster.gate_urls[1])
        victim = await Caller.connect(cluster.gate_urls[1])
        try:
            w = await watcher.request("p.join", {"uid": "w", "group": "room:1"})
            c2 = await leaver.request("p.join", {"uid": "alice", "group": "room:1"})
            c3 = await victim.request("p.join", {"uid": "bob", "group": "room:1"})
            await leaver.close()

            async def events_until(count: int) -> list[Any]:
                for _ in range(100):
                    events = await watcher.request("p.events", None)
                    if len(events) >= count:
                        return events
                    await asyncio.sleep(0.1)
                return events

            events = await events_until(8)
            self.assertEqual(
                events,
                [
                    ["online", "w"], ["join", "room:1", w],
                    ["online", "alice"], ["join", "room:1", c2],
                    ["online", "bob"], ["join", "room:1", c3],
                    ["leave", "room:1", c2], ["offline", "alice"],
                ],
            )
            cluster.gates[1].kill()
            events = await events_until(10)
            self.assertEqual(events[8:], [["leave", "room:1", c3], ["offline", "bob"]])
            pushes = []
            while len(pushes) < 5:
                if watcher.other:
                    message = watcher.other.pop(0)
                else:
                    message = json.loads(await asyncio.wait_for(watcher.connection.recv(), 10))
                if message.get("route") == "wsfabric.presence":
                    data = message["data"]
                    pushes.append((data["event"], data["client_id"], data["uid"]))
            self.assertEqual(
                pushes,
                [("join", w, "w"), ("join", c2, "alice"), ("join", c3, "bob"),
                 ("leave", c2, "alice"), ("leave", c3, "bob")],
            )
        finally:
            await watcher.close()
