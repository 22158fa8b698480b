"""
Shared pieces of the integration tests: running asyncio test bodies under
trial, a JSON-call client for :class:`tests.integration.apps.ContractApp`
built on the ``websockets`` package, and a base test case that starts
processes and always stops them.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import functools
import json
import os
from collections.abc import Callable, Coroutine
from typing import Any

import websockets
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from wsfabric.testing.processes import Process, StandaloneNode

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTRACT_APP = "tests.integration.apps:ContractApp"


def async_test(
    timeout: float = 60.0,
) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Callable[..., Deferred[None]]]:
    """
    Run an ``async def`` test method on the asyncio loop that trial's asyncio
    reactor drives, bounded by ``timeout`` seconds.
    """

    def decorate(method: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Deferred[None]]:
        @functools.wraps(method)
        def run(self: TestCase, *args: Any, **kwargs: Any) -> Deferred[None]:
            if type(reactor).__name__ != "AsyncioSelectorReactor":
                raise SkipTest("integration tests need trial --reactor=asyncio")
            return Deferred.fromFuture(
                asyncio.ensure_future(asyncio.wait_for(method(self, *args, **kwargs), timeout))
            )

        return run

    return decorate


class CallError(Exception):
    """
    A call made through :class:`ContractClient` failed on the server.

    :ivar name: the server-side exception's class name.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


class ContractClient:
    """
    A WebSocket client (the ``websockets`` package) that calls IFabric
    methods through :class:`~tests.integration.apps.ContractApp` and collects
    everything else the server sends.

    :ivar client_id: the id the server gave this client.
    :ivar pushed: messages that were not replies, in arrival order.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.client_id: str = ""
        self.pushed: asyncio.Queue[Any] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, **options: Any) -> ContractClient:
        """
        Connect to ``url`` and learn the client id.
        """
        options.setdefault("open_timeout", 10)
        options.setdefault("max_size", None)
        connection = await websockets.connect(url, **options)
        client = cls(connection)
        client.client_id = await client.call("whoami")
        return client

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                reply = None
                if isinstance(message, str) and message.startswith('{"id"'):
                    try:
                        reply = json.loads(message)
                    except ValueError:
                        reply = None
                if isinstance(reply, dict) and reply.get("id") in self._replies:
                    future = self._replies.pop(reply["id"])
                    if not future.done():
                        future.set_result(reply)
                else:
                    self.pushed.put_nowait(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    async def call(self, name: str, *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
        """
        Call ``name`` on the server.

        :raises CallError: if the server-side call failed.
        """
        self._next_id += 1
        call_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[call_id] = future
        await self.connection.send(
            json.dumps(
                {
                    "id": call_id,
                    "call": name,
                    "args": _encode(list(args)),
                    "kwargs": {key: _encode(value) for key, value in kwargs.items()},
                }
            )
        )
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise CallError(reply["error"], reply.get("message", ""))
        result = reply.get("result")
        if isinstance(result, dict) and set(result) == {"$bytes"}:
            return base64.b64decode(result["$bytes"])
        return result

    async def next_push(self, timeout: float = 5.0) -> Any:
        """
        :return: the next message that was not a reply.
        :raises asyncio.TimeoutError: if none comes within ``timeout``.
        """
        return await asyncio.wait_for(self.pushed.get(), timeout)

    async def no_push(self, within: float = 0.3) -> None:
        """
        :raises AssertionError: if a message arrives within ``within`` seconds.
        """
        try:
            message = await asyncio.wait_for(self.pushed.get(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {message!r}")

    async def close(self) -> None:
        """
        Close the connection and wait for the reader.
        """
        await self.connection.close()
        await asyncio.wait_for(self._reader, 10)

    @property
    def close_code(self) -> int | None:
        """
        The close code the server sent, if the connection has closed.
        """
        return self.connection.close_code


_shared: dict[str, Any] = {}


def shared(name: str, start: Callable[[], Any]) -> Any:
    """
    A deployment shared by the tests of a class (trial has no setUpClass):
    started on first use, stopped when the test run ends.

    :param name: the deployment's key.
    :param start: starts it; the result must have a ``stop()`` method.
    """
    if name not in _shared:
        deployment = start()
        _shared[name] = deployment
        atexit.register(deployment.stop)
    return _shared[name]


class IntegrationTestCase(TestCase):
    """
    Base class: processes started through it are always stopped.
    """

    timeout = 120

    def started(self, process: Process) -> Process:
        """
        Register ``process`` (already started) for stopping after the test.
        """
        self.addCleanup(process.stop)
        return process

    def standalone(self, app: str = CONTRACT_APP, options: list[str] | None = None,
                   env: dict[str, str] | None = None) -> StandaloneNode:
        """
        Start ``twistd -n wsfabric`` with ``app``; it is stopped after the test.
        """
        node = StandaloneNode(app, options or [], cwd=PROJECT, env=env)
        self.addCleanup(node.stop)
        try:
            node.start()
        except BaseException:
            print(node.log())
            raise
        return node
