"""
The gate's control channel: per-client commands (``bind_uid``,
``join_group``, ``send_to_clients``, ``close_client``, ...) from processes
outside the cluster, i.e. :func:`wsfabric.connect` (:mod:`wsfabric.remote`).

Backends reach a gate over the AMP connection the gate opened; an outside
process has none, so it publishes the command on the gate's control channel
``ctl:<gate_id>`` (the Redis channel ``{ns}:ch:ctl:<gate_id>``) and waits for
the answer on its own ``ctl-reply:<node_id>``. Requests and replies are
signed like RPC messages (:func:`wsfabric.rpc.seal`); the gate drops and
logs a request that is unsigned, badly signed or too old, so only holders of
the cluster secret can drive clients. The gate carries each command out
through its :class:`~wsfabric.gate.gate.Gate`, exactly as for a backend.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsfabric.errors import ClientNotFound, InvalidArgument
from wsfabric.interfaces import IBus
from wsfabric.message import Variants, check_info, check_message, check_name
from wsfabric.rpc import MAX_SKEW, seal, unseal

#: The commands a gate takes on its control channel, with their arguments.
OPERATIONS = {
    "send_to_clients": ("client_ids", "message"),
    "close_client": ("client_id", "code", "reason"),
    "bind_uid": ("client_id", "uid"),
    "unbind_uid": ("client_id", "uid"),
    "join_group": ("client_id", "group"),
    "leave_group": ("client_id", "group"),
    "set_info": ("client_id", "info"),
    "update_info": ("client_id", "info"),
}


def control_channel(gate_id: str) -> str:
    """
    :return: the bus channel of gate ``gate_id``'s control commands.
    """
    return "ctl:" + gate_id


def control_reply_channel(node_id: str) -> str:
    """
    :return: the bus channel where ``node_id`` takes control replies.
    """
    return "ctl-reply:" + node_id


def encode_message(message: str | bytes | Variants) -> dict[str, str]:
    """
    :return: a message as JSON carries it.
    """
    if isinstance(message, str):
        return {"text": message}
    if isinstance(message, Variants):
        return {"variants": base64.b64encode(message.encode()).decode("ascii")}
    return {"binary": base64.b64encode(bytes(message)).decode("ascii")}


def decode_message(value: Any) -> str | bytes | Variants:
    """
    The inverse of :func:`encode_message`.

    :raises InvalidArgument: if ``value`` is not an encoded message.
    """
    if isinstance(value, dict):
        try:
            if isinstance(value.get("text"), str):
                return value["text"]
            if isinstance(value.get("binary"), str):
                return base64.b64decode(value["binary"], validate=True)
            if isinstance(value.get("variants"), str):
                return Variants.decode(base64.b64decode(value["variants"], validate=True))
        except ValueError as e:
            raise InvalidArgument(f"bad message: {e}") from None
    raise InvalidArgument("bad message")


class GateControlService(Service):
    """
    Runs the commands published on the gate's control channel.

    :param clock: for message ages and noticing a new gate id.
    :param bus: the cluster bus.
    :param gate: the :class:`~wsfabric.gate.gate.Gate` (its ``gate_id`` may
        change when it is declared dead and starts a new incarnation).
    :param secret: the cluster secret.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, bus: IBus, gate: Any, secret: bytes) -> None:
        self._clock = clock
        self._bus = bus
        self._gate = gate
        self._secret = secret
        self._subscription: Any = None
        self._subscribed_as: str | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """
        Subscribe to the control channel, and follow the gate's id.
        """
        super().startService()
        self._loop = LoopingCall(self._follow)
        self._loop.clock = self._clock
        self._loop.start(1.0, now=True)

    def stopService(self) -> Deferred[None]:
        """
        Unsubscribe.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        return succeed(None)

    def _follow(self) -> None:
        gate_id = self._gate.gate_id
        if gate_id == self._subscribed_as:
            return
        if self._subscription is not None:
            self._subscription.cancel()
        self._subscribed_as = gate_id
        self._subscription = self._bus.subscribe(control_channel(gate_id), self.received)

    def received(self, channel: str, payload: bytes) -> None:
        """
        One command: check it, run it, answer.
        """
        try:
            request = json.loads(unseal(self._secret, payload))
            if not isinstance(request, dict):
                raise ValueError("not an object")
            sent = request.get("ts")
            if not isinstance(sent, int | float) or abs(self._clock.seconds() - sent) > MAX_SKEW:
                raise ValueError("too old (replayed?)")
            reply_to, request_id = request["from"], request["id"]
            if not isinstance(reply_to, str):
                raise ValueError("bad sender")
        except (ValueError, KeyError) as e:
            self._log.warn("dropped a control command: {why}", why=str(e))
            return
        running = maybeDeferred(self._run, request.get("op"), request.get("args"))
        running.addBoth(self._answer, reply_to, request_id)

    def _run(self, op: Any, args: Any) -> Deferred[None]:
        if op not in OPERATIONS or not isinstance(args, dict):
            raise InvalidArgument(f"unknown control command {op!r}")
        gate = self._gate
        if op == "send_to_clients":
            ids = args.get("client_ids")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise InvalidArgument("client_ids must be a list of str")
            return gate.send_to_clients(ids, check_message(decode_message(args.get("message"))))
        client_id = args.get("client_id")
        if not isinstance(client_id, str):
            raise InvalidArgument("client_id must be a str")
        if op == "close_client":
            code, reason = args.get("code"), args.get("reason")
            if not isinstance(code, int) or not isinstance(reason, str):
                raise InvalidArgument("bad close code or reason")
            return gate.close_client(client_id, code, reason)
        if op in ("bind_uid", "unbind_uid"):
            return getattr(gate, op)(client_id, check_name("uid", args.get("uid")))
        if op in ("join_group", "leave_group"):
            return getattr(gate, op)(client_id, check_name("group", args.get("group")))
        return getattr(gate, op)(client_id, check_info(args.get("info")))

    def _answer(self, outcome: Any, reply_to: str, request_id: Any) -> None:
        reply: dict[str, Any] = {"id": request_id, "ts": self._clock.seconds()}
        if isinstance(outcome, Failure):
            error = outcome.value
            if isinstance(error, ClientNotFound):
                reply["error"] = {"code": "not_found", "message": error.client_id}
            elif isinstance(error, InvalidArgument):
                reply["error"] = {"code": "invalid", "message": str(error)}
            else:
                self._log.failure("control command failed", outcome)
                reply["error"] = {"code": "internal", "message": type(error).__name__}
        payload = seal(self._secret, json.dumps(reply).encode("utf-8"))
        self._bus.publish(control_reply_channel(reply_to), payload).addErrback(
            lambda f: self._log.warn(
                "could not answer a control command: {e}", e=f.getErrorMessage()
            )
        )


__all__ = [
    "OPERATIONS",
    "GateControlService",
    "control_channel",
    "control_reply_channel",
    "decode_message",
    "encode_message",
]
