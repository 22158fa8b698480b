"""
What both ends of a gate-backend AMP connection share: batching of
fire-and-forget records, remote calls that can never break the connection,
and responders that answer every failure with a declared error.

Two properties of Twisted's AMP shape this module. A failure left unhandled
at the end of a ``callRemote`` Deferred makes AMP drop the whole connection,
and so does an exception a responder raises that its command does not
declare. So callers get a Deferred of their own (:meth:`RemoteCaller.call`),
and responders are wrapped by :func:`contained`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from wsfabric.commands import ERRORS, InternalError
from wsfabric.errors import ClientNotFound, ClusterUnavailable, InvalidArgument

_log = Logger()

#: Flush a batch as soon as it holds this many bytes, without waiting for
#: the end of the reactor turn.
BATCH_BYTES = 256 * 1024


class Batcher:
    """
    Collects records for one peer during a reactor turn and sends them as
    one AMP box.

    :param clock: schedules the flush at the end of the turn.
    :param new_batch: makes an empty batch (with ``size`` and ``encode()``).
    :param send: sends an encoded batch.
    """

    __slots__ = ("_clock", "_new_batch", "_send", "_batch", "_call")

    def __init__(
        self,
        clock: IReactorTime,
        new_batch: Callable[[], Any],
        send: Callable[[bytes], None],
    ) -> None:
        self._clock = clock
        self._new_batch = new_batch
        self._send = send
        self._batch: Any = None
        self._call: IDelayedCall | None = None

    def batch(self) -> Any:
        """
        :return: the open batch, to add a record to; it goes out at the end
            of this reactor turn (or sooner, when it grows large).
        """
        batch = self._batch
        if batch is None:
            batch = self._batch = self._new_batch()
            self._call = self._clock.callLater(0, self.flush)
        elif batch.size >= BATCH_BYTES:
            self.flush()
            return self.batch()
        return batch

    def flush(self) -> None:
        """
        Send the open batch now, if there is one.
        """
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        batch, self._batch = self._batch, None
        if batch is not None and batch.count:
            self._send(batch.encode())

    def discard(self) -> int:
        """
        Drop the open batch (the connection is gone).

        :return: how many records were dropped.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        batch, self._batch = self._batch, None
        return batch.count if batch is not None else 0


class RemoteCaller:
    """
    Makes remote calls on one AMP connection: each with a timeout, at most
    ``max_in_flight`` at once, and failures turned into wsfabric errors on a
    Deferred of the caller's own.

    :param protocol: the AMP connection.
    :param clock: for the timeouts.
    :param timeout: seconds a call may take.
    :param max_in_flight: calls that may wait for an answer at once.
    :param peer: names the peer in error messages.
    :param metrics: where each call's duration is counted
        (:meth:`~wsfabric.metrics.Metrics.amp_call`), or ``None``.
    """

    def __init__(
        self,
        protocol: amp.AMP,
        clock: IReactorTime,
        timeout: float,
        max_in_flight: int,
        peer: str,
        metrics: Any = None,
    ) -> None:
        self._protocol = protocol
        self._clock = clock
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self.peer = peer
        self.in_flight = 0
        self._metrics = metrics

    def call(
        self, command: type[amp.Command], about: str | None = None, **arguments: Any
    ) -> Deferred[dict[str, Any]]:
        """
        Call ``command`` on the peer.

        :param about: the client id the call concerns, for its errors.
        :return: a Deferred of the answer; it fails with
            :class:`~wsfabric.errors.ClusterUnavailable` when the peer is
            gone, busy or too slow, and with the declared error otherwise.
        """
        if self.in_flight >= self._max_in_flight:
            return fail(
                ClusterUnavailable(f"{self.peer}: {self.in_flight} calls in flight already")
            )
        try:
            sent = self._protocol.callRemote(command, **arguments)
        except Exception as e:
            return fail(ClusterUnavailable(f"{self.peer}: cannot send {command.__name__}: {e}"))
        self.in_flight += 1
        sent.addTimeout(self._timeout, self._clock)
        result: Deferred[dict[str, Any]] = Deferred()
        started = self._clock.seconds()
        sent.addCallbacks(self._answered, self._failed, (result, started), None,
                          (result, command, about, started))
        return result

    def _answered(
        self, answer: dict[str, Any], result: Deferred[dict[str, Any]], started: float
    ) -> None:
        self.in_flight -= 1
        if self._metrics is not None:
            self._metrics.amp_call(self._clock.seconds() - started)
        result.callback(answer)

    def _failed(
        self,
        failure: Failure,
        result: Deferred[dict[str, Any]],
        command: type[amp.Command],
        about: str | None,
        started: float,
    ) -> None:
        # Handled here, whatever it is: AMP drops the connection on failures
        # left unhandled at the end of its Deferred.
        self.in_flight -= 1
        if self._metrics is not None:
            self._metrics.amp_call(self._clock.seconds() - started)
        result.errback(self.translate(failure, command, about))

    def translate(
        self, failure: Failure, command: type[amp.Command], about: str | None
    ) -> Failure:
        """
        :return: the wsfabric error a failed call means.
        """
        name = command.__name__
        if failure.check(ClientNotFound):
            # AMP rebuilt the error from its description; name the client.
            return Failure(ClientNotFound(about or failure.value.client_id))
        if failure.check(TimeoutError, CancelledError):
            return Failure(
                ClusterUnavailable(f"{self.peer} did not answer {name} in {self._timeout} s")
            )
        if failure.check(ConnectionLost, ConnectionDone):
            return Failure(ClusterUnavailable(f"connection to {self.peer} lost during {name}"))
        if failure.check(amp.RemoteAmpError):
            code = failure.value.errorCode
            description = failure.value.description
            if code == ERRORS[ClientNotFound]:
                return Failure(ClientNotFound(about or description))
            for error, wire in ERRORS.items():
                if wire == code:
                    return Failure(error(description))
        if failure.check(ClusterUnavailable, InvalidArgument, InternalError):
            return failure
        return Failure(ClusterUnavailable(f"{name} to {self.peer} failed: {failure.value!r}"))


def send_without_delay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm on an AMP link's TCP connection: a gate and a
    backend exchange small boxes that each wait for an answer, and Nagle
    would hold a box back until the previous one is acknowledged (with
    delayed ACKs, milliseconds per message at low rates).

    :param transport: the connection's transport (anything without
        ``setTcpNoDelay``, such as a test transport, is left alone).
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            # Not a TCP socket (a UNIX endpoint): nothing to turn off.
            pass


def contained(responder: Callable[..., Any]) -> Callable[..., Any]:
    """
    Wrap an AMP responder so that any failure it has, raised or in its
    Deferred, reaches the peer as a declared error: the wsfabric errors of
    :data:`~wsfabric.commands.ERRORS` as they are, anything else logged and
    answered as :class:`~wsfabric.commands.InternalError`.
    """

    @functools.wraps(responder)
    def respond(*args: Any, **kwargs: Any) -> Any:
        try:
            result = responder(*args, **kwargs)
        except Exception:
            return _declared(Failure(), responder.__name__)
        if isinstance(result, Deferred):
            return result.addErrback(_declared, responder.__name__)
        return result

    return respond


def _declared(failure: Failure, name: str) -> Failure:
    if failure.check(*ERRORS):
        return failure
    _log.failure("AMP responder {responder} failed", failure, responder=name)
    return Failure(InternalError(f"{name} failed: {failure.getErrorMessage()}"))
