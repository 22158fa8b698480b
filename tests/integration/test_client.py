"""
:mod:`wsfabric.client` against a real ``twistd -n wsfabric`` running a
:class:`~wsfabric.routing.Router` (tests/integration/client_apps.py): both
fronts (Twisted Deferreds, asyncio coroutines), both codecs, both transports
(WebSocket and raw TCP), route compression, errors, timeouts, raw messages,
and reconnection after the server restarts.

Run with ``trial --reactor=asyncio`` (as tests.run does).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from twisted.internet.defer import Deferred

from tests.integration.support import PROJECT, IntegrationTestCase, async_test, shared
from wsfabric.client import Backoff, aio
from wsfabric.client import twisted as tx
from wsfabric.errors import ConnectFailed, NotConnected, RemoteError, RequestTimeout
from wsfabric.testing.processes import StandaloneNode, free_port

APP = "tests.integration.client_apps:CompressedClientTestApp"
FAST = Backoff(initial=0.05, maximum=0.3)


def node() -> StandaloneNode:
    """
    The node shared by the tests that do not restart it.
    """

    def start() -> StandaloneNode:
        started = StandaloneNode(APP, cwd=PROJECT, tcp=True, name="client-tests")
        try:
            return started.start()
        except BaseException:
            started.stop()
            raise

    return shared("client-tests", start)


def urls(n: StandaloneNode) -> dict[str, str]:
    return {"ws": n.ws_url, "tcp": f"tcp://127.0.0.1:{n.tcp_port}"}


def waiter() -> tuple[Deferred[Any], Any]:
    """
    :return: a Deferred and a handler that fires it with the first value.
    """
    d: Deferred[Any] = Deferred()

    def fire(value: Any) -> None:
        if not d.called:
            d.callback(value)

    return d, fire


class TwistedFrontTests(IntegrationTestCase):
    timeout = 60

    async def exercise(self, transport: str, codec: str, compress: bool) -> None:
        client = await tx.connect(urls(node())[transport], codec=codec,
                                  compress_routes=compress)
        self.addCleanup(client.close)
        pushed, on_push = waiter()
        if codec == "proto":
            client.on("proto.tick", on_push, message_type=Int64Value)
            upper = await client.request("proto.upper", StringValue(value="hé"),
                                         response_type=StringValue)
            self.assertEqual(upper.value, "HÉ")
            count = await client.request("proto.count", Int64Value(value=1),
                                         response_type=Int64Value)
            self.assertEqual(count.value, 1)
            self.assertEqual(await pushed, Int64Value(value=1))
        else:
            client.on("news", on_push)
            self.assertEqual(await client.request("echo", {"a": [1, "é"]}), {"a": [1, "é"]})
            client.notify("note", {"n": 1})
            self.assertEqual(await pushed, {"n": 1})
        self.assertEqual(bool(client.route_table), compress)
        # Errors: the handler's own code, an unexpected exception, no route.
        with self.assertRaises(RemoteError) as caught:
            await client.request("fail", "x")
        self.assertEqual((caught.exception.code, caught.exception.route), ("nope", "fail"))
        with self.assertRaises(RemoteError) as caught:
            await client.request("crash")
        self.assertEqual(caught.exception.code, "internal")
        with self.assertRaises(RemoteError) as caught:
            await client.request("no.such.route")
        self.assertEqual(caught.exception.code, "not_found")
        with self.assertRaises(RequestTimeout):
            await client.request("slow", 3, timeout=0.2)
        self.assertIsInstance(await client.request("whoami"), str)

    async def test_websocket_json(self) -> None:
        """
        WebSocket, JSON codec: request, notify and push, errors, timeout.
        """
        await self.exercise("ws", "json", compress=False)

    async def test_websocket_proto_compressed(self) -> None:
        """
        WebSocket, protobuf codec with route compression.
        """
        await self.exercise("ws", "proto", compress=True)

    async def test_tcp_json_compressed(self) -> None:
        """
        Raw TCP, JSON codec with route compression.
        """
        await self.exercise("tcp", "json", compress=True)

    async def test_tcp_proto(self) -> None:
        """
        Raw TCP, protobuf codec.
        """
        await self.exercise("tcp", "proto", compress=False)

    async def test_raw_messages(self) -> None:
        """
        Without a codec every message is raw: what the client sends goes
        out as it is and what comes back reaches on_raw (here the router's
        error envelope for a message that is not one).
        """
        client = await tx.connect(node().ws_url, codec=None)
        self.addCleanup(client.close)
        got, on_raw = waiter()
        client.on_raw(on_raw)
        client.send_raw("not an envelope")
        self.assertIn("bad_request", await got)

    async def test_reconnects_after_restart(self) -> None:
        """
        When the server goes away the client reports it, fails requests
        fast, and reconnects (with route compression renegotiated) once the
        server is back.
        """
        server = self.standalone(APP)
        events: list[Any] = []
        lost, on_lost = waiter()
        reconnected, on_reconnected = waiter()

        def on_connect(client: tx.Client) -> None:
            events.append("up")
            if len(events) > 1:
                on_reconnected(None)

        def on_disconnect(client: tx.Client, code: int | None, reason: str) -> None:
            events.append("down")
            on_lost(code)

        client = await tx.connect(
            server.ws_url, compress_routes=True, backoff=FAST,
            on_connect=on_connect, on_disconnect=on_disconnect,
        )
        self.addCleanup(client.close)
        self.assertEqual(await client.request("echo", 1), 1)
        server.stop()
        self.assertIn(await lost, (1001, 1006))
        with self.assertRaises(NotConnected):
            await client.request("echo", 2)
        server.start()
        await reconnected
        self.assertEqual(await client.request("echo", 3), 3)
        self.assertTrue(client.route_table)
        self.assertEqual(events, ["up", "down", "up"])

    async def test_token(self) -> None:
        """
        With JWT authentication on, a client without a token is refused at
        once (HTTP 401, or 4401 in the TCP hello) and does not retry; with a
        token it connects on both transports and can refresh it.
        """
        secret = "k" * 32
        server = StandaloneNode(APP, cwd=PROJECT, tcp=True, env={"WSFABRIC_JWT_SECRET": secret})
        self.addCleanup(server.stop)
        server.start()
        tcp_url = f"tcp://127.0.0.1:{server.tcp_port}"
        for url, code in ((server.ws_url, 401), (tcp_url, 4401)):
            with self.assertRaises(ConnectFailed) as caught:
                await tx.connect(url, backoff=FAST)
            self.assertEqual(caught.exception.code, code)

        def token(uid: str) -> str:
            return jwt.encode({"sub": uid, "exp": int(time.time()) + 600}, secret, "HS256")

        for url, codec in ((server.ws_url, "json"), (tcp_url, "proto")):
            client = await tx.connect(url, codec=codec, token=token("alice"))
            self.addCleanup(client.close)
            self.assertEqual(await client.request("echo", "in"), "in")
            answer = await client.refresh_token(token("alice"))
            self.assertIn("exp", answer)
            with self.assertRaises(RemoteError) as caught:
                await client.refresh_token(token("mallory"))
            self.assertEqual(caught.exception.code, "unauthorized")

    async def test_nothing_listens(self) -> None:
        """
        With nothing listening, connect gives up after max_retries with
        ConnectFailed naming the error.
        """
        with self.assertRaises(ConnectFailed) as caught:
            await tx.connect(f"ws://127.0.0.1:{free_port()}/ws",
                             backoff=Backoff(initial=0.05, max_retries=2))
        self.assertIn("gave up after 3 failed attempts", str(caught.exception))


class AsyncioFrontTests(IntegrationTestCase):
    timeout = 60

    async def exercise(self, transport: str, codec: str, compress: bool) -> None:
        client = await aio.connect(urls(node())[transport], codec=codec,
                                   compress_routes=compress)
        try:
            loop = asyncio.get_running_loop()
            pushed: asyncio.Future[Any] = loop.create_future()

            async def on_push(value: Any) -> None:
                if not pushed.done():
                    pushed.set_result(value)

            if codec == "proto":
                client.on("proto.tick", on_push, message_type=Int64Value)
                count = await client.request("proto.count", Int64Value(value=2),
                                             response_type=Int64Value)
                self.assertEqual(count.value, 2)
                self.assertEqual(await asyncio.wait_for(pushed, 10), Int64Value(value=1))
            else:
                client.on("news", on_push)
                self.assertEqual(await client.request("push", [1, 2]), "pushed")
                self.assertEqual(await asyncio.wait_for(pushed, 10), [1, 2])
            with self.assertRaises(RemoteError) as caught:
                await client.request("fail")
            self.assertEqual(caught.exception.code, "nope")
            with self.assertRaises(TimeoutError):
                await client.request("slow", 3, timeout=0.2)
            # Cancelling a request forgets it.
            task = asyncio.ensure_future(client.request("slow", 0.5))
            await asyncio.sleep(0)
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            self.assertEqual(client._session.pending, 0)
            self.assertEqual(bool(client.route_table), compress)
        finally:
            await client.close()
        self.assertEqual(client.state, "closed")

    @async_test()
    async def test_websocket_proto(self) -> None:
        """
        asyncio, WebSocket, protobuf codec.
        """
        await self.exercise("ws", "proto", compress=False)

    @async_test()
    async def test_websocket_json_compressed(self) -> None:
        """
        asyncio, WebSocket, JSON codec with route compression.
        """
        await self.exercise("ws", "json", compress=True)

    @async_test()
    async def test_tcp_proto_compressed(self) -> None:
        """
        asyncio, raw TCP, protobuf codec with route compression.
        """
        await self.exercise("tcp", "proto", compress=True)

    @async_test()
    async def test_tcp_json(self) -> None:
        """
        asyncio, raw TCP, JSON codec.
        """
        await self.exercise("tcp", "json", compress=False)

    @async_test()
    async def test_reconnects_after_restart(self) -> None:
        """
        The asyncio client over raw TCP reconnects after a server restart;
        async on_connect and on_disconnect callbacks run.
        """
        server = StandaloneNode(APP, cwd=PROJECT, tcp=True)
        self.addCleanup(server.stop)
        server.start()
        loop = asyncio.get_running_loop()
        ups: asyncio.Queue[str] = asyncio.Queue()
        downs: asyncio.Queue[int | None] = asyncio.Queue()

        async def on_connect(client: aio.Client) -> None:
            ups.put_nowait("up")

        client = await aio.connect(
            f"tcp://127.0.0.1:{server.tcp_port}", backoff=FAST, on_connect=on_connect,
            on_disconnect=lambda client, code, reason: downs.put_nowait(code),
        )
        try:
            await asyncio.wait_for(ups.get(), 10)
            await loop.run_in_executor(None, server.stop)
            self.assertIn(await asyncio.wait_for(downs.get(), 10), (1001, 1006))
            with self.assertRaises(NotConnected):
                await client.request("echo")
            await loop.run_in_executor(None, server.start)
            await asyncio.wait_for(ups.get(), 20)
            self.assertEqual(await client.request("echo", "back"), "back")
        finally:
            await client.close()
