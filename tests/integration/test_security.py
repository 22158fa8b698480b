"""
Security and graceful shutdown against real ``twistd`` processes:

- JWT authentication on a standalone node: HTTP 401 with a JSON reason,
  the uid and claims in ``on_connect``, no token in the log; the per-address
  cap behind a trusted proxy, the per-uid cap, the message rate limit;
- TLS: a standalone node on an ``ssl:`` endpoint with a certificate made in
  the test, reached over ``wss://`` by the ``websockets`` package;
- graceful drain: SIGTERM spreads the 1001 closes over ``--drain-window``
  and the process exits 0;
- a cluster whose Redis wants a password and speaks TLS (``rediss://``),
  with an ES256-authenticated client whose uid a backend query sees, and a
  backend that finishes an in-flight event on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import tempfile
import time
from typing import Any

import jwt
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from tests.integration.apps import ContractApp
from tests.integration.support import (
    PROJECT,
    ContractClient,
    IntegrationTestCase,
    async_test,
    shared,
)
from wsfabric.interfaces import IApplication
from wsfabric.testing.processes import Cluster, StandaloneNode
from wsfabric.testing.redis import RedisServer, make_test_certificates

SECRET = "integration-secret-" + "x" * 24
APP = "tests.integration.test_security:ClaimsApp"


@implementer(IApplication)
class ClaimsApp(ContractApp):
    """
    :class:`ContractApp` plus two calls: ``request`` answers what
    ``on_connect`` was given (uid, claims, parameter and header names), and
    ``slow`` takes ``args[0]`` seconds (logging when it starts).
    """

    _log = Logger()

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric)
        self.requests: dict[str, Any] = {}

    def on_connect(self, client_id: str, request: Any) -> Any:
        self.requests[client_id] = {
            "uid": request.uid,
            "claims": request.claims,
            "params": sorted(request.params),
            "headers": sorted(request.headers),
        }
        return super().on_connect(client_id, request)

    async def _call(self, client_id: str, command: dict[str, Any]) -> Any:
        if command["call"] == "request":
            return self.requests.get(client_id)
        if command["call"] == "slow":
            self._log.info("slow call started")
            await deferLater(reactor, float(command["args"][0]), lambda: None)
            return "done"
        return await super()._call(client_id, command)


def hs256(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def secret_file() -> str:
    fd, path = tempfile.mkstemp(prefix="wsfabric-jwt-")
    os.write(fd, SECRET.encode())
    os.close(fd)
    return path


def start_auth_node() -> StandaloneNode:
    """
    The node the authentication and limit tests share: JWT with a secret
    file, 127.0.0.1 as trusted proxy (each test picks its own client address
    in X-Forwarded-For), and every limit set.
    """
    node = StandaloneNode(APP, [
        "--jwt-secret-file", secret_file(), "--jwt-issuer", "tests",
        "--trusted-proxy", "127.0.0.1",
        "--max-connections-per-ip", "3", "--max-connections-per-uid", "2",
        "--rate-limit", "20", "--rate-burst", "20",
    ], cwd=PROJECT, name="auth-node")
    try:
        node.start()
    except BaseException:
        print(node.log())
        node.stop()
        raise
    return node


async def refused(url: str, **options: Any) -> tuple[int, Any]:
    """
    :return: the HTTP status and JSON body of a refused handshake.
    """
    try:
        connection = await websockets.connect(url, open_timeout=10, **options)
    except websockets.InvalidStatus as e:
        return e.response.status_code, json.loads(e.response.body)
    await connection.close()
    raise AssertionError(f"{url} was accepted")


class AuthenticationTests(IntegrationTestCase):
    def node(self) -> StandaloneNode:
        return shared("security-auth-node", start_auth_node)

    async def client(self, token: str | None, address: str, **options: Any) -> ContractClient:
        url = self.node().ws_url + (f"?token={token}" if token else "")
        headers = {"X-Forwarded-For": address, **options.pop("headers", {})}
        client = await ContractClient.connect(url, additional_headers=headers, **options)
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(client.close())))
        return client

    @async_test()
    async def test_jwt(self) -> None:
        """
        Without a valid token the handshake gets 401 with a JSON reason; with
        one, on_connect gets the uid and claims (not the token), and queries
        see the uid bound. The token never appears in the log.
        """
        node = self.node()
        headers = {"X-Forwarded-For": "192.0.2.1"}
        status, body = await refused(node.ws_url, additional_headers=headers)
        self.assertEqual((status, body["error"]["code"]), (401, "unauthorized"))
        self.assertEqual(body["error"]["message"], "a token is required")
        expired = hs256({"sub": "alice", "iss": "tests", "exp": int(time.time()) - 60})
        status, body = await refused(f"{node.ws_url}?token={expired}", additional_headers=headers)
        self.assertEqual((status, body["error"]["message"]), (401, "the token has expired"))
        status, body = await refused(
            node.ws_url, additional_headers={**headers, "Authorization": "Bearer " + hs256(
                {"sub": "alice", "iss": "elsewhere"})},
        )
        self.assertEqual(body["error"]["message"], "the token's issuer is not accepted")

        token = hs256({"sub": "alice", "iss": "tests", "role": "admin",
                       "exp": int(time.time()) + 600})
        client = await self.client(token, "192.0.2.1")
        request = await client.call("request")
        self.assertEqual(request["uid"], "alice")
        self.assertEqual(request["claims"]["role"], "admin")
        self.assertNotIn("token", request["params"])
        by_header = await self.client(
            None, "192.0.2.1", headers={"Authorization": f"Bearer {token}"}
        )
        self.assertNotIn("authorization", (await by_header.call("request"))["headers"])
        self.assertEqual(await client.call("get_uid_by_client_id", client.client_id), "alice")
        self.assertEqual(
            sorted(await client.call("get_client_ids_by_uid", "alice")),
            sorted([client.client_id, by_header.client_id]),
        )
        # The refresh message is the gate's: the application never sees it.
        await client.connection.send(json.dumps(
            {"route": "wsfabric.refresh", "id": 99, "data": {"token": token}}))
        self.assertEqual(json.loads(await client.next_push()), {
            "id": 99, "data": {"exp": request["claims"]["exp"]}})
        events = await client.call("events")
        self.assertNotIn(99, [event[2] for event in events if event[0] == "message"])
        for secret in (token, expired, token.split(".")[2]):
            self.assertNotIn(secret, node.log())

    @async_test()
    async def test_connection_caps(self) -> None:
        """
        Behind the trusted proxy, a fourth connection from one address gets
        429; a third connection of one uid gets 429.
        """
        node = self.node()
        for index in range(3):
            await self.client(hs256({"sub": f"u{index}", "iss": "tests"}), "192.0.2.20")
        status, body = await refused(
            f"{node.ws_url}?token={hs256({'sub': 'u9', 'iss': 'tests'})}",
            additional_headers={"X-Forwarded-For": "192.0.2.20"},
        )
        self.assertEqual((status, body["error"]["code"]), (429, "too_many_connections"))
        bob = hs256({"sub": "bob", "iss": "tests"})
        await self.client(bob, "192.0.2.31")
        await self.client(bob, "192.0.2.32")
        status, body = await refused(
            f"{node.ws_url}?token={bob}", additional_headers={"X-Forwarded-For": "192.0.2.33"}
        )
        self.assertEqual((status, body["error"]["message"]),
                         (429, "too many connections for this user"))

    @async_test()
    async def test_rate_limit(self) -> None:
        """
        A client sending faster than --rate-limit is closed with 1008 "rate
        limit".
        """
        client = await self.client(hs256({"sub": "flood", "iss": "tests"}), "192.0.2.40")
        for index in range(100):
            try:
                await client.connection.send(f"m{index}")
            except websockets.ConnectionClosed:
                break
        await asyncio.wait_for(client._reader, 10)
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(client.connection.close_reason, "rate limit")


class TlsAndDrainTests(IntegrationTestCase):
    @async_test()
    async def test_wss(self) -> None:
        """
        A node listening on an ssl: endpoint serves wss:// to a client that
        trusts the test's CA, and refuses a plain-text client.
        """
        directory = tempfile.mkdtemp(prefix="wsfabric-tls-")
        ca, cert, key = make_test_certificates(directory)
        node = StandaloneNode(APP, cwd=PROJECT, name="tls-node")
        node.argv += ["--listen", f"ssl:{node.port}:interface=127.0.0.1:"
                                  f"privateKey={key}:certKey={cert}"]
        self.started(node.start())
        context = ssl.create_default_context(cafile=ca)
        client = await ContractClient.connect(f"wss://127.0.0.1:{node.port}/ws", ssl=context)
        self.assertEqual(await client.call("get_all_client_count"), 1)
        await client.close()
        with self.assertRaises((OSError, websockets.InvalidHandshake, asyncio.TimeoutError)):
            plain = await websockets.connect(node.ws_url, open_timeout=3)
            await plain.close()

    @async_test()
    async def test_drain_window(self) -> None:
        """
        SIGTERM with 150 clients and --drain-window 2: a batch of 100 closes
        at once, the other 50 about a second later, all with 1001; the
        process exits 0.
        """
        node = self.standalone(APP, ["--drain-window", "2"])
        connections = []
        for start in range(0, 150, 25):
            connections += await asyncio.gather(*(
                websockets.connect(node.ws_url, open_timeout=20) for _ in range(start, start + 25)
            ))
        closed_at: list[float] = []

        async def closed(connection: Any) -> int:
            await asyncio.wait_for(connection.wait_closed(), 20)
            closed_at.append(time.monotonic())
            return connection.close_code

        waiting = [asyncio.ensure_future(closed(c)) for c in connections]
        started = time.monotonic()
        node.signal(signal.SIGTERM)
        codes = await asyncio.gather(*waiting)
        self.assertEqual(set(codes), {1001})
        self.assertEqual(await asyncio.to_thread(node.wait, 20), 0)
        took = time.monotonic() - started
        closed_at.sort()
        # The first batch of 100 closed together, the rest a window/2 later.
        self.assertGreater(closed_at[120] - closed_at[0], 0.6)
        self.assertLess(closed_at[99] - closed_at[0], closed_at[120] - closed_at[0])
        self.assertLess(took, 2 + 5)
        self.assertIn("spreading the close of 150 clients over 2.0 s", node.log())


def tls_redis(password: str) -> tuple[RedisServer, bool]:
    """
    :return: a started redis-server that wants ``password`` and speaks TLS
        if this binary can, and whether it does.
    """
    server = RedisServer(password=password, tls=True)
    try:
        return server.start(), True
    except RuntimeError:
        server.stop()
        return RedisServer(password=password).start(), False


class ClusterSecurityTests(IntegrationTestCase):
    @async_test(timeout=90)
    async def test_cluster(self) -> None:
        """
        Over rediss:// with a password, an ES256-authenticated client's uid
        is visible to a backend's query and its claims reach on_connect
        through AMP; the Redis password never appears in a log. SIGTERM on
        the backend lets an in-flight call finish first.
        """
        password = "redis-pass-" + "p" * 12
        key = ec.generate_private_key(ec.SECP256R1())
        directory = tempfile.mkdtemp(prefix="wsfabric-es256-")
        public = os.path.join(directory, "jwt.pub")
        with open(public, "wb") as f:
            f.write(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        cluster = Cluster(APP, gates=1, backends=1, cwd=PROJECT,
                          gate_options=["--jwt-public-key", public, "--jwt-audience", "chat"])
        self.addCleanup(cluster.stop)
        cluster.redis, tls = await asyncio.to_thread(tls_redis, password)
        await asyncio.to_thread(cluster.start)
        self.assertEqual(cluster.redis.url.startswith("rediss://"), tls)

        token = jwt.encode({"sub": "zoe", "aud": ["chat"], "plan": "pro"}, key, algorithm="ES256")
        client = await ContractClient.connect(f"{cluster.gates[0].ws_url}?token={token}")
        request = await client.call("request")
        self.assertEqual((request["uid"], request["claims"]["plan"]), ("zoe", "pro"))
        self.assertTrue(await client.call("is_uid_online", "zoe"))
        self.assertEqual(await client.call("get_client_ids_by_uid", "zoe"), [client.client_id])
        wrong = jwt.encode({"sub": "zoe", "aud": "mail"}, key, algorithm="ES256")
        status, body = await refused(f"{cluster.gates[0].ws_url}?token={wrong}")
        self.assertEqual((status, body["error"]["message"]),
                         (401, "the token's audience is not accepted"))

        backend = cluster.backends[0]
        call = asyncio.ensure_future(client.call("slow", 1.5, timeout=20))
        deadline = time.monotonic() + 10
        while "slow call started" not in backend.log():
            self.assertLess(time.monotonic(), deadline, "the slow call never started")
            await asyncio.sleep(0.05)
        backend.signal(signal.SIGTERM)
        self.assertEqual(await call, "done")
        self.assertEqual(await asyncio.to_thread(backend.wait, 20), 0)
        for process in (*cluster.gates, backend):
            self.assertNotIn(password, process.log())
            self.assertNotIn(token, process.log())
        if not tls:
            raise SkipTest("this redis-server cannot serve TLS (built without BUILD_TLS=yes); "
                           "the rest of the test ran over redis:// with a password")
