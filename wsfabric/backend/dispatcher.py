"""
The dispatcher runs the application's hooks.

It keeps one small queue per client so that a client's events reach the
application one at a time and in the order the client sent them, with
``on_close`` last, whether the hooks are plain functions, return Deferreds,
or are ``async def`` coroutines. An exception raised by a hook is logged with
the client id and its traceback and goes no further: it never reaches the
gate, another client or the process.

When a client's events pile up behind a slow hook, the dispatcher asks the
gate to stop reading from that client (TCP backpressure) and to resume once
the queue has drained.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.errors import ClientNotFound, Reject
from wsfabric.ids import gate_of
from wsfabric.interfaces import IApplication, IClientEvents
from wsfabric.message import ConnectRequest
from wsfabric.metrics import Metrics

#: Called with ``(client_id, paused)`` when a client's queue crosses the
#: high-water mark (``paused=True``) or drains to the low-water mark.
FlowControl = Callable[[str, bool], None]

_CONNECT, _MESSAGE, _CLOSE = range(3)


class _ClientQueue:
    """
    The events of one client waiting for the application.
    """

    __slots__ = ("busy", "pending", "paused", "rejected", "closing")

    def __init__(self) -> None:
        self.busy = False
        self.pending: deque[tuple[int, Any, Any]] | None = None
        self.paused = False
        self.rejected = False
        self.closing = False


@implementer(IClientEvents)
class Dispatcher:
    """
    Hands client events to an application, one client's events in order.

    :param app: the application.
    :param metrics: where hook failures are counted.
    :param flow_control: told when a client should stop or resume sending.
    :param high_water: queued events of one client at which it is paused.
    :param low_water: queued events at which a paused client resumes.
    """

    _log = Logger()

    def __init__(
        self,
        app: IApplication,
        metrics: Metrics,
        flow_control: FlowControl | None = None,
        high_water: int = 256,
        low_water: int = 32,
    ) -> None:
        self._app = app
        # Gates declared dead: their clients have had on_close here, and any
        # event of theirs that still arrives is ignored.
        self._dead_gates: set[str] = set()
        self._metrics = metrics
        self._flow_control = flow_control
        self._high_water = high_water
        self._low_water = low_water
        self._queues: dict[str, _ClientQueue] = {}
        # Queues with a hook running: idle is when there are none (a known
        # client that is merely connected is idle).
        self._busy = 0
        self._idle_waiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        """
        :return: the number of clients the dispatcher knows (connected, or
            with events not yet fully handled).
        """
        return len(self._queues)

    @property
    def busy(self) -> int:
        """
        The number of clients with events not yet fully handled.
        """
        return self._busy

    # -- IClientEvents ---------------------------------------------------------

    def client_connected(self, client_id: str, request: ConnectRequest) -> Deferred[None]:
        """
        Run ``on_connect``; the result fires when it has finished and fails
        with :class:`~wsfabric.errors.Reject` if the application refused the
        client.
        """
        outcome: Deferred[None] = Deferred()
        self._enqueue(client_id, _CONNECT, request, outcome)
        return outcome

    def client_message(self, client_id: str, message: str | bytes) -> None:
        """
        Run ``on_message`` after the client's earlier events.
        """
        self._enqueue(client_id, _MESSAGE, message, None)

    def client_closed(self, client_id: str) -> None:
        """
        Run ``on_close`` after the client's earlier events, then forget it.
        """
        self._enqueue(client_id, _CLOSE, None, None)

    def forget_gate(self, gate_id: str) -> int:
        """
        The gate ``gate_id`` is dead (its lease expired, its clients were
        swept from the index): run ``on_close`` for every client of it that
        this dispatcher knows, after their earlier events, and from now on
        ignore events of its clients (a gate that was only paused sends the
        close events of its old clients when it resumes).

        :return: how many clients are being closed.
        """
        clients = [client_id for client_id in self._queues if gate_of(client_id) == gate_id]
        for client_id in clients:
            self._enqueue(client_id, _CLOSE, None, None)
        self._dead_gates.add(gate_id)
        return len(clients)

    def when_idle(self) -> Deferred[None]:
        """
        :return: a Deferred that fires once no client has events pending (used
            to finish in-flight events before shutting down). Clients that
            are connected but have nothing pending do not hold it up.
        """
        waiter: Deferred[None] = Deferred()
        if self._busy:
            self._idle_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    # -- the queue ---------------------------------------------------------------

    def _enqueue(self, client_id: str, kind: int, argument: Any, outcome: Any) -> None:
        if self._dead_gates and gate_of(client_id) in self._dead_gates:
            if outcome is not None:
                outcome.errback(ClientNotFound(client_id))
            return
        queue = self._queues.get(client_id)
        if queue is None:
            # A client may be new to this dispatcher without a connect event:
            # in a cluster its first backend may have died.
            queue = self._queues[client_id] = _ClientQueue()
        elif queue.closing:
            # Nothing follows on_close.
            return
        if kind == _CLOSE:
            queue.closing = True
        if queue.busy:
            if queue.pending is None:
                queue.pending = deque()
            queue.pending.append((kind, argument, outcome))
            if (
                not queue.paused
                and self._flow_control is not None
                and len(queue.pending) >= self._high_water
            ):
                queue.paused = True
                self._flow_control(client_id, True)
            return
        queue.busy = True
        self._busy += 1
        self._run(client_id, queue, kind, argument, outcome)

    def _run(
        self, client_id: str, queue: _ClientQueue, kind: int, argument: Any, outcome: Any
    ) -> None:
        # Run events until one is still in progress (it returned an unfired
        # Deferred) or the queue is empty; a loop rather than recursion, so a
        # long backlog of synchronous hooks cannot exhaust the stack.
        while True:
            waiting = self._call(client_id, queue, kind, argument, outcome)
            if waiting is not None:
                waiting.addBoth(self._resume, client_id, queue)
                return
            if not self._next(client_id, queue):
                return
            kind, argument, outcome = queue.pending.popleft()  # type: ignore[union-attr]

    def _resume(self, _: object, client_id: str, queue: _ClientQueue) -> None:
        if self._next(client_id, queue):
            kind, argument, outcome = queue.pending.popleft()  # type: ignore[union-attr]
            self._run(client_id, queue, kind, argument, outcome)

    def _next(self, client_id: str, queue: _ClientQueue) -> bool:
        """
        :return: whether another event of this client is waiting; if not, the
            queue is idle (and forgotten after ``on_close``).
        """
        pending = queue.pending
        if pending:
            if queue.paused and len(pending) <= self._low_water:
                queue.paused = False
                self._flow_control(client_id, False)  # type: ignore[misc]
            return True
        queue.busy = False
        self._busy -= 1
        if queue.closing and self._queues.get(client_id) is queue:
            del self._queues[client_id]
        if not self._busy and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return False

    def _call(
        self, client_id: str, queue: _ClientQueue, kind: int, argument: Any, outcome: Any
    ) -> Deferred[Any] | None:
        """
        Call one hook.

        :return: a Deferred to wait for, or ``None`` when the hook is done.
        """
        if kind == _MESSAGE:
            name = "on_message"
            if queue.rejected:
                return None
        elif kind == _CONNECT:
            name = "on_connect"
        else:
            name = "on_close"
            if queue.rejected:
                return None
        try:
            if kind == _MESSAGE:
                result = self._app.on_message(client_id, argument)
            elif kind == _CONNECT:
                result = self._app.on_connect(client_id, argument)
            else:
                result = self._app.on_close(client_id)
            if iscoroutine(result):
                result = Deferred.fromCoroutine(result)
        except Exception:
            self._hook_failed(Failure(), name, client_id, queue, outcome)
            return None
        if isinstance(result, Deferred):
            if result.called and not isinstance(result.result, Deferred):
                # Already finished: no need to wait for it.
                result.addCallbacks(
                    self._hook_done,
                    self._hook_failed,
                    callbackArgs=(outcome,),
                    errbackArgs=(name, client_id, queue, outcome),
                )
                return None
            return result.addCallbacks(
                self._hook_done,
                self._hook_failed,
                callbackArgs=(outcome,),
                errbackArgs=(name, client_id, queue, outcome),
            )
        if outcome is not None:
            outcome.callback(None)
        return None

    def _hook_done(self, _: object, outcome: Deferred[None] | None) -> None:
        if outcome is not None:
            outcome.callback(None)

    def _hook_failed(
        self,
        failure: Failure,
        name: str,
        client_id: str,
        queue: _ClientQueue,
        outcome: Deferred[None] | None,
    ) -> None:
        if name == "on_connect" and failure.check(Reject):
            # Nothing follows for a rejected client: forget it once idle.
            queue.rejected = True
            queue.closing = True
            outcome.errback(failure)  # type: ignore[union-attr]
            return
        self._metrics.hook_failed()
        self._log.failure(
            "{hook} raised for client {client_id}",
            failure,
            hook=name,
            client_id=client_id,
        )
        if outcome is not None:
            outcome.errback(failure)
