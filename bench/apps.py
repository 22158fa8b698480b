"""
wsfabric applications used only by the benchmarks (``--app bench.apps:Name``,
with ``/work/main`` as the working directory).

``examples.echo.app:EchoApp`` serves the echo scenarios; the fan-out
scenarios need an application that puts every client in one group; the
routed scenarios a :class:`~wsfabric.routing.Router` (:class:`RoutedEchoApp`),
and the service-to-service call scenarios one that calls another service
(:class:`RpcBenchApp`).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from zope.interface import implementer

from wsfabric.errors import RouteError
from wsfabric.interfaces import IApplication, IFabric
from wsfabric.routing import Router, route

#: The one group every client of :class:`GroupApp` joins.
GROUP = "g"


@implementer(IApplication)
class GroupApp:
    """
    Every client joins group ``"g"`` when it connects; every message a
    client sends goes to the whole group with ``send_to_group`` (the sender
    included, so the load generator's publisher receives its own copy).

    This is the application of the group fan-out scenarios: standalone it
    measures P4 (group send to 1,000 local clients), on a cluster P3 (the
    send is one Redis publish from the backend, fanned out by every gate).

    :param fabric: the cluster API.
    """

    def __init__(self, fabric: IFabric) -> None:
        self.fabric = fabric

    def on_connect(self, client_id: str, request: Any) -> Any:
        """
        Join the group; the client's messages wait until this has fired.
        """
        return self.fabric.join_group(client_id, GROUP)

    def on_message(self, client_id: str, message: str | bytes) -> Any:
        """
        Send ``message`` to every member, as an application naturally would:
        returning the Deferred (the next message of this client is handed
        over once the send has been accepted).
        """
        return self.fabric.send_to_group(GROUP, message)

    def on_close(self, client_id: str) -> None:
        """
        Nothing to clean up: the gate removes the client from its groups.
        """


@implementer(IApplication)
class AllApp:
    """
    Every message a client sends goes to every connected client with
    ``send_to_all`` (the sender included): P4's broadcast through the
    fabric's own "everyone" path rather than a group.

    :param fabric: the cluster API.
    """

    def __init__(self, fabric: IFabric) -> None:
        self.fabric = fabric

    def on_connect(self, client_id: str, request: Any) -> None:
        """
        Nothing to set up: every client is reached by ``send_to_all``.
        """

    def on_message(self, client_id: str, message: str | bytes) -> Any:
        """
        Send ``message`` to everyone; the Deferred paces this client.
        """
        return self.fabric.send_to_all(message)

    def on_close(self, client_id: str) -> None:
        """
        Nothing to clean up.
        """


class RoutedEchoApp(Router):
    """
    The routed request/response scenarios: route ``bench.echo`` answers a
    request with its own ``data``.

    It declares no protobuf type, so both codecs carry the same JSON value
    (a 64-character string): a ``wsfabric.json`` client in the envelope's
    ``data`` key, a ``wsfabric.proto`` client as UTF-8 JSON in the
    envelope's ``data`` bytes (docs/routing.md). The handler, its argument
    and its result are the same for both, so the codecs are compared on
    the envelope alone.

    :param fabric: the cluster API.
    """

    @route("bench.echo")
    def echo(self, client_id: str | None, data: Any) -> Any:
        """:return: ``data``, as the response (or a service call's result)."""
        return data


class RpcBenchApp(RoutedEchoApp):
    """
    The service-to-service call scenario: two backends run this app, one
    as service ``a``, one as service ``b``. ``bench.rpc`` on ``a`` makes
    ``fabric.call("b", "bench.echo", data)`` calls, ``concurrency`` at a
    time, for ``seconds`` or ``count`` calls (whichever comes first), and
    answers how many it made and their latencies.

    Latency is wall time around each call (``time.perf_counter``), so it
    includes Redis both ways and both backends' work, as a caller sees it.

    :param fabric: the cluster API.
    """

    #: Upper bounds on what a ``bench.rpc`` request may ask for.
    MAX_CALLS = 2_000_000
    MAX_SECONDS = 120.0
    MAX_CONCURRENCY = 1024

    @route("bench.rpc")
    async def rpc(self, client_id: str | None, data: Any) -> dict[str, Any]:
        """
        Run the calls.

        :param data: ``{"service": "b", "count": N, "seconds": S,
            "concurrency": C, "data": <JSON value sent with each call>}``.
        :return: ``{"calls", "errors", "seconds", "p50_us", "p99_us",
            "p999_us", "max_us"}``.
        :raises RouteError: ``bad_request`` for arguments out of bounds.
        """
        if not isinstance(data, dict):
            raise RouteError("bad_request", "bench.rpc takes an object")
        service = data.get("service", "b")
        count, seconds = data.get("count", 1000), data.get("seconds", 5.0)
        concurrency = data.get("concurrency", 1)
        if not (isinstance(service, str) and service
                and isinstance(count, int) and 1 <= count <= self.MAX_CALLS
                and isinstance(seconds, int | float) and 0 < seconds <= self.MAX_SECONDS
                and isinstance(concurrency, int) and 1 <= concurrency <= self.MAX_CONCURRENCY):
            raise RouteError("bad_request", "service, count, seconds or concurrency out of range")
        payload = data.get("data")
        latencies: list[float] = []
        errors: list[str] = []
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            # bounded twice: by the count of calls and by the deadline
            while len(latencies) + len(errors) < count and time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await self.fabric.call(service, "bench.echo", payload, timeout=10.0)
                except Exception as exc:  # counted and reported, not raised
                    # a failed call may fail at once (service_unavailable):
                    # this worker stops rather than spin on the reactor
                    errors.append(type(exc).__name__)
                    return
                latencies.append(time.perf_counter() - t0)

        await DeferredList(
            [Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
            fireOnOneErrback=True, consumeErrors=True,
        )
        elapsed = time.perf_counter() - started
        latencies.sort()

        def quantile(q: float) -> float | None:
            if not latencies:
                return None
            return round(1e6 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

        return {
            "calls": len(latencies),
            "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5],
            "seconds": round(elapsed, 6),
            "p50_us": quantile(0.50),
            "p99_us": quantile(0.99),
            "p999_us": quantile(0.999),
            "max_us": round(1e6 * latencies[-1], 1) if latencies else None,
        }
