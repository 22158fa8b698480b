"""
Applications run by the integration tests in real ``twistd`` processes.

:class:`ContractApp` exposes every :class:`~wsfabric.interfaces.IFabric`
method to its clients, so that tests drive the cluster API through real
WebSocket connections made with a client wsfabric did not write. A client
sends ``{"id": 1, "call": "join_group", "args": [...]}`` and gets
``{"id": 1, "result": ...}`` or ``{"id": 1, "error": "ClientNotFound",
"message": "..."}``. Bytes travel as ``{"$bytes": "<base64>"}``. Any other
text is echoed back as text, binary as binary.
"""

from __future__ import annotations

import base64
import json
import os
from collections import deque
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from wsfabric.errors import Reject
from wsfabric.interfaces import IApplication, IFabric

FABRIC_METHODS = frozenset(IFabric.names())


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return base64.b64decode(value["$bytes"])
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


@implementer(IApplication)
class ContractApp:
    """
    Every IFabric method, callable by clients; plus a few test hooks.

    Query parameters of the handshake set the client up in ``on_connect``:
    ``bind=UID`` binds it, ``join=G1,G2`` joins groups, ``sleep=S`` makes
    ``on_connect`` take S seconds (logged, so that a test can find the
    backend running it), ``hello=1`` sends it ``hello`` once it is set up,
    ``reject=CODE`` and ``fail=1`` refuse it.
    """

    _log = Logger()

    def __init__(self, fabric: IFabric) -> None:
        self.fabric = fabric
        # The latest events only: churn tests run 100,000 clients through.
        self.events: deque[list[Any]] = deque(maxlen=10_000)

    def on_connect(self, client_id: str, request: Any) -> Any:
        self.events.append(["connect", client_id])
        if "reject" in request.params:
            raise Reject(int(request.params["reject"]), "rejected by test")
        if "fail" in request.params:
            raise RuntimeError("on_connect failed on purpose")
        if request.params.keys() & {"sleep", "join", "hello"}:
            return ensureDeferred(self._set_up(client_id, request.params))
        if "bind" in request.params:
            return self.fabric.bind_uid(client_id, request.params["bind"])
        return None

    async def _set_up(self, client_id: str, params: dict[str, str]) -> None:
        if "sleep" in params:
            self._log.info("on_connect of {client_id} sleeps {delay} s",
                           client_id=client_id, delay=params["sleep"])
            await deferLater(reactor, float(params["sleep"]), lambda: None)
        if "bind" in params:
            await self.fabric.bind_uid(client_id, params["bind"])
        for group in filter(None, params.get("join", "").split(",")):
            await self.fabric.join_group(client_id, group)
        if "hello" in params:
            await self.fabric.send_to_client(client_id, "hello")

    async def on_message(self, client_id: str, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self.fabric.send_to_client(client_id, message)
            return
        try:
            command = json.loads(message)
        except ValueError:
            command = None
        if not isinstance(command, dict) or "call" not in command:
            await self.fabric.send_to_client(client_id, message)
            return
        self.events.append(["message", client_id, command.get("id")])
        if command["call"] == "raise":
            # Escapes the hook: wsfabric must log it and carry on.
            raise RuntimeError("hook failed on purpose")
        reply: dict[str, Any] = {"id": command.get("id")}
        try:
            reply["result"] = _encode(await self._call(client_id, command))
        except Exception as e:
            reply["error"] = type(e).__name__
            reply["message"] = str(e)
        await self.fabric.send_to_client(client_id, json.dumps(reply))

    def on_close(self, client_id: str) -> None:
        self.events.append(["close", client_id])

    async def _call(self, client_id: str, command: dict[str, Any]) -> Any:
        name = command["call"]
        args = _decode(command.get("args", []))
        kwargs = {key: _decode(value) for key, value in command.get("kwargs", {}).items()}
        if name in FABRIC_METHODS:
            return await getattr(self.fabric, name)(*args, **kwargs)
        if name == "whoami":
            return client_id
        if name == "pid":
            return os.getpid()
        if name == "version":
            # Stands for the application's code: a restart may bring another.
            return os.environ.get("CONTRACT_APP_VERSION", "1")
        if name == "events":
            return list(self.events)
        if name == "sleep":
            await deferLater(reactor, float(args[0]), lambda: None)
            return args[1] if len(args) > 1 else None
        if name == "flood":
            # Send ``count`` messages of ``size`` bytes without waiting, as a
            # chatty server would.
            count, size = int(args[0]), int(args[1])
            payload = "f" * size
            for _ in range(count):
                self.fabric.send_to_client(client_id, payload)
            return count
        raise LookupError(f"no such call {name!r}")


@implementer(IApplication)
class SlowHookApp:
    """
    on_message takes ``message`` seconds (as text) before echoing it; used to
    check ordering and graceful shutdown.
    """

    def __init__(self, fabric: IFabric) -> None:
        self.fabric = fabric

    def on_connect(self, client_id: str, request: Any) -> None:
        pass

    async def on_message(self, client_id: str, message: Any) -> None:
        delay = float(message)
        waiter: Deferred[None] = deferLater(reactor, delay, lambda: None)
        await waiter
        await self.fabric.send_to_client(client_id, message)

    def on_close(self, client_id: str) -> None:
        pass


class NotAnApplication:
    """
    Has no IApplication declaration; --app must refuse it.
    """

    def __init__(self, fabric: IFabric) -> None:
        pass


def broken_factory(fabric: IFabric) -> None:
    """
    Fails while creating the application.
    """
    raise ValueError("cannot start without a database")


def _routing_app(fabric: IFabric) -> Any:
    # Imported here: the other applications need no protobuf.
    from wsfabric.errors import RouteError
    from wsfabric.routing import Router, route
    from wsfabric.routing.envelope_pb2 import Error

    class RoutingApp(Router):
        """
        Routes for tests/integration/test_routing.py, with route compression.
        """

        def __init__(self, fabric: IFabric) -> None:
            super().__init__(fabric, compress_routes=True)
            self.declare_push("shout")

        @route("echo")
        def echo(self, client_id: str, data: Any) -> Any:
            return data

        @route("upper", request=Error)
        def upper(self, client_id: str, message: Any) -> Any:
            return Error(code=message.code.upper(), message=client_id)

        @route("join")
        async def join(self, client_id: str, group: Any) -> None:
            await self.fabric.join_group(client_id, group)

        @route("shout")
        def shout(self, client_id: str, data: Any) -> Any:
            return self.push_to_group(data["group"], "shout", data["data"])

        @route("deny")
        def deny(self, client_id: str, data: Any) -> None:
            raise RouteError("not_allowed", "no")

        @route("boom")
        def boom(self, client_id: str, data: Any) -> None:
            raise RuntimeError("boom (expected by the test)")

    return RoutingApp(fabric)


#: A wsfabric.routing.Router (``--app tests.integration.apps:RoutingApp``).
RoutingApp = _routing_app
