"""
Routed messages end to end: a real standalone node and a real cluster (one
gate, one backend, Redis) running :func:`tests.integration.apps.RoutingApp`,
driven by clients made with the ``websockets`` package that negotiate the
``wsfabric.json`` and ``wsfabric.proto`` subprotocols and speak the envelope
of docs/wire-protocol.md.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.integration.support import PROJECT, IntegrationTestCase, async_test, shared
from wsfabric.routing import JSON_CODEC, PROTO_CODEC
from wsfabric.routing.envelope_pb2 import Envelope, Error, RouteTable
from wsfabric.testing.processes import Cluster, StandaloneNode

ROUTING_APP = "tests.integration.apps:RoutingApp"


async def connect(url: str, subprotocol: str, query: str = "") -> Any:
    connection = await websockets.connect(
        url + query, subprotocols=[subprotocol], open_timeout=10
    )
    assert connection.subprotocol == subprotocol, connection.subprotocol
    return connection


async def receive(connection: Any) -> Any:
    return await asyncio.wait_for(connection.recv(), 10)


class RoutingTestsMixin:
    """
    The tests; a subclass names the deployment.
    """

    def deployment_url(self) -> str:
        raise NotImplementedError

    @async_test()
    async def test_request_response_and_errors(self) -> None:
        """
        JSON and protobuf requests are answered in their codec; every error
        code comes back under the request's id and the connection stays
        open.
        """
        url = self.deployment_url()
        js = await connect(url, "wsfabric.json")
        proto = await connect(url, "wsfabric.proto")
        try:
            await js.send('{"route": "echo", "id": 1, "data": {"a": [1, "é"]}}')
            self.assertEqual(json.loads(await receive(js)), {"id": 1, "data": {"a": [1, "é"]}})
            await js.send('{"route": "upper", "id": 2, "data": {"code": "abc"}}')
            reply = json.loads(await receive(js))
            self.assertEqual(reply["data"]["code"], "ABC")
            for message, code in [
                ('{"route": "nope", "id": 3}', "not_found"),
                ('{"route": "deny", "id": 4}', "not_allowed"),
                ('{"route": "boom", "id": 5}', "internal"),
                ('{"route": "upper", "id": 6, "data": {"zzz": 1}}', "bad_request"),
                ('{"route": "echo", "id": 7, "data": ' + "[" * 100 + "]" * 100 + "}",
                 "bad_request"),
            ]:
                await js.send(message)
                error = json.loads(await receive(js))
                self.assertEqual(error["error"]["code"], code, message)
            await js.send("{not json")
            self.assertEqual(json.loads(await receive(js))["error"]["code"], "bad_request")

            await proto.send(PROTO_CODEC.encode_request("upper", 9, Error(code="xy")))
            answer = PROTO_CODEC.decode_outbound(await receive(proto))
            self.assertEqual(answer.id, 9)
            self.assertEqual(PROTO_CODEC.decode_data(answer.data, Error).code, "XY")
            await proto.send(b"\x0a\x05ab")  # truncated
            answer = PROTO_CODEC.decode_outbound(await receive(proto))
            self.assertEqual(answer.error.code, "bad_request")
            await proto.send(PROTO_CODEC.encode_request("echo", 10, {"still": "open"}))
            answer = PROTO_CODEC.decode_outbound(await receive(proto))
            self.assertEqual((answer.id, PROTO_CODEC.decode_data(answer.data)),
                             (10, {"still": "open"}))
        finally:
            await js.close()
            await proto.close()

    @async_test()
    async def test_mixed_codec_group_push(self) -> None:
        """
        A group with a JSON client and a compressed protobuf client: one
        push reaches each in its own codec (the protobuf one by route code,
        after the route table it received first).
        """
        url = self.deployment_url()
        js = await connect(url, "wsfabric.json")
        proto = await connect(url, "wsfabric.proto", "?routes=1")
        try:
            first = Envelope.FromString(await receive(proto))
            self.assertEqual(first.route, "wsfabric.routes")
            table = dict(RouteTable.FromString(first.data).routes)
            self.assertEqual(set(table),
                             {"echo", "upper", "join", "shout", "deny", "boom"})
            group = f"g-{id(self)}"
            await js.send(JSON_CODEC.encode_request("join", 1, group))
            self.assertEqual(json.loads(await receive(js)), {"id": 1, "data": None})
            await proto.send(PROTO_CODEC.encode_request(table["join"], 1, group))
            self.assertEqual(PROTO_CODEC.decode_outbound(await receive(proto)).id, 1)

            await js.send(JSON_CODEC.encode_request(
                "shout", 2, {"group": group, "data": {"text": "hi"}}
            ))
            received = [json.loads(await receive(js)), json.loads(await receive(js))]
            self.assertIn({"route": "shout", "data": {"text": "hi"}}, received)
            self.assertIn({"id": 2, "data": None}, received)
            push = PROTO_CODEC.decode_outbound(await receive(proto))
            self.assertEqual((push.kind, push.route), ("push", table["shout"]))
            self.assertEqual(PROTO_CODEC.decode_data(push.data), {"text": "hi"})
        finally:
            await js.close()
            await proto.close()


class StandaloneRoutingTests(RoutingTestsMixin, IntegrationTestCase):
    def deployment_url(self) -> str:
        node = shared(
            "standalone-routing",
            lambda: StandaloneNode(ROUTING_APP, [], cwd=PROJECT).start(),
        )
        return node.ws_url


class ClusterRoutingTests(RoutingTestsMixin, IntegrationTestCase):
    def deployment_url(self) -> str:
        cluster = shared(
            "cluster-routing",
            lambda: Cluster(ROUTING_APP, gates=1, backends=1, cwd=PROJECT).start(),
        )
        return cluster.gate_urls[0]
