"""
Client authentication: JWT verification (HS256, RS256, ES256), the options
that configure it, custom authenticators, and what the WebSocket edge does
with it (HTTP 401 with a JSON body, the uid bound before ``on_connect``,
claims in the request, token expiry with 4401 and refresh, no token in
logs).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.unit.apps import RecordingApp
from tests.unit.edge import EdgeHarness
from tests.unit.test_websocket import StringTransport
from wsfabric.errors import AuthenticationFailed
from wsfabric.gate.auth import (
    CLOSE_TOKEN_EXPIRED,
    SECRET_VARIABLE,
    JWTAuthenticator,
    token_from,
)
from wsfabric.interfaces import IAuthenticator
from wsfabric.standalone import Options

SECRET = "s" * 40
NOW = 1_700_000_000


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def clock_at(seconds: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def pem_file(test: SynchronousTestCase, key: Any) -> str:
    """
    Write the public half of ``key`` to a PEM file removed after the test.
    """
    fd, path = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    test.addCleanup(os.unlink, path)
    return path


def parse(args: list[str]) -> Options:
    options = Options()
    options.parseOptions(["--app", "tests.unit.apps:RecordingApp", *args])
    return options


@implementer(IAuthenticator)
class HeaderAuthenticator:
    """
    A custom scheme for the tests: ``x-user`` names the uid; ``x-user:
    later`` answers asynchronously (kept in ``pending``).
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def authenticate(self, headers: dict[str, str], params: dict[str, str]) -> Any:
        user = headers.get("x-user") or params.get("token")
        if not user:
            raise AuthenticationFailed("x-user is required")
        if user == "later":
            waiter: Deferred[Any] = Deferred()
            self.pending.append(waiter)
            return waiter
        return user, {"scheme": "header"}


class NotAnAuthenticator:
    pass


class QueryingApp(RecordingApp):
    """
    Records what the fabric says of the client's uid while on_connect runs.
    """

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric)
        self.uid_seen: list[Any] = []

    def on_connect(self, client_id: str, request: Any) -> Any:
        super().on_connect(client_id, request)
        return self.fabric.get_uid_by_client_id(client_id).addCallback(self.uid_seen.append)


