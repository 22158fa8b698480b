"""
The IFabric contract (CONTRACT.md section 3) checked end to end: real
processes, real WebSocket clients (the ``websockets`` package) calling every
method through :class:`~tests.integration.apps.ContractApp`.

The tests are written against a *deployment*: a list of WebSocket URLs.
Clients are spread over the URLs in turn, so the same tests check standalone
mode (one URL) and a cluster (several gates) unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

from tests.integration.support import (
    CONTRACT_APP,
    PROJECT,
    CallError,
    ContractClient,
    IntegrationTestCase,
    async_test,
    shared,
)
from wsfabric.testing.processes import Cluster, StandaloneNode


def unique(prefix: str) -> str:
    """
    A group or uid name no other test uses.
    """
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class ContractTestsMixin:
    """
    The contract tests. A subclass provides :attr:`urls` (set up once per
    class) and mixes in :class:`IntegrationTestCase`.
    """

    def deployment_urls(self) -> list[str]:
        """
        The WebSocket URLs of the deployment under test.
        """
        raise NotImplementedError

    def setUp(self) -> None:
        self.urls = self.deployment_urls()
        self._spread = itertools.cycle(self.urls)
        self._clients: list[ContractClient] = []

    async def clients(self, count: int, **options: Any) -> list[ContractClient]:
        """
        Connect ``count`` clients, spread over the deployment's URLs.
        """
        connected = []
        for _ in range(count):
            client = await ContractClient.connect(next(self._spread), **options)
            self._clients.append(client)
            connected.append(client)
        return connected

    async def close_all(self) -> None:
        for client in self._clients:
            await client.close()

    async def eventually(self, check: Any, timeout: float = 5.0) -> None:
        """
        Wait until ``await check()`` is true, at most ``timeout`` seconds.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if await check():
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.05)

    # -- sends ------------------------------------------------------------------

    @async_test()
    async def test_send_to_client(self) -> None:
        """
        send_to_client reaches exactly that client, text as text and binary
        as binary, wherever it is connected.
        """
        a, b, c = await self.clients(3)
        self.assertIsNone(await a.call("send_to_client", b.client_id, "hello b"))
        await a.call("send_to_client", b.client_id, b"\x00\x01")
        self.assertEqual(await b.next_push(), "hello b")
        self.assertEqual(await b.next_push(), b"\x00\x01")
        await a.no_push()
        await c.no_push()
        await self.close_all()

    @async_test()
    async def test_send_to_offline_is_noop(self) -> None:
        """
        Sends to clients, uids and groups with nobody online succeed and do
        nothing.
        """
        a, b = await self.clients(2)
        gone = b.client_id
        await b.close()
        await self.eventually(lambda: self._not(a.call("is_online", gone)))
        self.assertIsNone(await a.call("send_to_client", gone, "x"))
        self.assertIsNone(await a.call("send_to_uid", unique("nobody"), "x"))
        self.assertIsNone(await a.call("send_to_group", unique("empty"), "x"))
        self.assertIsNone(await a.call("send_to_clients", [gone, "junk"], "x"))
        await a.no_push()
        await a.close()

    async def _not(self, call: Any) -> bool:
        return not await call

    @async_test()
    async def test_send_to_clients(self) -> None:
        """
        send_to_clients reaches every listed client that is online.
        """
        a, b, c, d = await self.clients(4)
        await a.call("send_to_clients", [b.client_id, c.client_id], "many")
        self.assertEqual(await b.next_push(), "many")
        self.assertEqual(await c.next_push(), "many")
        await d.no_push()
        await self.close_all()

    @async_test()
    async def test_send_to_all_with_exclude(self) -> None:
        """
        send_to_all reaches every client except the excluded ones.
        """
        a, b, c = await self.clients(3)
        await a.call("send_to_all", "everyone", exclude=[b.client_id])
        self.assertEqual(await a.next_push(), "everyone")
        self.assertEqual(await c.next_push(), "everyone")
        await b.no_push()
        await self.close_all()

    @async_test()
    async def test_send_to_uid(self) -> None:
        """
        send_to_uid reaches every client bound to the uid, on any node.
        """
        a, b, c = await self.clients(3)
        uid = unique("user")
        await a.call("bind_uid", a.client_id, uid)
        await a.call("bind_uid", b.client_id, uid)
        await c.call("send_to_uid", uid, "for the user")
        self.assertEqual(await a.next_push(), "for the user")
        self.assertEqual(await b.next_push(), "for the user")
        await c.no_push()
        await self.close_all()

    @async_test()
    async def test_join_then_send_reaches_new_member(self) -> None:
        """
        Read-your-writes: once join_group has answered, a send to the group
        from any node reaches the new member; exclude is honoured.
        """
        a, b, c = await self.clients(3)
        group = unique("room")
        for client in (a, b):
            await client.call("join_group", client.client_id, group)
        await c.call("send_to_group", group, "to the room")
        self.assertEqual(await a.next_push(), "to the room")
        self.assertEqual(await b.next_push(), "to the room")
        await c.call("send_to_group", group, "not to a", exclude=[a.client_id])
        self.assertEqual(await b.next_push(), "not to a")
        await a.no_push()
        await c.no_push()
        await self.close_all()

    @async_test(timeout=120)
    async def test_group_order_per_sender(self) -> None:
        """
        1,000 numbered messages from one sender to a group arrive complete and
        in order at every member, on every node.
        """
        members = await self.clients(3)
        sender = members[0]
        group = unique("ordered")
        for member in members:
            await member.call("join_group", member.client_id, group)
        for number in range(1000):
            await sender.connection.send(
                json.dumps({"id": -1, "call": "send_to_group", "args": [group, str(number)]})
            )
        for member in members:
            received: list[str] = []
            while len(received) < 1000:
                message = await member.next_push(timeout=20)
                if not message.startswith('{"id": -1'):  # the sender's own replies
                    received.append(message)
            self.assertEqual(received, [str(n) for n in range(1000)])
        await self.close_all()

    # -- uids -----------------------------------------------------------------------

    @async_test()
    async def test_uid_queries(self) -> None:
        """
        bind_uid is visible to every uid query from every node; rebinding
        replaces; unbind removes.
        """
        a, b, c = await self.clients(3)
        uid, other = unique("alice"), unique("bob")
        await a.call("bind_uid", a.client_id, uid)
        await b.call("bind_uid", b.client_id, uid)
        self.assertTrue(await c.call("is_uid_online", uid))
        self.assertEqual(await c.call("get_uid_by_client_id", a.client_id), uid)
        self.assertEqual(
            sorted(await c.call("get_client_ids_by_uid", uid)),
            sorted([a.client_id, b.client_id]),
        )
        self.assertIn(uid, await c.call("get_all_uids"))
        await a.call("bind_uid", a.client_id, other)
        self.assertEqual(await c.call("get_client_ids_by_uid", uid), [b.client_id])
        await c.call("unbind_uid", b.client_id, uid)
        self.assertFalse(await c.call("is_uid_online", uid))
        self.assertNotIn(uid, await c.call("get_all_uids"))
        self.assertIsNone(await c.call("get_uid_by_client_id", b.client_id))
        await self.close_all()

    # -- groups -----------------------------------------------------------------------

    @async_test()
    async def test_group_queries(self) -> None:
        """
        Group membership is visible to every group query from every node;
        leave and ungroup remove members; a group exists while it has members.
        """
        a, b, c = await self.clients(3)
        group = unique("g")
        uid = unique("u")
        await a.call("bind_uid", a.client_id, uid)
        await b.call("bind_uid", b.client_id, uid)
        for client in (a, b, c):
            await client.call("join_group", client.client_id, group)
        self.assertEqual(await a.call("get_client_count_by_group", group), 3)
        self.assertEqual(await a.call("get_uid_count_by_group", group), 1)
        self.assertEqual(await a.call("get_uids_by_group", group), [uid])
        self.assertEqual(
            sorted(await b.call("get_client_ids_by_group", group)),
            sorted(x.client_id for x in (a, b, c)),
        )
        self.assertIn(group, await c.call("get_all_groups"))
        await c.call("leave_group", c.client_id, group)
        self.assertEqual(await a.call("get_client_count_by_group", group), 2)
        await c.call("ungroup", group)
        self.assertEqual(await a.call("get_client_count_by_group", group), 0)
        self.assertNotIn(group, await b.call("get_all_groups"))
        await c.call("send_to_group", group, "nobody left")
        await a.no_push()
        await self.close_all()

    # -- clients -----------------------------------------------------------------------

    @async_test()
    async def test_close_client(self) -> None:
        """
        close_client closes with the given code and reason; once it has
        answered, no query reports the client.
        """
        a, b = await self.clients(2)
        group = unique("g")
        await b.call("join_group", b.client_id, group)
        await a.call("close_client", b.client_id, 4321, "kicked")
        self.assertFalse(await a.call("is_online", b.client_id))
        self.assertEqual(await a.call("get_client_count_by_group", group), 0)
        await asyncio.wait_for(b._reader, 5)
        self.assertEqual(b.close_code, 4321)
        self.assertEqual(b.connection.close_reason, "kicked")
        with self.assertRaises(CallError) as caught:
            await a.call("close_client", a.client_id, 1001)
        self.assertEqual(caught.exception.name, "InvalidArgument")
        await a.close()

    @async_test()
    async def test_disconnect_cleans_up(self) -> None:
        """
        A client that disconnects leaves its groups; its uid binding and info
        are dropped; no query on any node reports it.
        """
        a, b = await self.clients(2)
        group, uid = unique("g"), unique("u")
        await b.call("bind_uid", b.client_id, uid)
        await b.call("join_group", b.client_id, group)
        await b.call("set_info", b.client_id, {"name": "b"})
        gone = b.client_id
        await b.close()
        await self.eventually(lambda: self._not(a.call("is_online", gone)))
        self.assertEqual(await a.call("get_client_count_by_group", group), 0)
        self.assertFalse(await a.call("is_uid_online", uid))
        self.assertEqual(await a.call("get_info", gone), {})
        self.assertIsNone(await a.call("get_uid_by_client_id", gone))
        await a.close()

    @async_test()
    async def test_online_and_count(self) -> None:
        """
        is_online and get_all_client_count see clients on every node.
        """
        a, b, c = await self.clients(3)
        self.assertTrue(await a.call("is_online", c.client_id))
        self.assertFalse(await a.call("is_online", "0123456789abcdef-1"))
        self.assertGreaterEqual(await b.call("get_all_client_count"), 3)
        await self.close_all()

    @async_test()
    async def test_info(self) -> None:
        """
        set_info replaces, update_info merges top-level keys, get_info reads
        from any node.
        """
        a, b = await self.clients(2)
        await a.call("set_info", b.client_id, {"a": 1, "nested": {"x": 1}})
        await a.call("update_info", b.client_id, {"b": 2, "nested": {"y": 2}})
        self.assertEqual(
            await b.call("get_info", b.client_id), {"a": 1, "b": 2, "nested": {"y": 2}}
        )
        await b.call("set_info", b.client_id, {"only": True})
        self.assertEqual(await a.call("get_info", b.client_id), {"only": True})
        self.assertEqual(await a.call("get_info", "0123456789abcdef-1"), {})
        await self.close_all()

    @async_test()
    async def test_errors(self) -> None:
        """
        Mutations of an offline client fail with ClientNotFound; bad arguments
        with InvalidArgument.
        """
        (a,) = await self.clients(1)
        for method, args in [
            ("bind_uid", ["0123456789abcdef-1", "u"]),
            ("unbind_uid", ["0123456789abcdef-1", "u"]),
            ("join_group", ["0123456789abcdef-1", "g"]),
            ("leave_group", ["0123456789abcdef-1", "g"]),
            ("set_info", ["0123456789abcdef-1", {}]),
            ("update_info", ["0123456789abcdef-1", {}]),
        ]:
            with self.assertRaises(CallError) as caught:
                await a.call(method, *args)
            self.assertEqual(caught.exception.name, "ClientNotFound", method)
        for method, args in [
            ("join_group", [a.client_id, ""]),
            ("bind_uid", [a.client_id, 5]),
            ("set_info", [a.client_id, [1, 2]]),
            ("send_to_client", [a.client_id, 3]),
        ]:
            with self.assertRaises(CallError) as caught:
                await a.call(method, *args)
            self.assertEqual(caught.exception.name, "InvalidArgument", method)
        await a.close()


class StandaloneContractTests(ContractTestsMixin, IntegrationTestCase):
    """
    The contract against ``twistd -n wsfabric``.
    """

    def deployment_urls(self) -> list[str]:
        node = shared(
            "standalone-contract",
            lambda: StandaloneNode(CONTRACT_APP, [], cwd=PROJECT).start(),
        )
        return [node.ws_url]


class ClusterContractTests(ContractTestsMixin, IntegrationTestCase):
    """
    The same contract against a cluster of two gates and two backends
    (clients alternate between the gates).
    """

    def deployment_urls(self) -> list[str]:
        cluster = shared(
            "cluster-contract",
            lambda: Cluster(CONTRACT_APP, gates=2, backends=2, cwd=PROJECT).start(),
        )
        return cluster.gate_urls
