"""
The raw TCP transport against real processes: a standalone node and a
one-gate, one-backend cluster, each with ``--listen-tcp``. A TCP client
(asyncio streams, written here from docs/wire-protocol.md) and a WebSocket
client (the ``websockets`` package) share a group and both receive a group
send; limits and shutdown reach the TCP client as close frames.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from tests.integration.support import (
    CONTRACT_APP,
    PROJECT,
    ContractClient,
    IntegrationTestCase,
    async_test,
)
from wsfabric.testing.processes import Cluster, StandaloneNode

TEXT, BINARY, CLOSE, PING, PONG, HELLO = range(6)


class TcpTestClient:
    """
    A raw TCP client of :class:`~tests.integration.apps.ContractApp`.

    :ivar hello: the server's hello.
    :ivar pushed: messages that were not replies, ``("close", code, reason)``
        for a close frame, then ``None`` at the end of the stream.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.hello: Any = None
        self.client_id = ""
        self.pushed: asyncio.Queue[Any] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, **hello: Any) -> TcpTestClient:
        """
        Connect, say hello, read the server's hello, learn the client id.
        """
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.send(HELLO, json.dumps(hello).encode())
        kind, payload = await asyncio.wait_for(client.read_frame(), 10)
        assert kind == HELLO, (kind, payload)
        client.hello = json.loads(payload)
        client._task = asyncio.ensure_future(client._read())
        client.client_id = await client.call("whoami")
        return client

    def send(self, kind: int, payload: bytes) -> None:
        self.writer.write(struct.pack("!IB", len(payload) + 1, kind) + payload)

    async def read_frame(self) -> tuple[int, bytes]:
        length, kind = struct.unpack("!IB", await self.reader.readexactly(5))
        return kind, await self.reader.readexactly(length - 1)

    async def _read(self) -> None:
        try:
            while True:
                kind, payload = await self.read_frame()
                if kind == PING:
                    self.send(PONG, payload)
                elif kind == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0]
                    self.pushed.put_nowait(("close", code, payload[2:].decode()))
                elif kind == TEXT:
                    text = payload.decode()
                    reply = json.loads(text) if text.startswith('{"id"') else None
                    if isinstance(reply, dict) and reply.get("id") in self._replies:
                        self._replies.pop(reply["id"]).set_result(reply)
                    else:
                        self.pushed.put_nowait(text)
                else:
                    self.pushed.put_nowait(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.pushed.put_nowait(None)

    async def call(self, name: str, *args: Any) -> Any:
        """
        Call a fabric method through ContractApp.
        """
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = future
        self.send(TEXT, json.dumps({"id": self._next_id, "call": name, "args": args}).encode())
        reply = await asyncio.wait_for(future, 10)
        assert "error" not in reply, reply
        return reply.get("result")

    async def next_push(self, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(self.pushed.get(), timeout)

    async def close(self) -> None:
        self.writer.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)


class TcpTransportTests(IntegrationTestCase):
    async def group_send(self, ws_url: str, tcp_port: int) -> tuple[ContractClient, TcpTestClient]:
        """
        A WebSocket and a TCP client in one group receive the group sends of
        either.
        """
        ws = await ContractClient.connect(ws_url + "?join=room")
        tcp = await TcpTestClient.connect(
            tcp_port, path="/ws", params={"join": "room"}, subprotocol="wsfabric.json"
        )
        self.assertEqual(tcp.hello, {"subprotocol": "wsfabric.json"})
        self.assertEqual(
            sorted(await tcp.call("get_client_ids_by_group", "room")),
            sorted([ws.client_id, tcp.client_id]),
        )
        await ws.call("send_to_group", "room", "from websocket")
        self.assertEqual(await ws.next_push(), "from websocket")
        self.assertEqual(await tcp.next_push(), "from websocket")
        await tcp.call("send_to_group", "room", "from tcp")
        self.assertEqual(await ws.next_push(), "from tcp")
        self.assertEqual(await tcp.next_push(), "from tcp")
        tcp.send(BINARY, b"\x00echo")
        self.assertEqual(await tcp.next_push(), b"\x00echo")
        return ws, tcp

    @async_test(timeout=60)
    async def test_standalone(self) -> None:
        """
        Standalone: a group send reaches both transports; an oversize TCP
        message is closed with 1009; SIGTERM closes a TCP client with 1001.
        """
        node = StandaloneNode(CONTRACT_APP, ["--max-message-size", "4096"], cwd=PROJECT, tcp=True)
        self.addCleanup(node.stop)
        node.start()
        ws, tcp = await self.group_send(node.ws_url, node.tcp_port)

        big = await TcpTestClient.connect(node.tcp_port)
        big.send(BINARY, b"x" * 4097)
        self.assertEqual(
            await big.next_push(),
            ("close", 1009, "message of 4097 bytes exceeds the limit of 4096"),
        )
        self.assertIsNone(await big.next_push())

        await ws.close()
        node.stop()
        self.assertEqual(node.returncode, 0)
        self.assertEqual(await tcp.next_push(), ("close", 1001, "server shutting down"))
        self.assertIsNone(await tcp.next_push())

    @async_test(timeout=60)
    async def test_cluster(self) -> None:
        """
        A one-gate, one-backend cluster: a group send reaches both
        transports; a bad hello is closed with 1002.
        """
        cluster = Cluster(CONTRACT_APP, gates=1, backends=1, cwd=PROJECT, tcp=True)
        self.addCleanup(cluster.stop)
        cluster.start()
        gate = cluster.gates[0]
        ws, tcp = await self.group_send(gate.ws_url, gate.tcp_port)
        await tcp.close()
        await ws.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", gate.tcp_port)
        writer.write(struct.pack("!IB", 3, TEXT) + b"hi")
        length, kind = struct.unpack("!IB", await asyncio.wait_for(reader.readexactly(5), 10))
        payload = await reader.readexactly(length - 1)
        self.assertEqual(kind, CLOSE)
        self.assertEqual(payload, struct.pack("!H", 1002) + b"the first frame must be a hello")
        self.assertEqual(await asyncio.wait_for(reader.read(), 10), b"")
        writer.close()
