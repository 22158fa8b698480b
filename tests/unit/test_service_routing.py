"""
Named-service routing at the gate, in memory: one gate and backends of
several services (``default``, ``chat``, ``game``) joined by iosim, every
timer on a Clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_amp import SECRET, Backend, ClusterInMemory
from wsfabric.cluster.memory import MemoryBus, MemoryIndex
from wsfabric.errors import Reject
from wsfabric.gate.backends import route_service
from wsfabric.message import ConnectRequest
from wsfabric.routing.codec import JSON_CODEC, PROTO_CODEC
from wsfabric.testing import RecordingConnection


class ServiceBackend(Backend):
    """
    An in-memory backend of ``service``.
    """

    def __init__(
        self,
        index: MemoryIndex,
        bus: MemoryBus,
        clock: Any,
        service: str,
        name: str,
        client_events: bool = False,
    ) -> None:
        super().__init__(index, bus, clock, SECRET, name)
        self.context.service = service
        self.context.client_events = client_events


class _NeverEndpoint:
    """
    A client endpoint whose connection attempts never finish: a backend the
    registry lists but the gate cannot reach (yet).
    """

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


class Services(ClusterInMemory):
    """
    A gate and backends of named services.
    """

    def add(
        self, service: str, name: str, client_events: bool = False, key: str | None = None
    ) -> ServiceBackend:
        backend = ServiceBackend(
            self.index, self.bus, self.clock, service, name, client_events
        )
        if key is not None:
            # Registered (as the registry would list it), then linked.
            self.pool.add(key, _NeverEndpoint(), service)  # type: ignore[arg-type]
        client, _ = self.link(backend)
        backend.link = client  # type: ignore[attr-defined]
        return backend

    def kill(self, backend: ServiceBackend) -> None:
        backend.link.transport.loseConnection()  # type: ignore[attr-defined]
        self.flush()

    def connect_with(self, subprotocol: str | None = None) -> tuple[str, RecordingConnection]:
        return self.connect(subprotocol=subprotocol)


def request(route: Any, id: int | None = 1, data: Any = None) -> str:
    envelope: dict[str, Any] = {"route": route}
    if id is not None:
        envelope["id"] = id
    if data is not None:
        envelope["data"] = data
    return json.dumps(envelope)


def messages(backend: Backend, client_id: str) -> list[Any]:
    return [kind for kind in backend.app.kinds(client_id) if kind not in ("connect", "close")]


class RouteServiceTests(SynchronousTestCase):
    def test_prefix(self) -> None:
        """
        The service is the text before the first dot of a route name.
        """
        self.assertEqual(route_service("chat.send"), "chat")
        self.assertEqual(route_service("chat.room.send"), "chat")
        self.assertIsNone(route_service("send"))
        self.assertIsNone(route_service(".send"))
        self.assertIsNone(route_service(7))


class RoutingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Services()
        self.default = self.cluster.add("default", "d1")
        self.chat = self.cluster.add("chat", "c1")

    def test_messages_go_to_the_named_service(self) -> None:
        """
        A routed message whose prefix names a registered service goes to it;
        raw messages, unknown prefixes, names without a dot, route codes and
        malformed envelopes go to ``default``.
        """
        client_id, _ = self.cluster.connect()
        to_chat = [request("chat.send"), request("chat.room.join", None, {"a": "b.c"})]
        to_default = [
            "hello", "a.b", request("lobby.queue"), request("send"), request(7, 1, "x.y"),
            '{"route": "chat.send", "id": "one"}', "{not json.",
        ]
        for message in to_chat + to_default:
            self.cluster.gate.client_message(client_id, message)
        self.cluster.flush()
        self.assertEqual(messages(self.chat, client_id), to_chat)
        self.assertEqual(messages(self.default, client_id), to_default)
        self.assertEqual(self.default.app.kinds(client_id)[0], "connect")
        # chat did not ask for client events.
        self.assertNotIn("connect", self.chat.app.kinds(client_id))

    def test_protobuf_envelopes(self) -> None:
        """
        Binary envelopes of a ``wsfabric.proto`` client are routed by their
        route name; route codes go to ``default``.
        """
        client_id, _ = self.cluster.connect_with("wsfabric.proto")
        named = PROTO_CODEC.encode_request("chat.send", 3, {"t": "hi"})
        coded = PROTO_CODEC.encode_request(12, 4, {"t": "x.y"})
        self.cluster.gate.client_message(client_id, named)
        self.cluster.gate.client_message(client_id, coded)
        self.cluster.flush()
        self.assertEqual(messages(self.chat, client_id), [named])
        self.assertEqual(messages(self.default, client_id), [coded])

    def test_escaped_dot_is_routed(self) -> None:
        """
        A JSON escape does not hide a route's dot from the gate.
        """
        client_id, _ = self.cluster.connect()
        message = '{"route": "chat\\u002esend", "id": 1}'
        self.cluster.gate.client_message(client_id, message)
        self.cluster.flush()
        self.assertEqual(messages(self.chat, client_id), [message])

    def test_close_reaches_services_the_client_used(self) -> None:
        """
        A service the client sent messages to hears its close (last), so it
        can forget the client; one it never used does not.
        """
        game = self.cluster.add("game", "g1")
        client_id, _ = self.cluster.connect()
        self.cluster.gate.client_message(client_id, request("chat.send"))
        self.cluster.flush()
        self.cluster.gate.client_closed(client_id)
        self.cluster.flush()
        self.assertEqual(self.chat.app.kinds(client_id), [request("chat.send"), "close"])
        self.assertEqual(self.default.app.kinds(client_id), ["connect", "close"])
        self.assertEqual(game.app.kinds(client_id), [])


class OnlyDefaultTests(SynchronousTestCase):
    def test_messages_are_not_peeked(self) -> None:
        """
        While every backend is of ``default``, messages go to it without
        being looked at, whatever their route.
        """
        cluster = Services()
        default = cluster.add("default", "d1")

        def peek(*args: Any) -> Any:
            raise AssertionError("peeked with only default backends")

        self.patch(cluster.pool, "_peek", peek)
        client_id, _ = cluster.connect()
        cluster.gate.client_message(client_id, request("chat.send"))
        cluster.flush()
        self.assertEqual(messages(default, client_id), [request("chat.send")])


class StickinessTests(SynchronousTestCase):
    def test_sticky_per_client_and_service(self) -> None:
        """
        Each client's messages for a service stay on one backend of it; the
        clients are shared among the service's backends; when that backend
        goes, the client's next messages go to another of the service,
        without the client being disconnected.
        """
        cluster = Services()
        cluster.add("default", "d1")
        first = cluster.add("chat", "c1")
        second = cluster.add("chat", "c2")
        clients = [cluster.connect() for _ in range(20)]
        for client_id, _ in clients:
            for n in range(3):
                cluster.gate.client_message(client_id, request("chat.send", n + 1))
        cluster.flush()
        on_first = []
        for client_id, _ in clients:
            a, b = messages(first, client_id), messages(second, client_id)
            self.assertEqual(sorted([len(a), len(b)]), [0, 3])
            if a:
                on_first.append(client_id)
        self.assertTrue(0 < len(on_first) < 20)

        cluster.kill(first)
        for client_id, _ in clients:
            cluster.gate.client_message(client_id, request("chat.send", 9))
        cluster.flush()
        for client_id, connection in clients:
            self.assertEqual(messages(second, client_id)[-1], request("chat.send", 9))
            self.assertIsNone(connection.close_code)


class UnavailableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Services()
        self.default = self.cluster.add("default", "d1")
        self.chat = self.cluster.add("chat", "c1", key="chat-1")
        self.cluster.kill(self.chat)

    def test_routed_request_gets_service_unavailable(self) -> None:
        """
        A request for a registered service with no live backend is answered
        by the gate with ``service_unavailable``, in the client's codec; a
        notify gets an error naming its route; raw traffic still reaches
        ``default``.
        """
        client_id, connection = self.cluster.connect_with("wsfabric.json")
        self.cluster.gate.client_message(client_id, request("chat.send", 5))
        self.cluster.gate.client_message(client_id, request("chat.typing", None))
        self.cluster.gate.client_message(client_id, "raw")
        self.cluster.flush()
        first, second = (JSON_CODEC.decode_outbound(m) for m in connection.received)
        self.assertEqual((first.kind, first.id, first.error.code),  # type: ignore[union-attr]
                         ("error", 5, "service_unavailable"))
        self.assertEqual((second.kind, second.route, second.error.code),  # type: ignore[union-attr]
                         ("error", "chat.typing", "service_unavailable"))
        self.assertEqual(messages(self.default, client_id), ["raw"])
        self.assertEqual(self.cluster.metrics.drops["service_unavailable"], 2)
        self.assertIsNone(connection.close_code)

    def test_protobuf_client(self) -> None:
        """
        A protobuf client gets the error as a binary envelope.
        """
        client_id, connection = self.cluster.connect_with("wsfabric.proto")
        self.cluster.gate.client_message(
            client_id, PROTO_CODEC.encode_request("chat.send", 8, {"x": 1})
        )
        self.cluster.flush()
        [reply] = connection.received
        outbound = PROTO_CODEC.decode_outbound(reply)
        self.assertEqual((outbound.id, outbound.error.code),  # type: ignore[union-attr]
                         (8, "service_unavailable"))

    def test_back_when_a_backend_returns(self) -> None:
        """
        Once a backend of the service is back, its messages reach it.
        """
        client_id, connection = self.cluster.connect()
        back = self.cluster.add("chat", "c2")
        self.cluster.gate.client_message(client_id, request("chat.send"))
        self.cluster.flush()
        self.assertEqual(messages(back, client_id), [request("chat.send")])
        self.assertEqual(connection.received, [])

    def test_forgotten_service_goes_to_default(self) -> None:
        """
        Once the registry no longer lists any backend of the service, its
        prefix is not claimed: the message goes to ``default``.
        """
        self.cluster.pool.remove("chat-1")
        client_id, _ = self.cluster.connect()
        self.cluster.gate.client_message(client_id, request("chat.send"))
        self.cluster.flush()
        self.assertEqual(messages(self.default, client_id), [request("chat.send")])


class ClientEventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Services()
        self.default = self.cluster.add("default", "d1")
        self.chat = self.cluster.add("chat", "c1", client_events=True)
        self.game = self.cluster.add("game", "g1")

    def test_events_fan_out_in_order(self) -> None:
        """
        Connect and close reach ``default`` and the services that asked for
        them, in order with the client's messages, close last.
        """
        client_id, _ = self.cluster.connect()
        self.cluster.gate.client_message(client_id, request("chat.send"))
        self.cluster.gate.client_message(client_id, "raw")
        self.cluster.gate.client_closed(client_id)
        self.cluster.flush()
        self.assertEqual(self.default.app.kinds(client_id), ["connect", "raw", "close"])
        self.assertEqual(self.chat.app.kinds(client_id),
                         ["connect", request("chat.send"), "close"])
        self.assertEqual(self.game.app.kinds(client_id), [])

    def test_rejected_client_reaches_no_service(self) -> None:
        """
        A client that ``default`` refuses is never announced to other
        services.
        """
        self.default.app.reject = Reject(4001, "no")
        client_id, connection = self.cluster.connect()
        self.assertEqual(connection.close_code, 4001)
        self.assertEqual(self.chat.app.kinds(client_id), [])

    def test_other_services_cannot_refuse(self) -> None:
        """
        A rejection by a service other than ``default`` is ignored (and
        logged): only ``default`` decides who connects.
        """
        self.chat.app.reject = Reject(4001, "no")
        client_id, connection = self.cluster.connect()
        self.assertIsNone(connection.close_code)
        self.assertEqual(self.chat.app.kinds(client_id), ["connect"])
        self.flushLoggedErrors()


class NoDefaultTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Services()
        self.chat = self.cluster.add("chat", "c1", client_events=True, key="chat-1")

    def test_clients_connect_without_default(self) -> None:
        """
        With no ``default`` backend registered, clients are accepted (and
        announced to the services that want events); raw messages are
        dropped and counted; routed ones for no service get
        ``service_unavailable``.
        """
        client_id, connection = self.cluster.connect()
        self.assertIsNone(connection.close_code)
        self.cluster.gate.client_message(client_id, "raw")
        self.cluster.gate.client_message(client_id, request("lobby.queue", 2))
        self.cluster.gate.client_message(client_id, request("chat.send", 3))
        self.cluster.flush()
        self.assertEqual(self.cluster.metrics.drops["no_backend"], 1)
        [error] = connection.received
        outbound = JSON_CODEC.decode_outbound(error)
        self.assertEqual((outbound.id, outbound.error.code),  # type: ignore[union-attr]
                         (2, "service_unavailable"))
        self.assertEqual(self.chat.app.kinds(client_id), ["connect", request("chat.send", 3)])

    def test_waiting_clients_go_on_when_default_leaves(self) -> None:
        """
        Clients waiting for a registered ``default`` backend that never
        comes go on without one once the registry drops it.
        """
        self.cluster.pool.add("default-1", _NeverEndpoint(), "default")  # type: ignore[arg-type]
        connection = RecordingConnection()
        client_id = self.cluster.gate.client_opened(connection, ConnectRequest(peer="x"))
        self.cluster.flush()
        self.assertEqual(self.chat.app.kinds(client_id), [])
        self.cluster.pool.remove("default-1")
        self.cluster.flush()
        self.assertEqual(self.chat.app.kinds(client_id), ["connect"])
        self.assertIsNone(connection.close_code)

    def test_waiting_clients_reach_default_when_it_comes(self) -> None:
        """
        While a registered ``default`` backend is not connected yet, clients
        wait for it; the services that want events hear of them after it
        accepted them.
        """
        self.cluster.pool.add("default-1", _NeverEndpoint(), "default")  # type: ignore[arg-type]
        client_id, _ = self.cluster.connect()
        self.assertEqual(self.chat.app.kinds(client_id), [])
        default = self.cluster.add("default", "d1")
        self.assertEqual(default.app.kinds(client_id), ["connect"])
        self.assertEqual(self.chat.app.kinds(client_id), ["connect"])
