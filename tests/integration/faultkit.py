"""
Helpers of the fault tests (``test_faults.py``): bounded waits, what Redis
still holds about a gate or about clients, the ``wsload`` load generator as
a managed process, and a test case that starts clusters and clients and
always stops them.

Everything here waits with a deadline and names what it waited for when the
deadline passes; every process is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from tests.integration.support import (
    CONTRACT_APP,
    PROJECT,
    CallError,
    ContractClient,
    IntegrationTestCase,
    async_test,
)
from wsfabric.testing.processes import Cluster, Process
from wsfabric.testing.redis import RedisServer

#: The namespace of every test cluster (the default).
NS = "wsfabric"

_REGISTERED = re.compile(r"registered (gate|backend) ([0-9a-f]{16}) in Redis")


def report(scenario: str, what: str, seconds: float, target: str = "") -> None:
    """
    Print one measured time on a line of its own, easy to grep for
    (``FAULT-TIMING``).
    """
    suffix = f" (target {target})" if target else ""
    print(f"\nFAULT-TIMING {scenario}: {what}: {seconds:.2f} s{suffix}", flush=True)


def note(scenario: str, text: str) -> None:
    """
    Print one measured figure that is not a time (``FAULT-FIGURE``).
    """
    print(f"\nFAULT-FIGURE {scenario}: {text}", flush=True)


# -- waiting --------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> float:
    """
    Wait until ``check()`` (a plain or ``async`` callable) returns a true
    value. An exception it raises counts as "not yet" (a call that fails
    while the cluster recovers), and is shown if the deadline passes.

    :return: the seconds it took.
    :raises AssertionError: naming ``what`` and the last value seen, if
        ``timeout`` seconds pass first.
    """
    started = time.monotonic()
    deadline = started + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await asyncio.wait_for(value, max(0.1, deadline - time.monotonic()))
            last = value
            if value:
                return time.monotonic() - started
        except (CallError, ConnectionError, OSError, TimeoutError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        await asyncio.sleep(interval)


async def wait_exit(process: Process, timeout: float) -> tuple[int, float]:
    """
    Wait for ``process`` to exit without blocking the event loop.

    :return: its exit status and the seconds waited.
    :raises AssertionError: if it still runs after ``timeout`` seconds.
    """
    started = time.monotonic()
    while process.poll() is None:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{process.name} still runs after {timeout:g} s")
        await asyncio.sleep(0.01)
    return process.returncode, time.monotonic() - started  # type: ignore[return-value]


async def wait_log(process: Process, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
    """
    Wait until ``process``'s log matches ``pattern`` after character
    ``since``.

    :return: the match.
    """
    regex = re.compile(pattern)
    found: list[re.Match[str]] = []

    def check() -> bool:
        match = regex.search(process.log()[since:])
        if match is not None:
            found.append(match)
        return match is not None

    await eventually(check, timeout, f"{pattern!r} in the log of {process.name}", interval=0.02)
    return found[0]


async def wait_log_since(process: Process, mark: int, pattern: str,
                         timeout: float) -> re.Match[str]:
    """
    :func:`wait_log` for what ``process`` logged after character ``mark``
    (``len(process.log())`` taken before the event).
    """
    return await wait_log(process, pattern, timeout, since=mark)


def node_id(process: Process) -> str:
    """
    :return: the id under which a gate or backend last registered in Redis
        (read from its log).
    """
    found = _REGISTERED.findall(process.log())
    if not found:
        raise AssertionError(
            f"{process.name} has not registered in Redis:\n{process.log()[-2000:]}"
        )
    return found[-1][1]


async def registered_id(process: Process, timeout: float = 10.0) -> str:
    """
    Wait until ``process`` has registered in Redis; return its node id.
    """
    await wait_log(process, _REGISTERED.pattern, timeout)
    return node_id(process)


# -- what Redis holds -----------------------------------------------------------------------


def _texts(values: Iterable[Any]) -> list[str]:
    return sorted(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def gate_residue(redis: RedisServer, gate_id: str) -> dict[str, Any]:
    """
    Everything Redis still holds about gate ``gate_id`` and its clients: keys
    that name it (its lease, its client set, its clients' hashes and group
    sets), its registry entry, its place in the sweeping set, and its
    clients as members of any uid, group or the all-clients set.

    :return: a dict of what is left, empty when nothing is.
    """
    left: dict[str, Any] = {}
    keys = redis.keys(f"{NS}:*{gate_id}*")
    if keys:
        left["keys"] = keys[:10] + ([f"... {len(keys)} in all"] if len(keys) > 10 else [])
    if redis.command("HEXISTS", f"{NS}:nodes", gate_id):
        left["nodes"] = gate_id
    if redis.command("SISMEMBER", f"{NS}:sweeping", gate_id):
        left["sweeping"] = gate_id
    prefix = gate_id + "-"
    for key in [f"{NS}:clients", *redis.keys(f"{NS}:group:*"), *redis.keys(f"{NS}:uid:*")]:
        members = [m for m in _texts(redis.command("SMEMBERS", key)) if m.startswith(prefix)]
        if members:
            left[key] = len(members)
    return left


#: Key patterns that describe clients (everything but the registry,
#: leases, the epoch and the activity clock).
CLIENT_KEY_PATTERNS = (
    "client:*", "cgroups:*", "gate:*", "uid:*", "group:*", "uids", "groups", "clients",
)


def client_keys(redis: RedisServer) -> list[str]:
    """
    :return: every key that records a client or a membership (empty when no
        client is online anywhere).
    """
    found: list[str] = []
    for pattern in CLIENT_KEY_PATTERNS:
        found += redis.keys(f"{NS}:{pattern}")
    return sorted(found)


def numsub(redis: RedisServer, channels: Sequence[str]) -> dict[str, int]:
    """
    :param channels: bus channel names (``group:g``, ``uid:u``, ``all``).
    :return: ``PUBSUB NUMSUB`` of each, by channel name.
    """
    reply = redis.command("PUBSUB", "NUMSUB", *(f"{NS}:ch:{c}" for c in channels))
    return {channels[i // 2]: int(reply[i + 1]) for i in range(0, len(reply), 2)}


# -- wsload -------------------------------------------------------------------------------


def wsload_binary() -> str:
    """
    Build ``bench/build/wsload`` if it is missing or stale (or use the
    binary ``$WSFABRIC_WSLOAD`` names).

    :return: its path.
    :raises SkipTest: if there is no C compiler.
    """
    if os.environ.get("WSFABRIC_WSLOAD"):
        return os.environ["WSFABRIC_WSLOAD"]
    build = subprocess.run(
        [sys.executable, os.path.join(PROJECT, "bench", "build_wsload.py")],
        capture_output=True, text=True, timeout=180, check=False,
    )
    if build.returncode != 0:
        if "no C compiler" in build.stderr:
            raise SkipTest("wsload needs a C compiler")
        raise AssertionError(f"could not build wsload:\n{build.stderr}")
    return build.stdout.strip().splitlines()[-1]


class Wsload(Process):
    """
    One run of the C load generator ``wsload`` (see bench/README.md).

    :param mode: ``idle``, ``connrate``, ...
    :param urls: the WebSocket URLs; connection i goes to ``urls[i % n]``.
    :param options: further wsload options.
    """

    def __init__(self, mode: str, urls: Sequence[str], options: Sequence[str] = (),
                 name: str = "wsload", log_dir: str | None = None) -> None:
        argv = [wsload_binary(), mode]
        for url in urls:
            argv += ["--url", url]
        super().__init__(name, [*argv, *options], cwd=PROJECT, log_dir=log_dir)

    async def wait_event(self, event: str, timeout: float) -> None:
        """
        Wait for the ``EVENT <event>`` line (``all_open``, ``hold_end``).

        :raises AssertionError: if it does not come, or wsload exits first.
        """

        def check() -> bool:
            if self.poll() is not None and f"EVENT {event}" not in self.log():
                raise AssertionError(f"wsload exited early:\n{self.log()[-2000:]}")
            return f"EVENT {event}" in self.log()

        await eventually(check, timeout, f"wsload {event}")

    async def result(self, timeout: float) -> dict[str, Any]:
        """
        Wait for wsload to finish and return its JSON report.
        """
        await wait_exit(self, timeout)
        for line in self.log().splitlines():
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        raise AssertionError(f"wsload printed no report:\n{self.log()[-2000:]}")


def with_params(url: str, **params: str) -> str:
    """
    :return: ``url`` with query parameters (read by ContractApp's
        ``on_connect``: ``bind``, ``join``, ``sleep``).
    """
    return f"{url}?{urlencode(params)}" if params else url


def raise_nofile(wanted: int) -> int:
    """
    Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted`` (the
    processes it starts inherit it: a gate holding 10,000 clients needs
    more than the usual 1,024).

    :return: the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the test case ----------------------------------------------------------------------------


