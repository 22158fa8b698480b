"""
Test doubles for application authors (and wsfabric's own tests).

:class:`StandaloneHarness` runs an application in memory exactly as
``twistd wsfabric`` does — the same gate, dispatcher, fabric, bus and index —
with :class:`FakeClient` objects in place of WebSocket connections, and no
sockets or reactor::

    harness = StandaloneHarness(ChatApp)
    alice = harness.connect()
    alice.send('{"type": "login", "nick": "alice"}')
    assert alice.received[-1] ...

:mod:`wsfabric.testing.processes` starts real ``twistd`` processes (and a
``redis-server``) for integration tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from wsfabric.gate.gate import CLOSE_NORMAL
from wsfabric.interfaces import IApplication, IClientConnection
from wsfabric.message import ConnectRequest, SharedMessage
from wsfabric.metrics import Metrics
from wsfabric.standalone import make_standalone


@implementer(IClientConnection)
class RecordingConnection:
    """
    An :class:`~wsfabric.interfaces.IClientConnection` that records what the
    gate does to it.

    :ivar received: messages delivered, ``str`` for text, ``bytes`` for binary.
    :ivar close_code: the close code, once closed.
    :ivar close_reason: the close reason, once closed.
    :ivar reading: whether the gate lets the client's messages in.
    """

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.received: list[str | bytes] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.reading = True

    @property
    def closed(self) -> bool:
        """
        Whether the gate has closed the connection.
        """
        return self.close_code is not None

    def deliver(self, message: str | bytes) -> None:
        """
        Record ``message`` unless closed.
        """
        if not self.closed:
            self.received.append(message)

    def deliver_shared(self, shared: SharedMessage) -> None:
        """
        Record a shared message unless closed.
        """
        if not self.closed:
            self.received.append(
                shared.payload if shared.is_binary else shared.payload.decode("utf-8")
            )

    def close(self, code: int, reason: str) -> None:
        """
        Record the close (the first one counts).
        """
        if not self.closed:
            self.close_code = code
            self.close_reason = reason

    def pause_reading(self) -> None:
        """
        Record that reading is paused.
        """
        self.reading = False

    def resume_reading(self) -> None:
        """
        Record that reading resumed.
        """
        self.reading = True


class FakeClient:
    """
    A client of a :class:`StandaloneHarness`.

    :ivar client_id: the id the gate issued.
    :ivar connection: the recording connection.
    """

    def __init__(self, harness: StandaloneHarness, client_id: str, connection: RecordingConnection):
        self._harness = harness
        self.client_id = client_id
        self.connection = connection

    @property
    def received(self) -> list[str | bytes]:
        """
        The messages this client received so far.
        """
        return self.connection.received

    def received_json(self) -> list[Any]:
        """
        The text messages received so far, parsed as JSON.
        """
        return [json.loads(m) for m in self.received if isinstance(m, str)]

    @property
    def close_code(self) -> int | None:
        """
        The code the server closed this client with, or ``None``.
        """
        return self.connection.close_code

    def send(self, message: str | bytes) -> None:
        """
        Send ``message`` as this client (``str`` as text, ``bytes`` as binary).
        """
        if not self.connection.closed:
            self._harness.gate.client_message(self.client_id, message)

    def disconnect(self) -> None:
        """
        Drop the connection, as a client closing its socket.
        """
        self.connection.close(CLOSE_NORMAL, "client closed")
        self._harness.gate.client_closed(self.client_id)


class StandaloneHarness:
    """
    Runs an application in memory as standalone mode does.

    :param app_factory: the callable ``--app`` would name; it is given the
        fabric.
    :ivar gate: the gate.
    :ivar dispatcher: the dispatcher.
    :ivar fabric: the fabric the application got.
    :ivar app: the application.
    :ivar metrics: the counters.
    """

    def __init__(self, app_factory: Callable[[Any], IApplication]) -> None:
        self.metrics = Metrics()
        self.gate, self.dispatcher, self.fabric, self.app = make_standalone(
            app_factory, reactor=None, metrics=self.metrics
        )
        self.gate.start()

    def connect(self, peer: str = "tcp4:127.0.0.1:40000", **request: Any) -> FakeClient:
        """
        Connect a new client.

        :param peer: the client's address.
        :param request: other :class:`~wsfabric.message.ConnectRequest` fields
            (``path``, ``params``, ``headers``, ``uid``, ...).
        :return: the client.
        """
        connection = RecordingConnection()
        client_id = self.gate.client_opened(connection, ConnectRequest(peer=peer, **request))
        connection.client_id = client_id
        return FakeClient(self, client_id, connection)


__all__ = ["FakeClient", "RecordingConnection", "StandaloneHarness"]
