"""
Routed messages: the two codecs, the Router (dispatch, errors, results,
hooks, route compression) and pushes to clients of mixed codecs carried as
one :class:`~wsfabric.message.Variants` message, in standalone mode and
through an in-memory cluster of two gates and a backend.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from wsfabric.backend.amp import BackendContext, BackendServerFactory
from wsfabric.backend.dispatcher import Dispatcher
from wsfabric.cluster.memory import MemoryBus, MemoryIndex
from wsfabric.commands import DeliveryBatch, decode_deliveries
from wsfabric.errors import BadEnvelope, InvalidArgument, Reject, RouteError
from wsfabric.fabric import Fabric
from wsfabric.gate.backends import BackendConnection, BackendPool, LinkSettings
from wsfabric.gate.gate import Gate
from wsfabric.ids import new_gate_id
from wsfabric.message import (
    ConnectRequest,
    SharedVariants,
    Variants,
    decode_fanout,
    encode_fanout,
    variant_of,
)
from wsfabric.metrics import Metrics
from wsfabric.routing import JSON_CODEC, PROTO_CODEC, Router, route
from wsfabric.routing.codec import MAX_ID, ErrorInfo, Outbound
from wsfabric.routing.envelope_pb2 import Envelope
from wsfabric.testing import RecordingConnection, StandaloneHarness


def _message_types() -> tuple[Any, Any]:
    """
    Two protobuf message types for the tests, built at run time (a test
    needs no generated module): ``Move {int32 x; int32 y; string who}`` and
    ``MoveReply {bool ok; int32 turn; int64 big}``.
    """
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="wsfabric_tests_routing.proto", package="wsfabric_tests", syntax="proto3"
    )
    move = proto.message_type.add(name="Move")
    move.field.add(name="x", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    move.field.add(name="y", number=2, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    move.field.add(name="who", number=3, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    reply = proto.message_type.add(name="MoveReply")
    reply.field.add(name="ok", number=1, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    reply.field.add(name="turn", number=2, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    reply.field.add(name="big", number=3, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("wsfabric_tests.Move")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("wsfabric_tests.MoveReply")),
    )


Move, MoveReply = _message_types()


class GameApp(Router):
    """
    A router with one route of each kind the tests need.
    """

    def __init__(self, fabric: Any, compress_routes: bool = False) -> None:
        super().__init__(fabric, compress_routes=compress_routes)
        self.declare_push("game.state")
        self.connected: list[str] = []
        self.closed: list[str] = []
        self.notified: list[Any] = []
        self.held: list[Deferred[Any]] = []
        self.reject = False

    @route("echo")
    def echo(self, client_id: str, data: Any) -> Any:
        return data

    @route("notify.me")
    def notify_me(self, client_id: str, data: Any) -> None:
        self.notified.append(data)

    @route("game.move", request=Move)
    def move(self, client_id: str, move: Any) -> Any:
        return MoveReply(ok=move.x >= 0, turn=move.x + move.y, big=2**40)

    @route("async.echo")
    async def async_echo(self, client_id: str, data: Any) -> Any:
        await succeed(None)
        return {"async": data}

    @route("hold")
    def hold(self, client_id: str, data: Any) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        self.held.append(waiter)
        return waiter

    @route("deny")
    def deny(self, client_id: str, data: Any) -> None:
        raise RouteError("not_allowed", "you may not")

    @route("boom")
    def boom(self, client_id: str, data: Any) -> None:
        raise ZeroDivisionError("boom")

    @route("bad.result")
    def bad_result(self, client_id: str, data: Any) -> Any:
        return {"n": float("nan")}

    @route("join")
    def join(self, client_id: str, data: Any) -> Deferred[None]:
        return self.fabric.join_group(client_id, data)

    @route("shout")
    def shout(self, client_id: str, data: Any) -> Deferred[None]:
        return self.push_to_group(data["group"], "game.state", data["state"])

    def on_client_connect(self, client_id: str, request: ConnectRequest) -> None:
        if self.reject:
            raise Reject(4003, "go away")
        self.connected.append(client_id)

    def on_client_close(self, client_id: str) -> None:
        self.closed.append(client_id)


class CompressedGameApp(GameApp):
    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric, compress_routes=True)


def request(route_name: Any, id: int | None, data: Any = None) -> str:
    envelope: dict[str, Any] = {"route": route_name, "data": data}
    if id is not None:
        envelope["id"] = id
    return json.dumps(envelope)


def envelope_with(data: str) -> str:
    """
    :return: a JSON notify of route ``a`` whose data is the JSON text ``data``.
    """
    return '{"route": "a", "data": ' + data + "}"


# -- codecs -----------------------------------------------------------------------------


class JsonCodecTests(SynchronousTestCase):
    codec = JSON_CODEC

    def assertBad(self, message: Any, id: int | None = None, route: Any = None) -> BadEnvelope:
        error = self.assertRaises(BadEnvelope, self.codec.decode_inbound, message)
        self.assertEqual(error.code, "bad_request")
        self.assertEqual((error.id, error.route), (id, route))
        return error

    def test_request_and_notify(self) -> None:
        """
        A request has its id; a notify has none; data defaults to None.
        """
        inbound = self.codec.decode_inbound('{"route": "a.b", "id": 7, "data": [1]}')
        self.assertEqual((inbound.route, inbound.id, inbound.data), ("a.b", 7, [1]))
        inbound = self.codec.decode_inbound('{"route": "a.b", "id": null}')
        self.assertEqual((inbound.route, inbound.id, inbound.data), ("a.b", None, None))
        self.assertEqual(self.codec.decode_inbound(b'{"route": 3}').route, 3)

    def test_malformed(self) -> None:
        """
        Everything malformed is a bad_request, with the id and route that
        could be read.
        """
        self.assertBad("nope")
        self.assertBad(b"\xff\xfe")
        self.assertBad("[1, 2]")
        self.assertBad('"route"')
        self.assertBad("{}")
        self.assertBad('{"route": ""}')
        self.assertBad('{"route": "' + "r" * 256 + '"}')
        self.assertBad('{"route": 1.5}')
        self.assertBad('{"route": true}')
        self.assertBad('{"route": 0}')
        self.assertBad('{"route": 4294967296}')
        self.assertBad('{"route": ["a"], "id": 3}', id=3)
        self.assertBad('{"id": 3}', id=3)
        self.assertBad('{"route": "a", "id": "3"}', route="a")
        self.assertBad('{"route": "a", "id": 3.0}', route="a")
        self.assertBad('{"route": "a", "id": true}', route="a")
        self.assertBad('{"route": "a", "id": 0}', route="a")
        self.assertBad('{"route": "a", "id": -1}', route="a")
        self.assertBad('{"route": "a", "id": ' + str(MAX_ID + 1) + "}", route="a")
        self.assertBad('{"route": "' + "r" * 300 + '", "id": -1}')
        self.assertBad('{"route": "a", "data": NaN}')
        self.assertBad('{"route": "a", "data": 1e999999}'.replace("1e999999", "Infinity"))
        self.assertBad('{"route": "a", "data": 1' + "0" * 5000 + "}")

    def test_depth(self) -> None:
        """
        Nesting up to 64 levels is accepted; deeper is refused, however deep,
        and so is an unclosed flood of brackets.
        """
        ok = "[" * 63 + "]" * 63
        self.assertEqual(self.codec.decode_inbound(envelope_with(ok)).route, "a")
        for depth in (64, 65, 1000, 100000):
            data = "[" * depth + "]" * depth
            self.assertBad(envelope_with(data))
        self.assertBad("[" * 200000)
        self.assertBad('{"route": "a", "data": ' + '{"k":' * 100 + "1" + "}" * 101)
        # Many brackets, shallow: fine.
        wide = "[" + ",".join(["[]"] * 1000) + "]"
        self.assertEqual(self.codec.decode_inbound(envelope_with(wide)).route, "a")

    def test_server_messages(self) -> None:
        """
        Responses, errors and pushes have the shapes of the wire protocol,
        and the client side reads them back.
        """
        codec = self.codec
        self.assertEqual(json.loads(codec.encode_response(7, {"a": 1})),
                         {"id": 7, "data": {"a": 1}})
        self.assertEqual(
            json.loads(codec.encode_error(7, "r", "not_found", "no")),
            {"id": 7, "error": {"code": "not_found", "message": "no"}},
        )
        self.assertEqual(
            json.loads(codec.encode_error(None, "r", "x", "y")),
            {"route": "r", "error": {"code": "x", "message": "y"}},
        )
        self.assertEqual(json.loads(codec.encode_error(None, None, "x", "y")),
                         {"error": {"code": "x", "message": "y"}})
        self.assertEqual(json.loads(codec.encode_push("p", [1])), {"route": "p", "data": [1]})
        self.assertEqual(json.loads(codec.encode_push("p", None, 4)), {"route": 4, "data": None})
        self.assertEqual(codec.decode_outbound(codec.encode_response(7, [1])),
                         Outbound("response", 7, None, [1]))
        self.assertEqual(codec.decode_outbound(codec.encode_error(7, "r", "x", "y")),
                         Outbound("error", 7, None, None, ErrorInfo("x", "y")))
        self.assertEqual(codec.decode_outbound(codec.encode_error(None, "r", "x", "y")),
                         Outbound("error", None, "r", None, ErrorInfo("x", "y")))
        self.assertEqual(codec.decode_outbound(codec.encode_push("p", 1, 9)),
                         Outbound("push", None, 9, 1))
        table = codec.decode_outbound(codec.encode_route_table({"a": 1, "b": 2}))
        self.assertEqual(table.route, "wsfabric.routes")
        self.assertEqual(codec.decode_route_table(table.data), {"a": 1, "b": 2})

    def test_client_requests(self) -> None:
        """
        encode_request writes what decode_inbound reads; bad routes and ids
        are refused on the way out.
        """
        codec = self.codec
        for route_name, id, data in [("a", 1, {"x": [1]}), (5, None, None), ("b", MAX_ID, "s")]:
            inbound = codec.decode_inbound(codec.encode_request(route_name, id, data))
            self.assertEqual((inbound.route, inbound.id, inbound.data), (route_name, id, data))
        self.assertRaises(InvalidArgument, codec.encode_request, "", 1)
        self.assertRaises(InvalidArgument, codec.encode_request, "a", 0)
        self.assertRaises(InvalidArgument, codec.encode_request, "a", MAX_ID + 1)

    def test_protobuf_data(self) -> None:
        """
        A protobuf message travels as its JSON mapping, every field present;
        JSON data is parsed into a declared type, strictly.
        """
        encoded = json.loads(self.codec.encode_response(1, MoveReply(ok=True)))
        self.assertEqual(encoded["data"], {"ok": True, "turn": 0, "big": "0"})
        move = self.codec.decode_data({"x": 1, "who": "ann"}, Move)
        self.assertEqual((move.x, move.y, move.who), (1, 0, "ann"))
        self.assertEqual(self.codec.decode_data(None, Move), Move())
        for bad in ([1], "x", {"nope": 1}, {"x": "one"}, {"x": 2**40}):
            self.assertRaises(BadEnvelope, self.codec.decode_data, bad, Move)

    def test_unencodable(self) -> None:
        """
        Data JSON cannot carry is refused with InvalidArgument.
        """
        for data in (b"raw", float("nan"), {1j: 2}, object()):
            self.assertRaises(InvalidArgument, self.codec.encode_response, 1, data)
            self.assertRaises(InvalidArgument, self.codec.encode_push, "p", data)

    def test_lone_surrogate(self) -> None:
        """
        A lone surrogate a client sent comes back escaped, as text UTF-8 can
        carry.
        """
        inbound = self.codec.decode_inbound('{"route": "a", "id": 1, "data": "\\ud800"}')
        response = self.codec.encode_response(1, inbound.data)
        response.encode("utf-8")
        self.assertEqual(json.loads(response)["data"], "\ud800")


class ProtoCodecTests(SynchronousTestCase):
    codec = PROTO_CODEC

    def assertBad(self, message: Any, id: int | None = None, route: Any = None) -> None:
        error = self.assertRaises(BadEnvelope, self.codec.decode_inbound, message)
        self.assertEqual(error.code, "bad_request")
        self.assertEqual((error.id, error.route), (id, route))

    def test_request_and_notify(self) -> None:
        """
        id 0 is a notify; route_id is a route code.
        """
        envelope = Envelope(route="a", id=3, data=b"x").SerializeToString()
        inbound = self.codec.decode_inbound(envelope)
        self.assertEqual((inbound.route, inbound.id, inbound.data), ("a", 3, b"x"))
        inbound = self.codec.decode_inbound(Envelope(route_id=2).SerializeToString())
        self.assertEqual((inbound.route, inbound.id, inbound.data), (2, None, b""))

    def test_malformed(self) -> None:
        """
        Text, garbage, truncation, a missing route, both routes, a huge id.
        """
        good = Envelope(route="abc", id=3, data=b"12345").SerializeToString()
        self.assertBad("text")
        self.assertBad(b"\xff\xff\xff")
        self.assertBad(good[:-2])
        self.assertBad(b"")
        self.assertBad(Envelope(id=3).SerializeToString(), id=3)
        self.assertBad(Envelope(route="a", route_id=1).SerializeToString())
        self.assertBad(Envelope(route="a", id=MAX_ID + 1).SerializeToString(), route="a")
        self.assertBad(Envelope(route="r" * 256).SerializeToString())
        # Invalid UTF-8 in the route string.
        self.assertBad(b"\x0a\x02\xff\xfe")

    def test_server_messages(self) -> None:
        """
        Responses, errors and pushes round-trip through the client side.
        """
        codec = self.codec
        self.assertEqual(codec.decode_outbound(codec.encode_response(7, MoveReply(turn=3))),
                         Outbound("response", 7, None, MoveReply(turn=3).SerializeToString()))
        self.assertEqual(codec.decode_outbound(codec.encode_error(7, "r", "x", "y")),
                         Outbound("error", 7, None, None, ErrorInfo("x", "y")))
        self.assertEqual(codec.decode_outbound(codec.encode_error(None, 4, "x", "y")),
                         Outbound("error", None, 4, None, ErrorInfo("x", "y")))
        self.assertEqual(codec.decode_outbound(codec.encode_push("p", b"d", 9)),
                         Outbound("push", None, 9, b"d"))
        self.assertEqual(codec.decode_outbound(codec.encode_push("p", {"a": 1})),
                         Outbound("push", None, "p", b'{"a":1}'))
        table = codec.decode_outbound(codec.encode_route_table({"a": 1, "b": 2}))
        self.assertEqual((table.kind, table.route), ("push", "wsfabric.routes"))
        self.assertEqual(codec.decode_route_table(table.data), {"a": 1, "b": 2})
        self.assertRaises(BadEnvelope, codec.decode_outbound, Envelope().SerializeToString())

    def test_data(self) -> None:
        """
        A declared type is parsed from bytes; without one, data is UTF-8
        JSON (empty for None).
        """
        move = self.codec.decode_data(Move(x=4).SerializeToString(), Move)
        self.assertEqual(move.x, 4)
        self.assertRaises(BadEnvelope, self.codec.decode_data, b"\xff\xff", Move)
        self.assertIsNone(self.codec.decode_data(b""))
        self.assertEqual(self.codec.decode_data(b'{"a": [1]}'), {"a": [1]})
        self.assertRaises(BadEnvelope, self.codec.decode_data, b"{nope")
        self.assertRaises(BadEnvelope, self.codec.decode_data, b"[" * 100 + b"]" * 100)
        self.assertEqual(self.codec.encode_data(None), b"")
        self.assertEqual(self.codec.encode_data(bytearray(b"ab")), b"ab")


# -- the router -----------------------------------------------------------------------


class RouterTestCase(SynchronousTestCase):
    app_factory: Any = GameApp

    def setUp(self) -> None:
        self.harness = StandaloneHarness(self.app_factory)
        self.app: GameApp = self.harness.app  # type: ignore[assignment]

    def json_client(self, **request: Any) -> Any:
        return self.harness.connect(subprotocol="wsfabric.json", **request)

    def proto_client(self, **request: Any) -> Any:
        return self.harness.connect(subprotocol="wsfabric.proto", **request)

    def last(self, client: Any) -> Outbound:
        message = client.received[-1]
        codec = PROTO_CODEC if isinstance(message, bytes) else JSON_CODEC
        return codec.decode_outbound(message)


class DispatchTests(RouterTestCase):
    def test_request_response(self) -> None:
        """
        A request gets its handler's result, under its id.
        """
        client = self.json_client()
        client.send(request("echo", 7, {"a": [1, 2]}))
        self.assertEqual(client.received_json(), [{"id": 7, "data": {"a": [1, 2]}}])

    def test_notify(self) -> None:
        """
        A notify runs its handler and gets no answer.
        """
        client = self.json_client()
        client.send(request("notify.me", None, "hi"))
        self.assertEqual(self.app.notified, ["hi"])
        self.assertEqual(client.received, [])

    def test_coroutine_and_deferred(self) -> None:
        """
        A coroutine's result is the response; a Deferred's too, once it
        fires, and the client's next request waits for it.
        """
        client = self.json_client()
        client.send(request("async.echo", 1, 5))
        self.assertEqual(client.received_json(), [{"id": 1, "data": {"async": 5}}])
        client.send(request("hold", 2))
        client.send(request("echo", 3, "after"))
        self.assertEqual(len(client.received), 1)
        self.app.held[0].callback([9])
        self.assertEqual(client.received_json()[1:], [
            {"id": 2, "data": [9]},
            {"id": 3, "data": "after"},
        ])

    def test_failed_deferred(self) -> None:
        """
        A Deferred that fails with a RouteError answers with its code.
        """
        client = self.json_client()
        client.send(request("hold", 2))
        self.app.held[0].errback(RouteError("late", "too late"))
        self.assertEqual(client.received_json(),
                         [{"id": 2, "error": {"code": "late", "message": "too late"}}])

    def test_errors(self) -> None:
        """
        not_found, bad_request, the code of a RouteError, and internal (the
        traceback logged once); the connection stays open and still works.
        """
        client = self.json_client()
        client.send(request("nope", 1))
        client.send("{broken")
        client.send(request("echo", "x"))
        client.send(request("deny", 2))
        client.send(request("boom", 3))
        client.send(request("bad.result", 4))
        client.send(request("nope", None))
        client.send(request("echo", 5, "alive"))
        received = client.received_json()
        self.assertEqual(received[0], {"id": 1, "error": {"code": "not_found",
                                                          "message": "no route 'nope'"}})
        self.assertEqual(received[1]["error"]["code"], "bad_request")
        self.assertNotIn("id", received[1])
        self.assertEqual(received[2]["route"], "echo")
        self.assertEqual(received[2]["error"]["code"], "bad_request")
        self.assertEqual(received[3], {"id": 2, "error": {"code": "not_allowed",
                                                          "message": "you may not"}})
        self.assertEqual(received[4], {"id": 3, "error": {"code": "internal",
                                                          "message": "internal error"}})
        self.assertEqual(received[5]["error"]["code"], "internal")
        self.assertEqual(received[6], {"route": "nope", "error": {
            "code": "not_found", "message": "no route 'nope'"}})
        self.assertEqual(received[7], {"id": 5, "data": "alive"})
        self.assertIsNone(client.close_code)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(InvalidArgument)), 1)
        # The dispatcher saw no failure: the router answered every one.
        self.assertEqual(self.harness.metrics.hook_errors, 0)

    def test_codec_per_connection(self) -> None:
        """
        A proto client gets binary answers; a client with no subprotocol is
        answered in the codec of each message.
        """
        proto = self.proto_client()
        proto.send(PROTO_CODEC.encode_request("echo", 1, {"a": 1}))
        self.assertEqual(self.last(proto), Outbound("response", 1, None, b'{"a":1}'))
        proto.send('{"route": "echo", "id": 2}')
        self.assertEqual(self.last(proto).error.code, "bad_request")
        plain = self.harness.connect()
        plain.send(request("echo", 1, 2))
        plain.send(PROTO_CODEC.encode_request("echo", 2, 3))
        self.assertEqual(plain.received, ['{"id":1,"data":2}',
                                          PROTO_CODEC.encode_response(2, 3)])

    def test_protobuf_route(self) -> None:
        """
        A route with a declared type takes the message from either codec and
        answers each in its own.
        """
        proto = self.proto_client()
        proto.send(PROTO_CODEC.encode_request("game.move", 1, Move(x=2, y=3)))
        reply = self.last(proto)
        self.assertEqual(PROTO_CODEC.decode_data(reply.data, MoveReply),
                         MoveReply(ok=True, turn=5, big=2**40))
        proto.send(PROTO_CODEC.encode_request("game.move", 2, b"\xff\xff"))
        self.assertEqual(self.last(proto).error.code, "bad_request")
        self.assertEqual(self.last(proto).id, 2)
        js = self.json_client()
        js.send(request("game.move", 1, {"x": 1, "y": 1}))
        self.assertEqual(js.received_json()[-1],
                         {"id": 1, "data": {"ok": True, "turn": 2, "big": str(2**40)}})
        js.send(request("game.move", 2, {"z": 1}))
        self.assertEqual(js.received_json()[-1]["error"]["code"], "bad_request")

    def test_hooks(self) -> None:
        """
        on_client_connect and on_client_close run; a refused client is
        closed with its code and forgotten.
        """
        client = self.json_client()
        self.assertEqual(self.app.connected, [client.client_id])
        client.disconnect()
        self.assertEqual(self.app.closed, [client.client_id])
        self.app.reject = True
        refused = self.proto_client()
        self.assertEqual(refused.close_code, 4003)
        self.assertEqual(self.app._client_codecs, {})


class RegistrationTests(SynchronousTestCase):
    def test_per_instance(self) -> None:
        """
        Handlers belong to the instance: add_route on one leaves another
        alone; a subclass override without @route drops the route.
        """
        one, two = GameApp(None), GameApp(None)
        one.add_route("extra", lambda client_id, data: data)
        self.assertIn("extra", one.routes())
        self.assertNotIn("extra", two.routes())

        class NoEcho(GameApp):
            def echo(self, client_id: str, data: Any) -> Any:
                return None

        self.assertNotIn("echo", NoEcho(None).routes())
        self.assertIn("game.move", NoEcho(None).routes())

    def test_bad_registrations(self) -> None:
        """
        Duplicate, reserved, empty or overlong names and non-message request
        types are refused.
        """
        app = GameApp(None)
        self.assertRaises(InvalidArgument, app.add_route, "echo", print)
        self.assertRaises(InvalidArgument, app.add_route, "wsfabric.x", print)
        self.assertRaises(InvalidArgument, app.add_route, "", print)
        self.assertRaises(InvalidArgument, app.add_route, "r" * 256, print)
        self.assertRaises(InvalidArgument, app.add_route, "x", print, request=dict)
        self.assertRaises(InvalidArgument, app.add_route, "y", "not callable")
        self.assertRaises(InvalidArgument, route, "wsfabric.routes")

    def test_several_marks(self) -> None:
        """
        One method may serve several routes.
        """

        class Two(Router):
            @route("a")
            @route("b")
            def both(self, client_id: str, data: Any) -> Any:
                return data

        self.assertEqual(sorted(Two(None).routes()), ["a", "b"])


class CompressionTests(RouterTestCase):
    app_factory = CompressedGameApp

    def test_table_first(self) -> None:
        """
        A client that asks gets the table first, in its codec; codes are
        assigned in name order over routes and declared pushes.
        """
        client = self.json_client(params={"routes": "1"})
        table = client.received_json()[0]
        self.assertEqual(table["route"], "wsfabric.routes")
        names = sorted(self.app.routes() + ["game.state"])
        self.assertEqual(table["data"], {name: code for code, name in enumerate(names, 1)})
        proto = self.proto_client(params={"routes": "1"})
        outbound = PROTO_CODEC.decode_outbound(proto.received[0])
        self.assertEqual(PROTO_CODEC.decode_route_table(outbound.data), table["data"])
        self.assertEqual(self.harness.connect().received, [])

    def test_codes(self) -> None:
        """
        Integer routes are resolved; pushes use codes only for clients that
        asked; an unknown code is not_found.
        """
        table = self.app.route_table()
        asked = self.json_client(params={"routes": "1"})
        plain = self.json_client()
        proto = self.proto_client(params={"routes": "1"})
        for client in (asked, plain):
            client.send(request("join", None, "g"))
        proto.send(PROTO_CODEC.encode_request(table["join"], None, "g"))
        asked.send(request(table["echo"], 1, "x"))
        self.assertEqual(asked.received_json()[-1], {"id": 1, "data": "x"})
        plain.send(request(9999, 2))
        self.assertEqual(plain.received_json()[-1]["error"]["code"], "not_found")
        plain.send(request("shout", 3, {"group": "g", "state": {"s": 1}}))
        self.assertEqual(asked.received_json()[-1], {"route": table["game.state"],
                                                     "data": {"s": 1}})
        self.assertEqual(plain.received_json()[-2], {"route": "game.state", "data": {"s": 1}})
        self.assertEqual(self.last(proto), Outbound("push", None, table["game.state"],
                                                    b'{"s":1}'))

    def test_no_compression(self) -> None:
        """
        Without compress_routes there is no table, and route codes are
        unknown routes.
        """
        harness = StandaloneHarness(GameApp)
        client = harness.connect(params={"routes": "1"})
        self.assertEqual(client.received, [])
        client.send(request(1, 1))
        self.assertEqual(client.received_json()[-1]["error"]["code"], "not_found")


class PushTests(RouterTestCase):
    def test_mixed_group(self) -> None:
        """
        One push reaches a JSON, a proto and a plain client of a group, each
        in its codec, framed once per form.
        """
        js, proto, plain = self.json_client(), self.proto_client(), self.harness.connect()
        for client in (js, proto, plain):
            self.successResultOf(self.harness.fabric.join_group(client.client_id, "g"))
        self.successResultOf(self.app.push_to_group("g", "news", MoveReply(turn=1)))
        self.assertEqual(js.received, [JSON_CODEC.encode_push("news", MoveReply(turn=1))])
        self.assertEqual(plain.received, js.received)
        self.assertEqual(proto.received, [PROTO_CODEC.encode_push("news", MoveReply(turn=1))])

    def test_targets(self) -> None:
        """
        push_to_client, _clients, _uid, _all (with exclude) reach whom they
        name.
        """
        a, b = self.json_client(), self.proto_client()
        self.successResultOf(self.harness.fabric.bind_uid(b.client_id, "u"))
        self.successResultOf(self.app.push_to_client(a.client_id, "one", 1))
        self.successResultOf(self.app.push_to_clients([a.client_id, b.client_id], "two", 2))
        self.successResultOf(self.app.push_to_uid("u", "three", 3))
        self.successResultOf(self.app.push_to_all("four", 4, exclude=[b.client_id]))
        self.assertEqual([m["route"] for m in a.received_json()], ["one", "two", "four"])
        self.assertEqual([self.last_route(m) for m in b.received], ["two", "three"])

    def last_route(self, message: bytes) -> Any:
        return PROTO_CODEC.decode_outbound(message).route

    def test_bad_push(self) -> None:
        """
        Data the codecs cannot carry fails the push with InvalidArgument.
        """
        a = self.json_client()
        self.failureResultOf(self.app.push_to_client(a.client_id, "x", b"raw"), InvalidArgument)
        self.failureResultOf(self.app.push_to_all("x", float("inf")), InvalidArgument)
        self.failureResultOf(self.app.push_to_all("", 1), InvalidArgument)
        self.assertEqual(a.received, [])


# -- Variants through the fabric ---------------------------------------------------------


class VariantsTests(SynchronousTestCase):
    def test_variant_of(self) -> None:
        """
        The form follows the subprotocol and routes=1.
        """
        self.assertEqual(variant_of(ConnectRequest("p")), 0)
        self.assertEqual(variant_of(ConnectRequest("p", params={"routes": "1"})), 1)
        self.assertEqual(variant_of(ConnectRequest("p", subprotocol="wsfabric.proto")), 2)
        self.assertEqual(variant_of(ConnectRequest("p", subprotocol="wsfabric.proto",
                                                   params={"routes": "1"})), 3)
        self.assertEqual(variant_of(ConnectRequest("p", subprotocol="wsfabric.json",
                                                   params={"routes": "0"})), 0)

    def test_encode(self) -> None:
        """
        Variants survive encoding, the bus payload and a delivery batch, and
        repeated forms stay shared (one framing).
        """
        big = "x" * 200000
        for variants in (Variants("j", b"p"), Variants("j", b"p", "jr", b"pr"),
                         Variants(big, big.encode(), "é", b"")):
            self.assertEqual(Variants.decode(variants.encode()), variants)
            shared, exclude = decode_fanout(encode_fanout(variants, ["a", "b"]))
            self.assertEqual(exclude, {"a", "b"})
            self.assertIsInstance(shared, SharedVariants)
            batch = DeliveryBatch()
            batch.send(["c1", "c2"], variants)
            batch.send(["c3"], "plain")
            self.assertEqual(list(decode_deliveries(batch.encode())),
                             [(["c1", "c2"], variants), (["c3"], "plain")])
        shared = SharedVariants(Variants.decode(Variants("j", b"p").encode())).shared
        self.assertIs(shared[0], shared[1])
        self.assertIs(shared[2], shared[3])
        self.assertIsNot(shared[0], shared[2])

    def test_malformed(self) -> None:
        """
        Malformed variants are a ValueError, which the gate counts and drops.
        """
        good = Variants("j", b"p").encode()
        for bad in (b"", good[:-1], good + b"x", b"\x02\x00\x00\x00\x00" * 4,
                    b"\x07\x00\x00\x00\x00" * 4):
            self.assertRaises(ValueError, Variants.decode, bad)
        self.assertRaises(InvalidArgument, Variants, 1, b"p")


class _RouterBackend:
    """
    A backend running a :class:`GameApp` in memory.
    """

    def __init__(self, index: MemoryIndex, bus: MemoryBus, clock: Clock) -> None:
        self.metrics = Metrics()
        self.context: BackendContext
        self.fabric = Fabric(index, bus, lambda gate_id: self.context.locate_gate(gate_id))
        self.app = GameApp(self.fabric)
        self.dispatcher = Dispatcher(self.app, self.metrics)
        self.context = BackendContext("b1", "default", b"s", self.dispatcher, clock,
                                      self.metrics, call_timeout=5.0)
        self.factory = BackendServerFactory(self.context)


class _GateNode:
    def __init__(self, index: MemoryIndex, bus: MemoryBus, clock: Clock) -> None:
        self.metrics = Metrics()
        self.pool = BackendPool.__new__(BackendPool)
        self.gate = Gate(new_gate_id(), index, bus, self.pool, self.metrics)
        self.settings = LinkSettings(self.gate, b"s", clock, self.metrics,
                                     call_timeout=5.0, ping_interval=1.0)
        BackendPool.__init__(self.pool, self.settings, None)
        self.gate.start()


class TwoGateClusterTests(SynchronousTestCase):
    """
    Two gates and one backend, linked by iosim: routed requests and a push
    to a group with members of both codecs on both gates.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.index, self.bus = MemoryIndex(), MemoryBus()
        self.backend = _RouterBackend(self.index, self.bus, self.clock)
        self.gates = [_GateNode(self.index, self.bus, self.clock) for _ in range(2)]
        self.pumps = []
        for node in self.gates:
            client = BackendConnection(node.settings, node.pool._ready, node.pool._lost)
            server = self.backend.factory.buildProtocol(None)
            self.pumps.append(iosim.connect(
                server, iosim.FakeTransport(server, isServer=True),
                client, iosim.FakeTransport(client, isServer=False), greet=False,
            ))
        self.flush()

    def flush(self) -> None:
        for _ in range(8):
            self.clock.advance(0)
            for pump in self.pumps:
                pump.flush()

    def connect(self, gate: int, **request: Any) -> RecordingConnection:
        connection = RecordingConnection()
        connection.client_id = self.gates[gate].gate.client_opened(
            connection, ConnectRequest(peer="tcp4:127.0.0.1:1", **request)
        )
        self.flush()
        return connection

    def send(self, gate: int, connection: RecordingConnection, message: str | bytes) -> None:
        self.gates[gate].gate.client_message(connection.client_id, message)
        self.flush()

    def test_mixed_group_push(self) -> None:
        """
        A JSON client on gate 0 and a proto client (route compression
        asked, none offered) on gate 1 join a group by request, and each
        receives the push in its codec; uid and single-client pushes too.
        """
        js = self.connect(0, subprotocol="wsfabric.json")
        proto = self.connect(1, subprotocol="wsfabric.proto", params={"routes": "1"})
        extra = self.connect(1)
        self.send(0, js, request("join", 1, "g"))
        self.send(1, proto, PROTO_CODEC.encode_request("join", 1, "g"))
        self.send(1, extra, request("join", 1, "g"))
        self.assertEqual(js.received, ['{"id":1,"data":null}'])
        self.assertEqual(proto.received, [PROTO_CODEC.encode_response(1, None)])
        self.send(0, js, request("shout", 2, {"group": "g", "state": {"turn": 2}}))
        self.assertEqual(js.received[1:], ['{"route":"game.state","data":{"turn":2}}',
                                           '{"id":2,"data":null}'])
        self.assertEqual(proto.received[1:],
                         [PROTO_CODEC.encode_push("game.state", {"turn": 2})])
        self.assertEqual(extra.received[1:], js.received[1:2])
        # Through AMP: single-client and multi-client pushes.
        app = self.backend.app
        app.push_to_client(proto.client_id, "one", MoveReply(turn=3))
        app.push_to_clients([js.client_id, proto.client_id, extra.client_id], "many", 4)
        self.flush()
        self.assertEqual(proto.received[2:], [
            PROTO_CODEC.encode_push("one", MoveReply(turn=3)),
            PROTO_CODEC.encode_push("many", 4),
        ])
        self.assertEqual(js.received[3:], ['{"route":"many","data":4}'])
        self.assertEqual(extra.received[2:], js.received[3:])

    def test_request_across_gates(self) -> None:
        """
        Requests from either gate, in either codec, are answered.
        """
        js = self.connect(1, subprotocol="wsfabric.json")
        proto = self.connect(0, subprotocol="wsfabric.proto")
        self.send(1, js, request("game.move", 5, {"x": -1}))
        self.send(0, proto, PROTO_CODEC.encode_request("game.move", 6, Move(x=1)))
        self.send(0, proto, PROTO_CODEC.encode_request("deny", 7))
        self.assertEqual(json.loads(js.received[0]),
                         {"id": 5, "data": {"ok": False, "turn": -1, "big": str(2**40)}})
        self.assertEqual(PROTO_CODEC.decode_outbound(proto.received[0]).id, 6)
        self.assertEqual(PROTO_CODEC.decode_outbound(proto.received[1]).error,
                         ErrorInfo("not_allowed", "you may not"))

    def test_big_push_through_amp(self) -> None:
        """
        A push far over AMP's 65,535-byte value limit crosses in chunks, in
        both forms.
        """
        js = self.connect(0, subprotocol="wsfabric.json")
        proto = self.connect(1, subprotocol="wsfabric.proto")
        big = {"blob": "x" * 300000}
        self.backend.app.push_to_clients([js.client_id, proto.client_id], "big", big)
        self.flush()
        self.assertEqual(js.received, [JSON_CODEC.encode_push("big", big)])
        self.assertEqual(proto.received, [PROTO_CODEC.encode_push("big", big)])