class JWTTests(SynchronousTestCase):
    def authenticator(self, **options: Any) -> JWTAuthenticator:
        return JWTAuthenticator(SECRET.encode(), ["HS256"], clock_at(), **options)

    def refused(self, authenticator: JWTAuthenticator, token: str) -> str:
        with self.assertRaises(AuthenticationFailed) as raised:
            authenticator.authenticate({}, {"token": token})
        self.assertNotIn(token, str(raised.exception))
        return str(raised.exception)

    def test_hs256_uid_and_claims(self) -> None:
        """
        A valid token gives the uid of its ``sub`` and all its claims.
        """
        claims = {"sub": "alice", "exp": NOW + 60, "role": "admin"}
        uid, got = self.authenticator().authenticate({}, {"token": hs256(claims)})
        self.assertEqual((uid, got), ("alice", claims))

    def test_bearer_header_wins(self) -> None:
        """
        ``Authorization: Bearer`` is read before ``?token=``; another scheme
        is refused.
        """
        self.assertEqual(token_from({"authorization": "Bearer abc"}, {"token": "x"}), "abc")
        self.assertEqual(token_from({"authorization": "bearer  abc "}, {}), "abc")
        self.assertEqual(token_from({}, {"token": "x"}), "x")
        self.assertIsNone(token_from({}, {}))
        with self.assertRaises(AuthenticationFailed):
            token_from({"authorization": "Basic dXNlcjpwYXNz"}, {})
        uid, _ = self.authenticator().authenticate(
            {"authorization": "Bearer " + hs256({"sub": "bob"})}, {"token": "garbage"}
        )
        self.assertEqual(uid, "bob")

    def test_time_claims(self) -> None:
        """
        ``exp`` in the past and ``nbf`` in the future are refused, within
        the leeway; ``exp`` must be a number.
        """
        auth = self.authenticator()
        self.assertIn("expired", self.refused(auth, hs256({"sub": "a", "exp": NOW})))
        self.assertIn("not valid yet", self.refused(auth, hs256({"sub": "a", "nbf": NOW + 1})))
        self.assertIn("not a number", self.refused(auth, hs256({"sub": "a", "exp": "soon"})))
        lenient = self.authenticator(leeway=10)
        self.assertEqual(lenient.authenticate({}, {"token": hs256({"sub": "a", "exp": NOW})})[0],
                         "a")
        self.assertEqual(
            lenient.authenticate({}, {"token": hs256({"sub": "a", "nbf": NOW + 5})})[0], "a"
        )

    def test_issuer_and_audience(self) -> None:
        """
        With an issuer and an audience configured, tokens must carry them.
        """
        auth = self.authenticator(issuer="https://auth.example", audience="chat")
        good = {"sub": "a", "iss": "https://auth.example", "aud": ["chat", "other"]}
        self.assertEqual(auth.authenticate({}, {"token": hs256(good)})[0], "a")
        self.assertIn("issuer", self.refused(auth, hs256({**good, "iss": "https://evil"})))
        self.assertIn("audience", self.refused(auth, hs256({**good, "aud": "mail"})))
        self.assertIn("'iss'", self.refused(auth, hs256({"sub": "a", "aud": "chat"})))
        self.assertIn("'aud'", self.refused(auth, hs256({"sub": "a", "iss": good["iss"]})))

    def test_uid_claim(self) -> None:
        """
        The uid comes from the configured claim; an integer is taken as its
        decimal string; a missing or unusable one is refused.
        """
        auth = self.authenticator(uid_claim="user_id")
        self.assertEqual(auth.authenticate({}, {"token": hs256({"user_id": 42})})[0], "42")
        self.assertIn("'user_id'", self.refused(auth, hs256({"sub": "alice"})))
        self.assertIn("1 to 256", self.refused(auth, hs256({"user_id": ""})))
        self.assertIn("1 to 256", self.refused(auth, hs256({"user_id": ["a"]})))

    def test_bad_tokens(self) -> None:
        """
        A wrong signature, a malformed token and an unsigned token are
        refused, with reasons that never contain the token.
        """
        auth = self.authenticator()
        self.assertIn("signature", self.refused(auth, hs256({"sub": "a"}, "t" * 40)))
        self.assertIn("malformed", self.refused(auth, "not.a.jwt"))
        unsigned = jwt.encode({"sub": "a"}, None, algorithm="none")
        self.assertIn("algorithm", self.refused(auth, unsigned))

    def test_anonymous(self) -> None:
        """
        Without a token a client is refused unless anonymous clients are
        allowed; a bad token is refused either way.
        """
        self.assertIn("required", str(self.assertRaises(
            AuthenticationFailed, self.authenticator().authenticate, {}, {}
        )))
        open_auth = self.authenticator(allow_anonymous=True)
        self.assertEqual(open_auth.authenticate({}, {}), (None, {}))
        self.refused(open_auth, hs256({"sub": "a"}, "t" * 40))

    def test_rs256_and_es256(self) -> None:
        """
        A public key file selects RS256 (RSA) or ES256 (EC P-256); a token
        signed with another key, or an HS256 token made with the public key
        as secret (algorithm confusion), is refused.
        """
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        for key, algorithm in ((rsa_key, "RS256"), (ec_key, "ES256")):
            path = pem_file(self, key)
            auth = parse(["--jwt-public-key", path])["edge-settings"].authenticator
            self.assertEqual(auth.algorithms, [algorithm])
            token = jwt.encode({"sub": "carol"}, key, algorithm=algorithm)
            self.assertEqual(auth.authenticate({}, {"token": token})[0], "carol")
            other = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256" else (
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
            )
            self.refused(auth, jwt.encode({"sub": "carol"}, other, algorithm=algorithm))
            self.refused(auth, hs256({"sub": "carol"}, "x" * 40))


class OptionTests(SynchronousTestCase):
    def error(self, args: list[str]) -> str:
        with self.assertRaises(SystemExit) as raised:
            parse(args)
        message = str(raised.exception.code)
        self.assertTrue(message.startswith("wsfabric: error: "), message)
        return message

    def test_no_key_no_authenticator(self) -> None:
        """
        Without a key, clients are anonymous as before (no authenticator).
        """
        self.patch(os, "environ", {})
        self.assertIsNone(parse([])["edge-settings"].authenticator)

    def test_secret_sources(self) -> None:
        """
        The secret comes from --jwt-secret, --jwt-secret-file or the
        environment; the other --jwt-* options are passed on.
        """
        self.patch(os, "environ", {SECRET_VARIABLE: SECRET})
        auth = parse(["--jwt-issuer", "me", "--jwt-uid-claim", "uid", "--allow-anonymous"])[
            "edge-settings"
        ].authenticator
        self.assertEqual((auth.issuer, auth.uid_claim, auth.allow_anonymous), ("me", "uid", True))
        self.assertEqual(auth.authenticate({}, {"token": hs256({"uid": "u", "iss": "me"})})[0], "u")
        fd, path = tempfile.mkstemp()
        os.write(fd, b"f" * 40 + b"\n")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        auth = parse(["--jwt-secret-file", path])["edge-settings"].authenticator
        self.assertEqual(auth.authenticate({}, {"token": hs256({"sub": "u"}, "f" * 40)})[0], "u")
        self.assertFalse(auth.allow_anonymous)

    def test_errors(self) -> None:
        """
        Conflicting, short, unreadable or wrong keys are one-line errors.
        """
        self.assertIn("only one of", self.error(["--jwt-secret", SECRET, "--jwt-public-key", "k"]))
        self.assertIn("at least 32 bytes", self.error(["--jwt-secret", "short"]))
        self.assertIn("No such file", self.error(["--jwt-public-key", "/nonexistent.pem"]))
        fd, path = tempfile.mkstemp()
        os.write(fd, b"not a key")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        self.assertIn("not a PEM public key", self.error(["--jwt-public-key", path]))
        self.assertIn("cannot import", self.error(["--authenticator", "no.such.module:X"]))
        self.assertIn(
            "does not provide IAuthenticator",
            self.error(["--authenticator", "tests.unit.test_auth:NotAnAuthenticator"]),
        )

    def test_custom_authenticator(self) -> None:
        """
        --authenticator module:Name builds the custom authenticator.
        """
        auth = parse(["--authenticator", "tests.unit.test_auth:HeaderAuthenticator"])[
            "edge-settings"
        ].authenticator
        self.assertIsInstance(auth, HeaderAuthenticator)


