"""
A property test of the routing layer: at least 10,000 generated and mutated
envelopes per codec go through a real :class:`~wsfabric.routing.Router` in
a standalone harness. Every input gets exactly one well-formed answer when
it is a request or malformed, at most one error when it is a notify, never
an unhandled error; the connection stays open and a neighbouring client is
unaffected.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_routing import Move, MoveReply
from wsfabric.errors import BadEnvelope, RouteError
from wsfabric.routing import JSON_CODEC, PROTO_CODEC, Router, route
from wsfabric.routing.codec import MAX_ID
from wsfabric.routing.envelope_pb2 import Envelope
from wsfabric.testing import StandaloneHarness

#: Inputs each codec must see at least.
MINIMUM_INPUTS = 10_000
#: Examples per codec, each a batch of BATCH_MIN..BATCH_MAX inputs.
EXAMPLES = 520
BATCH_MIN, BATCH_MAX = 20, 30

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Error codes the fuzzed application can produce; "internal" would mean a
#: handler failed, which none of these does on any input.
EXPECTED_CODES = {"bad_request", "not_found", "not_allowed"}


class FuzzApp(Router):
    """
    Routes of every kind: JSON, protobuf, coroutine, refusing, notify.
    """

    def __init__(self, fabric: Any) -> None:
        super().__init__(fabric, compress_routes=True)
        self.declare_push("fuzz.push")

    @route("echo")
    def echo(self, client_id: str, data: Any) -> Any:
        return data

    @route("game.move", request=Move)
    def move(self, client_id: str, move: Any) -> Any:
        return MoveReply(ok=True, turn=move.x ^ move.y)

    @route("async.echo")
    async def async_echo(self, client_id: str, data: Any) -> Any:
        return [data]

    @route("deny")
    def deny(self, client_id: str, data: Any) -> None:
        raise RouteError("not_allowed", "no")

    @route("notify")
    def notify(self, client_id: str, data: Any) -> None:
        return None


ROUTES = ["echo", "game.move", "async.echo", "deny", "notify", "missing", "wsfabric.routes"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=12,
)
ids = st.one_of(
    st.none(),
    st.integers(1, MAX_ID),
    st.integers(-3, 3),
    st.integers(MAX_ID - 2, 2**64 + 2),
    st.floats(),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
)
json_routes = st.one_of(
    st.sampled_from(ROUTES),
    st.integers(-2, 12),
    st.integers(2**32 - 2, 2**33),
    st.text(max_size=300),
    json_values,
)
move_objects = st.fixed_dictionaries(
    {}, optional={"x": st.integers(-(2**32), 2**32), "y": json_values, "who": json_values}
)


@st.composite
def json_envelopes(draw: Any) -> str:
    envelope = draw(st.fixed_dictionaries(
        {},
        optional={
            "route": json_routes,
            "id": ids,
            "data": st.one_of(json_values, move_objects),
            "error": json_values,
            "extra": json_values,
        },
    ))
    # allow_nan: NaN and Infinity are part of what a client may send.
    return json.dumps(envelope, allow_nan=True)


@st.composite
def deep_json(draw: Any) -> str:
    depth = draw(st.integers(0, 5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    closed = draw(st.booleans())
    inner = opener * depth + "1" + (closer * depth if closed else "")
    route_name = draw(st.sampled_from(["echo", "game.move"]))
    return '{"route": "%s", "id": 1, "data": %s}' % (route_name, inner)  # noqa: UP031


@st.composite
def mutate_text(draw: Any, base: Any) -> str:
    text = draw(base)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        operation = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "repeat"]))
        if operation == "insert":
            piece = draw(st.sampled_from(list('{}[]":,\\0-e.') + ["\ud800", "\x00", "null"]))
            text = text[:position] + piece + text[position:]
        elif operation == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 5)):]
        elif operation == "replace" and position < len(text):
            text = text[:position] + draw(st.characters()) + text[position + 1:]
        elif operation == "truncate":
            text = text[:position]
        else:
            text = text + text[position:]
    return text


json_inputs = st.one_of(
    json_envelopes(),
    json_envelopes(),
    mutate_text(json_envelopes()),
    mutate_text(json_envelopes()),
    deep_json(),
    st.text(max_size=50),
    st.binary(max_size=50),
    st.builds(lambda value: json.dumps(value), json_values),
)


@st.composite
def proto_envelopes(draw: Any) -> bytes:
    envelope = Envelope()
    if draw(st.booleans()):
        envelope.route = draw(st.one_of(st.sampled_from(ROUTES), st.text(max_size=300)))
    if draw(st.booleans()):
        envelope.route_id = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        envelope.id = draw(st.one_of(st.integers(0, MAX_ID + 2), st.integers(0, 2**64 - 1)))
    data = draw(st.one_of(
        st.none(),
        st.binary(max_size=40),
        st.builds(lambda x, y: Move(x=x, y=y).SerializeToString(),
                  st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
        st.builds(lambda value: json.dumps(value).encode(), json_values),
    ))
    if data is not None:
        envelope.data = data
    if draw(st.booleans()):
        envelope.error.code = draw(st.text(max_size=5))
    return envelope.SerializeToString()


@st.composite
def mutate_bytes(draw: Any, base: Any) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if operation == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif operation == "delete":
            del data[position:position + draw(st.integers(1, 5))]
        elif operation == "truncate":
            del data[position:]
        else:
            data += data[position:]
    return bytes(data)


proto_inputs = st.one_of(
    proto_envelopes(),
    proto_envelopes(),
    mutate_bytes(proto_envelopes()),
    mutate_bytes(proto_envelopes()),
    st.binary(max_size=60),
    st.text(max_size=20),
)


class RoutingFuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = StandaloneHarness(FuzzApp)

    def run_fuzz(self, codec: Any, inputs: Any, subprotocol: str) -> None:
        sender = self.harness.connect(subprotocol=subprotocol, params={"routes": "1"})
        neighbour = self.harness.connect(subprotocol=subprotocol)
        self.assertEqual(len(sender.received), 1)  # the route table
        sender.received.clear()
        count = [0]

        @FUZZ_SETTINGS
        @given(st.lists(inputs, min_size=BATCH_MIN, max_size=BATCH_MAX))
        def check(messages: list[Any]) -> None:
            for message in messages:
                count[0] += 1
                self.check_one(codec, sender, message)

        check()
        self.assertGreaterEqual(count[0], MINIMUM_INPUTS)
        self.assertIsNone(sender.close_code)
        self.assertIsNone(neighbour.close_code)
        self.assertEqual(neighbour.received, [])
        # The neighbour is served as ever.
        neighbour.send(codec.encode_request("echo", 1, {"still": "here"}))
        answer = codec.decode_outbound(neighbour.received[-1])
        self.assertEqual((answer.kind, codec.decode_data(answer.data)),
                         ("response", {"still": "here"}))
        self.assertEqual(self.harness.metrics.hook_errors, 0)

    def check_one(self, codec: Any, sender: Any, message: str | bytes) -> None:
        before = len(sender.received)
        sender.send(message)
        answers = [codec.decode_outbound(m) for m in sender.received[before:]]
        sender.received.clear()
        try:
            inbound = codec.decode_inbound(message)
        except BadEnvelope as e:
            self.assertEqual(len(answers), 1, message)
            self.assertEqual((answers[0].kind, answers[0].id, answers[0].error.code),
                             ("error", e.id, "bad_request"))
            return
        if inbound.id is not None:
            self.assertEqual(len(answers), 1, message)
            self.assertEqual(answers[0].id, inbound.id)
            self.assertIn(answers[0].kind, ("response", "error"))
        else:
            self.assertLessEqual(len(answers), 1, message)
            if answers:
                self.assertEqual((answers[0].kind, answers[0].id), ("error", None))
        for answer in answers:
            if answer.kind == "error":
                self.assertIn(answer.error.code, EXPECTED_CODES)

    def test_json(self) -> None:
        """
        The wsfabric.json codec, through the router.
        """
        self.run_fuzz(JSON_CODEC, json_inputs, "wsfabric.json")

    def test_proto(self) -> None:
        """
        The wsfabric.proto codec, through the router.
        """
        self.run_fuzz(PROTO_CODEC, proto_inputs, "wsfabric.proto")