def scenario(
    timeout: float,
) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Deferred[None]]]:
    """
    Like :func:`~tests.integration.support.async_test` (the body is bounded
    by ``timeout`` seconds), and when the body fails, the logs of the
    test's processes are printed.
    """

    def decorate(method: Callable[..., Awaitable[None]]) -> Callable[..., Deferred[None]]:
        @functools.wraps(method)
        async def run(self: FaultTestCase, *args: Any, **kwargs: Any) -> None:
            try:
                await method(self, *args, **kwargs)
            except BaseException:
                self.dump_logs()
                raise

        return async_test(timeout)(run)

    return decorate


class FaultTestCase(IntegrationTestCase):
    """
    Starts clusters, wsload runs and WebSocket clients that are always
    stopped or closed after the test, failed or not.
    """

    timeout = 300

    def setUp(self) -> None:
        self._clients: list[ContractClient] = []
        self._clusters: list[Cluster] = []

    def cluster(
        self,
        gates: int = 2,
        backends: int = 1,
        lease: float | None = None,
        gate_options: Sequence[str] = (),
        backend_options: Sequence[str] = (),
    ) -> Cluster:
        """
        Start a cluster of ContractApp backends and gates with its own
        redis-server; it is stopped after the test.

        :param lease: ``--lease`` for every node (``None``: the default, 5 s).
        """
        common = ["--lease", f"{lease:g}"] if lease is not None else []
        cluster = Cluster(
            CONTRACT_APP, gates=gates, backends=backends, cwd=PROJECT,
            gate_options=[*common, *gate_options],
            backend_options=[*common, *backend_options],
        )
        self.addCleanup(cluster.stop)
        # Cleanups run last-in first-out: clients close before the cluster
        # stops (a gate stopping waits for its clients' close handshakes,
        # which a blocked event loop could not answer).
        self.addCleanup(self._close_clients)
        try:
            cluster.start()
        except BaseException:
            self._print_logs(cluster)
            raise
        self._clusters.append(cluster)
        print(f"\ncluster logs: {cluster.log_dir}", flush=True)
        return cluster

    def dump_logs(self) -> None:
        """
        Print the end of every log of the test's processes (called when a
        scenario fails: they tell why).
        """
        for cluster in self._clusters:
            self._print_logs(cluster)

    @staticmethod
    def _print_logs(cluster: Cluster) -> None:
        for process in [*cluster.gates, *cluster.backends]:
            print(f"\n---- {process.name} ({process.log_path}) ----\n{process.log()[-4000:]}")

    def wsload(self, mode: str, urls: Sequence[str], options: Sequence[str] = (),
               name: str = "wsload") -> Wsload:
        """
        Start wsload; it is stopped (by pid) after the test.
        """
        load = Wsload(mode, urls, options, name=name)
        self.addCleanup(load.stop, 5)
        load.start()
        return load

    async def client(self, url: str, **params: str) -> ContractClient:
        """
        Connect a ContractClient (closed after the test).
        """
        client = await ContractClient.connect(with_params(url, **params))
        self._clients.append(client)
        return client

    def _close_clients(self) -> Deferred[None]:
        clients, self._clients = self._clients, []

        async def close_all() -> None:
            await asyncio.gather(*(_close_quietly(c) for c in clients))

        return Deferred.fromFuture(asyncio.ensure_future(close_all()))