class EdgeTests(SynchronousTestCase):
    def edge(self, app: Any = RecordingApp, **options: Any) -> EdgeHarness:
        """
        A harness whose tokens are checked against its own clock, set to NOW.
        """
        harness: list[EdgeHarness] = []

        class HarnessClock:
            def seconds(self) -> float:
                return harness[0].clock.seconds()

        auth = options.pop("authenticator", None) or JWTAuthenticator(
            SECRET.encode(), ["HS256"], HarnessClock(), **options  # type: ignore[arg-type]
        )
        edge = EdgeHarness(self, app_factory=app, authenticator=auth)
        harness.append(edge)
        edge.clock.advance(NOW)
        return edge

    def handshake(self, edge: EdgeHarness, extra: bytes) -> bytes:
        server = edge.edge.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(
            b"GET /ws" + extra + b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        return transport.value()

    def test_401_json_body(self) -> None:
        """
        A refused client gets HTTP 401 with a JSON body naming the reason,
        and never reaches the application.
        """
        edge = self.edge()
        expired = hs256({"sub": "a", "exp": NOW - 1})
        response = self.handshake(
            edge,
            b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Authorization: Bearer " + expired.encode(),
        )
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(
            json.loads(body),
            {"error": {"code": "unauthorized", "message": "the token has expired"}},
        )
        self.assertNotIn(expired.encode(), response)
        self.assertEqual(edge.app.events, [])
        self.assertEqual(edge.metrics.drops["unauthorized"], 1)
        no_token = self.handshake(
            edge, b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
        )
        self.assertIn(b'"a token is required"', no_token)

    def test_uid_bound_before_on_connect(self) -> None:
        """
        The token's uid is bound before on_connect runs (queries see it);
        the request carries uid and claims but not the token.
        """
        edge = self.edge(QueryingApp)
        token = hs256({"sub": "alice", "room": "lobby"})
        client, server = edge.connect(f"ws://127.0.0.1:8080/ws?token={token}&x=1")
        self.assertTrue(client.opened)
        self.assertEqual(edge.app.uid_seen, ["alice"])
        request = edge.app.events[0][2]
        self.assertEqual(
            (request.uid, request.claims), ("alice", {"sub": "alice", "room": "lobby"})
        )
        self.assertEqual(request.params, {"x": "1"})
        header_client, _ = edge.connect(headers={"Authorization": f"Bearer {token}"})
        self.assertTrue(header_client.opened)
        self.assertNotIn("authorization", edge.app.events[-1][2].headers)
        ids = self.successResultOf(edge.fabric.get_client_ids_by_uid("alice"))
        self.assertEqual(len(ids), 2)
        self.assertIn(server.client_id, ids)

    def test_async_custom_authenticator(self) -> None:
        """
        A custom authenticator may answer with a Deferred; the handshake
        waits for it.
        """
        auth = HeaderAuthenticator()
        edge = self.edge(authenticator=auth)
        client, _ = edge.connect(headers={"x-user": "later"})
        self.assertFalse(client.opened)
        auth.pending[0].callback(("dave", {"k": 1}))
        edge.flush()
        self.assertTrue(client.opened)
        self.assertEqual(edge.app.events[0][2].uid, "dave")
        refused, _ = edge.connect()
        self.assertFalse(refused.opened)

    def test_expiry_closes_4401(self) -> None:
        """
        A connection is closed with 4401 when its token expires; the
        application hears on_close.
        """
        edge = self.edge()
        client, server = edge.connect(f"ws://h/ws?token={hs256({'sub': 'a', 'exp': NOW + 30})}")
        edge.clock.advance(29)
        edge.flush()
        self.assertIsNone(client.close_code)
        edge.clock.advance(1)
        edge.flush()
        self.assertEqual(client.close_info[1:], (CLOSE_TOKEN_EXPIRED, "token expired"))
        self.assertEqual(edge.app.kinds(server.client_id), ["connect", "close"])
        self.assertEqual(edge.metrics.drops["token_expired"], 1)

    def test_refresh(self) -> None:
        """
        A refresh message with a new token for the same uid moves the
        expiry; it never reaches the application. A refresh for another uid,
        an invalid one or a malformed one gets an error and changes nothing.
        """
        edge = self.edge()
        client, server = edge.connect(f"ws://h/ws?token={hs256({'sub': 'a', 'exp': NOW + 30})}")

        def send(envelope: Any) -> None:
            client.sendMessage(json.dumps(envelope).encode(), isBinary=False)
            edge.flush()

        send({"route": "wsfabric.refresh", "id": 1,
              "data": {"token": hs256({"sub": "a", "exp": NOW + 90})}})
        send({"route": "wsfabric.refresh", "id": 2,
              "data": {"token": hs256({"sub": "b", "exp": NOW + 900})}})
        send({"route": "wsfabric.refresh", "id": 3, "data": {"token": "junk"}})
        send({"route": "wsfabric.refresh", "data": {}})
        send({"route": "chat.send", "data": "wsfabric.refresh"})
        replies = [json.loads(m) for m in client.messages]
        self.assertEqual(replies[0], {"id": 1, "data": {"exp": NOW + 90}})
        self.assertEqual(replies[1]["error"]["code"], "unauthorized")
        self.assertIn("another uid", replies[1]["error"]["message"])
        self.assertEqual(replies[2]["error"], {"code": "unauthorized",
                                               "message": "the token is malformed"})
        self.assertEqual(replies[3]["route"], "wsfabric.refresh")
        self.assertEqual(replies[3]["error"]["code"], "bad_request")
        # Only the message that is not a refresh reached the application.
        self.assertEqual(edge.app.kinds(server.client_id)[1:],
                         ['{"route": "chat.send", "data": "wsfabric.refresh"}'])
        edge.clock.advance(60)
        edge.flush()
        self.assertIsNone(client.close_code)
        edge.clock.advance(30)
        edge.flush()
        self.assertEqual(client.close_code, CLOSE_TOKEN_EXPIRED)

    def test_no_refresh_interception_without_auth(self) -> None:
        """
        Without an authenticator, a refresh-looking message is the
        application's.
        """
        edge = EdgeHarness(self)
        client, server = edge.connect()
        client.sendMessage(b'{"route": "wsfabric.refresh", "data": {"token": "t"}}', False)
        edge.flush()
        self.assertEqual(len(edge.app.kinds(server.client_id)), 2)

    def test_no_token_in_logs(self) -> None:
        """
        No log event of a refused or of an accepted session, including a
        refresh, contains the token.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        edge = self.edge()
        tokens = [
            hs256({"sub": "a", "exp": NOW - 5}),
            hs256({"sub": "a", "exp": NOW + 5}),
            hs256({"sub": "a", "exp": NOW + 50}),
            hs256({"sub": "a"}, "w" * 40),
        ]
        edge.connect(f"ws://h/ws?token={tokens[0]}")
        client, _ = edge.connect(headers={"authorization": f"Bearer {tokens[1]}"})
        client.sendMessage(json.dumps({"route": "wsfabric.refresh", "id": 1,
                                       "data": {"token": tokens[2]}}).encode(), False)
        client.sendMessage(json.dumps({"route": "wsfabric.refresh", "id": 2,
                                       "data": {"token": tokens[3]}}).encode(), False)
        edge.flush()
        edge.clock.advance(60)
        edge.flush()
        self.assertEqual(client.close_code, CLOSE_TOKEN_EXPIRED)
        self.assertTrue(events)
        for event in events:
            text = formatEvent(event) + repr(event)
            for token in tokens:
                self.assertNotIn(token, text)
                self.assertNotIn(token.split(".")[2], text)


class GateBindingTests(SynchronousTestCase):
    def test_request_uid_is_bound(self) -> None:
        """
        Any transport that sets ``request.uid`` gets the uid bound before
        on_connect, and released on close.
        """
        from wsfabric.testing import StandaloneHarness

        harness = StandaloneHarness(QueryingApp)
        client = harness.connect(uid="erin")
        self.assertEqual(harness.app.uid_seen, ["erin"])
        self.assertTrue(self.successResultOf(harness.fabric.is_uid_online("erin")))
        client.disconnect()
        self.assertFalse(self.successResultOf(harness.fabric.is_uid_online("erin")))