async def _close_quietly(client: ContractClient) -> None:
    # The server may be dead or frozen: do not wait for its close frame long.
    try:
        await asyncio.wait_for(client.connection.close(), 2)
    except Exception:
        transport = getattr(client.connection, "transport", None)
        if transport is not None:
            transport.abort()
    client._reader.cancel()


async def call_all(clients: Sequence[ContractClient], name: str, *args: Any,
                   timeout: float = 10.0) -> list[Any]:
    """
    Make the same call through every client at once.
    """
    return list(await asyncio.gather(*(c.call(name, *args, timeout=timeout) for c in clients)))


async def failing_call(
    client: ContractClient, name: str, *args: Any, timeout: float = 10.0
) -> tuple[str, float]:
    """
    Make a call that is expected to fail.

    :return: the name of the server-side error and the seconds it took.
    :raises AssertionError: if it succeeds.
    """
    started = time.monotonic()
    try:
        result = await client.call(name, *args, timeout=timeout)
    except CallError as e:
        return e.name, time.monotonic() - started
    raise AssertionError(f"{name}{args!r} succeeded with {result!r}")


__all__ = [
    "NS",
    "FaultTestCase",
    "Wsload",
    "call_all",
    "client_keys",
    "eventually",
    "failing_call",
    "gate_residue",
    "node_id",
    "note",
    "numsub",
    "raise_nofile",
    "registered_id",
    "report",
    "scenario",
    "wait_exit",
    "wait_log",
    "wait_log_since",
    "with_params",
]
