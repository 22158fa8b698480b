"""
Quick benchmark driver: wsfabric against the raw Autobahn baselines, in one run.

For each repetition and each server of a scenario it starts the server on a
free loopback port (pinned to CPU 0 with ``taskset`` when there are two
cores), waits until the port accepts, runs the C load generator ``wsload``
(pinned to CPU 1), samples the server's CPU and RSS with psutil at the
moments wsload reports on its stderr, stops the server by pid, and appends
one JSON line per run to ``bench/results/<scenario>-<time>.jsonl``, then one
summary line per scenario: each server's metric (min/median/max) and the
ratio to the baseline server measured in the same run.

Absolute figures drift between runs and machines; the ratios are what
TARGETS.md states. The machine may be shared, so the CPU used by everything
else during the measured window is recorded as ``other_cpu_pct``, and a
warning is printed when it is high enough to spoil the figures.

    python bench/run_quick.py --list
    python bench/run_quick.py echo --reps 3
    python bench/run_quick.py idle --servers autobahn-echo

Standard library and psutil only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_wsload import ensure_wsload  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
# Servers run with the interpreter (and its venv's scripts) that runs the
# driver: bench/.venv under ``python -m bench run``.
_BIN = Path(sys.executable).parent
PYTHON = sys.executable
TWISTD = str(_BIN / "twistd") if (_BIN / "twistd").exists() else "twistd"
DAPHNE = str(_BIN / "daphne") if (_BIN / "daphne").exists() else "daphne"
PYSPY = str(_BIN / "py-spy") if (_BIN / "py-spy").exists() else "py-spy"

SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 10.0
SETTLE_S = 1.0  # after the port accepts: let imports and start-up garbage settle
RSS_DELAY_S = 3.0  # idle: RSS is sampled this long after the last handshake
LOADGEN_GRACE_S = 60.0  # beyond wsload's own hard deadline
NOISY_OTHER_CPU_PCT = 15.0  # a run is "noisy" when the rest of the machine used more
QUIET_BUSY_PCT = 15.0  # before a run: wait until the machine is this idle ...
QUIET_PROBE_S = 1.0  # ... over a probe this long


# --------------------------------------------------------------------------
# What can be measured: servers and scenarios. Add entries here; the full
# P1-P8 suite of TARGETS.md extends these two tables.


@dataclass(frozen=True)
class ClusterSpec:
    """
    A wsfabric cluster: a private ``redis-server``, ``backends`` ×
    ``twistd wsfabric-backend --app APP`` and ``gates`` × ``twistd
    wsfabric-gate``, all with one fresh ``WSFABRIC_CLUSTER_SECRET``. The
    load generator's connections alternate over the gates (connection 0,
    the broadcast publisher, on the first). Measuring starts once every
    gate's log says ``backend <id> ready`` for every backend.
    """

    app: str
    gates: int = 1
    backends: int = 1
    #: ``--service`` of each backend, in order (missing ones: the default).
    services: tuple[str, ...] = ()
    #: extra options of every gate (``{jwt_secret}``, ``{jwt_public_key}`` filled in).
    gate_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Server:
    """
    What is under test: one command, several copies of it, or a cluster.

    :ivar argv: the command; ``{port}`` is replaced by its port,
        ``{redis_port}`` and ``{redis_url}`` by the private Redis's.
    :ivar path: the WebSocket path the load generator connects to.
    :ivar cwd: working directory of the command(s).
    :ivar env: extra environment variables.
    :ivar copies: how many processes of ``argv`` to start, each on its own
        port; the load generator's connections alternate over them.
    :ivar redis: start a private ``redis-server`` first.
    :ivar cluster: a wsfabric cluster instead of ``argv`` (implies Redis).
    :ivar wsload: wsload flags and values that replace the scenario's for
        this server (e.g. ``("-c", "500")``).
    :ivar wsload_extra: arguments appended to wsload's as they are
        (``--binary``, ``--subprotocol NAME``); ``{proto_echo_payload}``
        becomes a file holding a protobuf ``Envelope`` request for route
        ``bench.echo`` whose data is a ``-s``-character JSON string.
    :ivar driver: a load driver that replaces wsload for this server: the
        command, run (pinned to CPU 1) with the scenario's wsload arguments,
        ``{redis_url}`` filled in and ``WSFABRIC_CLUSTER_SECRET`` in its
        environment; it prints wsload-shaped JSON and EVENT lines
        (``bench/rpc_driver.py``).
    :ivar auth: ``"hs256"`` or ``"es256"``: fresh JWT keys for every run
        (``{jwt_secret}``, ``{jwt_public_key}`` in the command and gate
        options) and one token per URL: wsload gets
        :data:`AUTH_URLS` URLs per gate, each ``?token=`` for its own uid,
        so with ``-c`` up to that many every concurrent connection has its
        own uid.
    """

    argv: tuple[str, ...] = ()
    path: str = "/"
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    copies: int = 1
    redis: bool = False
    cluster: ClusterSpec | None = None
    wsload: tuple[str, ...] = ()
    wsload_extra: tuple[str, ...] = ()
    driver: tuple[str, ...] | None = None
    auth: str | None = None

    def describe(self) -> str:
        """:return: one line for ``--list``."""
        if self.cluster is not None:
            c = self.cluster
            services = f" (services {', '.join(c.services)})" if c.services else ""
            auth = f", JWT {self.auth}" if self.auth else ""
            driver = f", driven by {' '.join(self.driver[1:])}" if self.driver else ""
            return (
                f"path {self.path}: cluster of {c.gates} gate(s) + {c.backends} backend(s) "
                f"--app {c.app}{services} + redis-server{auth}{driver}"
            )
        extra = f"{self.copies} x " if self.copies > 1 else ""
        extra += "(+ redis-server) " if self.redis else ""
        over = " ".join((*self.wsload, *self.wsload_extra))
        over = f" [wsload {over}]" if over else ""
        return f"path {self.path}: {extra}{' '.join(self.argv)}{over}"


def _twistd_standalone(app: str) -> tuple[str, ...]:
    return (
        TWISTD,
        "-n",
        "--pidfile=",
        "wsfabric",
        "--app",
        app,
        "--listen",
        "tcp:{port}:interface=127.0.0.1",
    )


#: The prefix and suffix that put wsload's message body into a JSON
#: envelope for route ``bench.echo``: its data is a ``-s``-character string.
ROUTED_JSON = (
    "--subprotocol", "wsfabric.json",
    "--prefix", '{"route":"bench.echo","id":1,"data":"', "--suffix", '"}',
)
#: The same request in the protobuf codec, built once per run by
#: :func:`proto_echo_payload`.
ROUTED_PROTO = (
    "--subprotocol", "wsfabric.proto", "--binary", "--payload-file", "{proto_echo_payload}",
)
#: JWT scenarios: tokens (uids) per gate URL; wsload takes at most 16 URLs.
AUTH_URLS = 16
#: Options that make a standalone server or a gate require a JWT.
JWT_OPTIONS = {
    "hs256": ("--jwt-secret", "{jwt_secret}"),
    "es256": ("--jwt-public-key", "{jwt_public_key}"),
}
_RPC_DRIVER = (PYTHON, str(BENCH / "rpc_driver.py"), "--redis", "{redis_url}")


_REDIS_GROUP_PEER = (
    PYTHON,
    str(BENCH / "peers" / "twisted_redis_group.py"),
    "--port",
    "{port}",
    "--redis-port",
    "{redis_port}",
)


SERVERS: dict[str, Server] = {
    "autobahn-echo": Server(
        (PYTHON, str(BENCH / "peers" / "autobahn_echo.py"), "--port", "{port}")
    ),
    "autobahn-broadcast-naive": Server(
        (
            PYTHON,
            str(BENCH / "peers" / "autobahn_broadcast.py"),
            "--port",
            "{port}",
            "--mode",
            "naive",
        )
    ),
    "autobahn-broadcast-prepared": Server(
        (
            PYTHON,
            str(BENCH / "peers" / "autobahn_broadcast.py"),
            "--port",
            "{port}",
            "--mode",
            "prepared",
        )
    ),
    "wsfabric-echo": Server(_twistd_standalone("examples.echo.app:EchoApp"), path="/ws"),
    "wsfabric-cluster-echo": Server(
        path="/ws", cluster=ClusterSpec("examples.echo.app:EchoApp", gates=1, backends=1)
    ),
    # Routed request/response: a Router's bench.echo route, JSON and protobuf.
    **{
        f"wsfabric-routed-{codec}": Server(
            _twistd_standalone("bench.apps:RoutedEchoApp"), path="/ws", wsload_extra=extra
        )
        for codec, extra in (("json", ROUTED_JSON), ("proto", ROUTED_PROTO))
    },
    **{
        f"wsfabric-cluster-routed-{codec}": Server(
            path="/ws", cluster=ClusterSpec("bench.apps:RoutedEchoApp"), wsload_extra=extra
        )
        for codec, extra in (("json", ROUTED_JSON), ("proto", ROUTED_PROTO))
    },
    # Service-to-service calls: backend "a" calls backend "b" through Redis,
    # driven from outside the cluster (no gate, no WebSocket).
    "wsfabric-rpc": Server(
        cluster=ClusterSpec("bench.apps:RpcBenchApp", gates=0, backends=2, services=("a", "b")),
        driver=_RPC_DRIVER,
    ),
    # Connection rate with client authentication (JWT in ?token=).
    **{
        f"wsfabric-echo-jwt-{alg}": Server(
            _twistd_standalone("examples.echo.app:EchoApp") + options, path="/ws", auth=alg
        )
        for alg, options in JWT_OPTIONS.items()
    },
    **{
        f"wsfabric-cluster-echo-jwt-{alg}": Server(
            path="/ws",
            cluster=ClusterSpec("examples.echo.app:EchoApp", gate_options=options),
            auth=alg,
        )
        for alg, options in JWT_OPTIONS.items()
    },
    # Group fan-out: every client joins group "g", a message goes to the group.
    "wsfabric-group": Server(_twistd_standalone("bench.apps:GroupApp"), path="/ws"),
    "wsfabric-cluster-group": Server(
        path="/ws", cluster=ClusterSpec("bench.apps:GroupApp", gates=2, backends=1)
    ),
    "wsfabric-cluster-group-2b": Server(
        path="/ws", cluster=ClusterSpec("bench.apps:GroupApp", gates=2, backends=2)
    ),
    # The hand-written P3 baseline: 2 processes + Redis, clients alternating.
    "twisted-redis-group": Server(_REDIS_GROUP_PEER, copies=2, redis=True),
    # The same with 500 clients, as perf-baseline.md section e measured it.
    "twisted-redis-group-500": Server(
        _REDIS_GROUP_PEER, copies=2, redis=True, wsload=("-c", "500")
    ),
    # P4 with send_to_all instead of a group.
    "wsfabric-all": Server(_twistd_standalone("bench.apps:AllApp"), path="/ws"),
    # P3 peers: python-socketio + AsyncRedisManager on aiohttp, 2 processes +
    # Redis; wsload speaks Socket.IO (join the namespace, events "m").
    "socketio-group": Server(
        (
            PYTHON,
            str(BENCH / "peers" / "socketio_group.py"),
            "--port",
            "{port}",
            "--redis-port",
            "{redis_port}",
        ),
        path="/socket.io/?EIO=4&transport=websocket",
        copies=2,
        redis=True,
        wsload=("--hello", "40", "--prefix", '42["m","', "--suffix", '"]'),
    ),
    # Django Channels + channels_redis under daphne, 2 processes + Redis:
    # the pub/sub layer (one PUBLISH per group send) and the default layer.
    **{
        name: Server(
            (DAPHNE, "-b", "127.0.0.1", "-p", "{port}", "channels_group:application"),
            path="/ws",
            cwd=BENCH / "peers",
            env={"BENCH_REDIS_PORT": "{redis_port}", "BENCH_CHANNEL_LAYER": layer},
            copies=2,
            redis=True,
        )
        for name, layer in (("channels-group", "pubsub"), ("channels-group-core", "core"))
    },
}


@dataclass(frozen=True)
class Scenario:
    """
    One comparison: the same wsload invocation against several servers.

    :ivar description: what is measured, for the report.
    :ivar wsload: wsload mode and arguments (without ``--url``).
    :ivar servers: names in :data:`SERVERS`, measured in turn every repetition.
    :ivar baseline: the server the others are divided by.
    :ivar metric: the per-run figure compared (a key of the run record).
    :ivar higher_is_better: direction of ``metric``.
    :ivar target: the TARGETS.md line this scenario checks.
    :ivar comparisons: further ``(server, denominator)`` ratios reported
        beside every server's ratio to ``baseline``.
    """

    description: str
    wsload: tuple[str, ...]
    servers: tuple[str, ...]
    baseline: str
    metric: str
    higher_is_better: bool
    target: str
    comparisons: tuple[tuple[str, str], ...] = ()


SCENARIOS: dict[str, Scenario] = {
    "echo": Scenario(
        description="echo throughput, 100 conns x 8 in flight, 64-byte text, 10 s",
        wsload=("echo", "-c", "100", "-w", "8", "-s", "64", "-d", "10", "--warmup", "2"),
        servers=("autobahn-echo", "wsfabric-echo"),
        baseline="autobahn-echo",
        metric="msgs_per_s",
        higher_is_better=True,
        target="P1: standalone echo >= 80 % of raw Autobahn/Twisted",
    ),
    "idle": Scenario(
        description="idle memory, 5,000 connections, RSS 3 s after the last handshake",
        wsload=("idle", "-c", "5000", "-k", "50", "--hold", "6"),
        servers=("autobahn-echo", "wsfabric-echo"),
        baseline="autobahn-echo",
        metric="rss_kib_per_conn",
        higher_is_better=False,
        target="P5: <= 12 KiB per connection (raw Autobahn 8.9 KiB at 10k)",
    ),
    "latency": Scenario(
        description="latency, 100 conns, open loop 2,000 msg/s in total, 10 s",
        wsload=("latency", "-c", "100", "-r", "2000", "-s", "64", "-d", "10", "--warmup", "2"),
        servers=("autobahn-echo", "wsfabric-echo"),
        baseline="autobahn-echo",
        metric="latency_p50_us",
        higher_is_better=False,
        target="P6 (standalone preview): p50 <= 2 x raw Autobahn, p99 <= 3 ms",
    ),
    "connrate": Scenario(
        description="connect + handshake + close cycles, 16 concurrent, 10 s",
        wsload=("connrate", "-c", "16", "-d", "10", "--warmup", "1"),
        servers=("autobahn-echo", "wsfabric-echo"),
        baseline="autobahn-echo",
        metric="cycles_per_s",
        higher_is_better=True,
        target="P8: >= 2,000 connections per second per gate core",
    ),
    "cluster-echo": Scenario(
        description="echo client -> gate -> AMP -> backend -> AMP -> gate -> client "
        "(1 gate + 1 backend + redis-server, all on CPU 0), 100 conns x 8 in flight, "
        "64-byte text, 10 s; beside standalone wsfabric and raw Autobahn",
        wsload=("echo", "-c", "100", "-w", "8", "-s", "64", "-d", "10", "--warmup", "2"),
        servers=("autobahn-echo", "wsfabric-echo", "wsfabric-cluster-echo"),
        baseline="autobahn-echo",
        metric="msgs_per_s",
        higher_is_better=True,
        target="P2: cluster echo >= 60 % of raw Autobahn/Twisted (45 % floor); "
        "P1: standalone >= 80 %",
        comparisons=(("wsfabric-cluster-echo", "wsfabric-echo"),),
    ),
    **{
        name: Scenario(
            description=f"group fan-out to 1,000 clients in one group, conn 0 publishes and "
            f"gets its own copy, {window} publish(es) outstanding, 10 s: wsfabric cluster "
            "(2 gates + 1 backend + redis-server, clients alternating) and standalone, "
            "beside the hand-written Twisted+txredisapi peer (2 processes + redis-server; "
            "1,000 and 500 clients) and raw Autobahn prepared broadcast (one process)",
            wsload=(
                "broadcast",
                "-c",
                "1000",
                "--pub-window",
                window,
                "-s",
                "64",
                "-d",
                "10",
                "--warmup",
                "3",
            ),
            servers=(
                "twisted-redis-group",
                "wsfabric-cluster-group",
                "wsfabric-group",
                "autobahn-broadcast-prepared",
                "twisted-redis-group-500",
            ),
            baseline="twisted-redis-group",
            metric="deliveries_per_s",
            higher_is_better=True,
            target="P3: cluster >= 90 % of the Twisted+txredisapi baseline; "
            "P4: standalone group send >= 90 % of prepared broadcast",
            comparisons=(
                ("wsfabric-group", "autobahn-broadcast-prepared"),
                ("wsfabric-cluster-group", "autobahn-broadcast-prepared"),
                ("twisted-redis-group", "autobahn-broadcast-prepared"),
                ("wsfabric-cluster-group", "twisted-redis-group-500"),
            ),
        )
        for name, window in (("group", "1"), ("group-w8", "8"))
    },
    "broadcast": Scenario(
        description="broadcast to 1,000 conns, 8 publishes outstanding, 10 s (baselines only)",
        wsload=("broadcast", "-c", "1000", "--pub-window", "8", "-s", "64", "-d", "10"),
        servers=("autobahn-broadcast-prepared", "autobahn-broadcast-naive"),
        baseline="autobahn-broadcast-prepared",
        metric="deliveries_per_s",
        higher_is_better=True,
        target="P4 baseline: prepareMessage broadcast (naive loop for reference)",
    ),
}


# --------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """:return: a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int, enabled: bool) -> list[str]:
    """
    :param cpu: the CPU to pin to.
    :param enabled: whether pinning was asked for.
    :return: a ``taskset`` prefix, or nothing when unavailable or single-core.
    """
    if enabled and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def raise_nofile() -> None:
    """Raise our soft descriptor limit to the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """
    Wait until ``port`` accepts a TCP connection.

    :raises RuntimeError: if the server exits or ``timeout`` passes first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not accept within {timeout:.0f} s")


def process_tree(pid: int) -> list[psutil.Process]:
    """:return: the process ``pid`` and its descendants (a server may fork workers)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_process(proc: subprocess.Popen[bytes], timeout: float = SERVER_STOP_TIMEOUT_S) -> None:
    """
    Stop a process we started, by pid: SIGTERM, then SIGKILL after ``timeout``.
    Its descendants (collected first) get the same treatment.
    """
    family = process_tree(proc.pid)[1:]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for child in family:
        try:
            child.terminate()
            child.wait(timeout)
        except psutil.TimeoutExpired:
            child.kill()
        except psutil.NoSuchProcess:
            pass


@dataclass
class Sample:
    """Server and machine counters at one instant."""

    wall: float
    server_user: float
    server_sys: float
    server_rss: int
    machine_busy: float  # CPU-seconds spent busy by all CPUs
    by_role: dict[str, float] = field(default_factory=dict)  # user+sys per server process
    rss_by_role: dict[str, int] = field(default_factory=dict)

    @property
    def holder_rss(self) -> int:
        """RSS of the processes that hold the WebSockets (servers, gates)."""
        return sum(v for role, v in self.rss_by_role.items() if is_holder(role))

    @property
    def holder_cpu(self) -> float:
        """CPU seconds of the processes that hold the WebSockets."""
        return sum(v for role, v in self.by_role.items() if is_holder(role))


def is_holder(role: str) -> bool:
    """:return: whether a role's process holds client WebSockets (not Redis, not a backend)."""
    return role.startswith(("server", "gate"))


def take_sample(pids: dict[str, int]) -> Sample:
    """
    :param pids: the server processes by role (``server``, ``gate0``,
        ``backend0``, ``redis``...); each counts with its descendants.
    :return: their counters, summed and per role, and the machine's.
    """
    user = sys_ = 0.0
    rss = 0
    by_role: dict[str, float] = {}
    rss_by_role: dict[str, int] = {}
    for role, pid in pids.items():
        role_cpu = 0.0
        role_rss = 0
        for proc in process_tree(pid):
            try:
                cpu = proc.cpu_times()
                user += cpu.user
                sys_ += cpu.system
                role_cpu += cpu.user + cpu.system
                role_rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        by_role[role] = role_cpu
        rss_by_role[role] = role_rss
        rss += role_rss
    machine = psutil.cpu_times()
    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    return Sample(time.monotonic(), user, sys_, rss, busy, by_role, rss_by_role)


def pin_pid(pid: int, cpu: int, enabled: bool) -> None:
    """
    Pin every thread of a running process to ``cpu`` (for processes started
    by library code without ``taskset``, such as the private redis-server).
    """
    if not pin(cpu, enabled):
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError:
            pass


# --------------------------------------------------------------------------
# Per-run inputs: JWT keys and tokens, the protobuf request


@dataclass
class Credentials:
    """
    Fresh JWT keys for one run and one token per uid (``u0``, ``u1``...),
    valid for an hour.

    :ivar values: placeholders for commands (``{jwt_secret}``,
        ``{jwt_public_key}``: a PEM file).
    :ivar tokens: the tokens, one per uid.
    """

    values: dict[str, str]
    tokens: list[str]

    @classmethod
    def make(cls, algorithm: str, directory: Path, count: int = AUTH_URLS) -> Credentials:
        """
        :param algorithm: ``"hs256"`` (a 64-character secret) or ``"es256"``
            (a P-256 key pair; the public key written to ``directory``).
        :return: the keys and ``count`` tokens.
        """
        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        claims = [{"sub": f"u{i}", "exp": int(time.time()) + 3600} for i in range(count)]
        if algorithm == "hs256":
            secret = secrets.token_hex(32)
            tokens = [jwt.encode(c, secret, algorithm="HS256") for c in claims]
            return cls({"{jwt_secret}": secret}, tokens)
        if algorithm != "es256":
            raise ValueError(f"unknown JWT algorithm {algorithm!r}")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path = directory / f"jwt-es256-{os.getpid()}-{secrets.token_hex(4)}.pub"
        path.write_bytes(pem)
        tokens = [jwt.encode(c, key, algorithm="ES256") for c in claims]
        return cls({"{jwt_public_key}": str(path)}, tokens)


def proto_echo_payload(directory: Path, size: int) -> Path:
    """
    Write the protobuf request of the routed scenarios once: an ``Envelope``
    for route ``bench.echo``, id 1, whose data is the JSON string of ``size``
    characters that the JSON codec's request carries (``@`` + 16 hex digits
    where wsload puts its stamp, then ``x``), as UTF-8 JSON bytes: the
    route declares no protobuf type (docs/routing.md).

    :return: the file.
    """
    from wsfabric.routing.envelope_pb2 import Envelope

    body = "@" + "0" * 16 + "x" * max(0, size - 17)
    data = json.dumps(body).encode()
    path = directory / f"proto-echo-{size}.bin"
    path.write_bytes(Envelope(route="bench.echo", id=1, data=data).SerializeToString())
    return path


def fill(text: str, values: dict[str, str]) -> str:
    """:return: ``text`` with every ``{placeholder}`` of ``values`` replaced."""
    for key, value in values.items():
        text = text.replace(key, value)
    return text


# --------------------------------------------------------------------------
# A deployment: the server side of one run (one process, copies, a cluster)


@dataclass
class Member:
    """One process of a deployment."""

    role: str
    pid: int
    cmd: list[str]
    log: str | None
    stop: Callable[[], None]
    poll: Callable[[], int | None]


class Deployment:
    """
    Starts the processes of one :class:`Server` (pinned to CPU 0), knows their
    pids by role and the WebSocket URLs to load, and stops them all by pid.

    :param server: what to start.
    :param log_stem: server logs go to ``<log_stem>-<role>.log``.
    :param pinning: whether to pin to CPU 0.
    """

    def __init__(self, server: Server, log_stem: Path, pinning: bool) -> None:
        self.server = server
        self.log_stem = log_stem
        self.pinning = pinning
        self.members: list[Member] = []
        self.urls: list[str] = []
        self.redis_port: int | None = None
        self.cluster_secret: str | None = None
        self.credentials: Credentials | None = None

    @property
    def pids(self) -> dict[str, int]:
        """The server processes by role."""
        return {m.role: m.pid for m in self.members}

    def start(self) -> None:
        """
        Start everything and wait until it serves.

        :raises RuntimeError: if anything fails to start in time (what did
            start stays in :attr:`members`: call :meth:`stop`).
        """
        if self.server.auth is not None:
            self.credentials = Credentials.make(self.server.auth, self.log_stem.parent)
        if self.server.redis or self.server.cluster is not None:
            self._start_redis()
        if self.server.cluster is not None:
            self._start_cluster(self.server.cluster)
        else:
            for copy in range(self.server.copies):
                self._start_command("server" if self.server.copies == 1 else f"server{copy}")
        if self.credentials is not None:
            # one URL per uid, every gate's: with -c <= AUTH_URLS, connection
            # i always carries uid i, and no two open at once share a uid
            self.urls = [f"{url}?token={token}" for token in self.credentials.tokens
                         for url in self.urls]

    def dead(self) -> str | None:
        """:return: a message if a server process has exited, else ``None``."""
        for member in self.members:
            status = member.poll()
            if status is not None:
                return f"{member.role} exited during the run (status {status})"
        return None

    def stop(self) -> None:
        """Stop every process by pid, the last started first (Redis last)."""
        for member in reversed(self.members):
            try:
                member.stop()
            except Exception as exc:  # keep stopping the others
                print(f"    warning: stopping {member.role} (pid {member.pid}): {exc}", flush=True)

    def log_tail(self, size: int = 2000) -> dict[str, str]:
        """:return: the end of each server log, by role."""
        tails = {}
        for member in self.members:
            if member.log:
                try:
                    tails[member.role] = Path(member.log).read_text(errors="replace")[-size:]
                except OSError:
                    pass
        return tails

    # -- the parts

    def _start_redis(self) -> None:
        from wsfabric.testing.redis import RedisServer

        redis = RedisServer(start_timeout=SERVER_START_TIMEOUT_S)
        try:
            redis.start()  # waits for PING; stopped by pid (SIGTERM, SIGKILL after 3 s)
        except BaseException:
            redis.stop()
            raise
        pin_pid(redis.pid, 0, self.pinning)
        self.redis_port = redis.port
        process = redis.process
        self.members.append(
            Member(
                "redis",
                redis.pid,
                ["redis-server", "--port", str(redis.port)],
                None,
                redis.stop,
                lambda: process.poll() if process is not None else None,
            )
        )

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def values(self) -> dict[str, str]:
        """Placeholders for commands: Redis, JWT keys (``{port}`` is per process)."""
        values = {"{redis_port}": str(self.redis_port), "{redis_url}": self.redis_url}
        if self.credentials is not None:
            values.update(self.credentials.values)
        return values

    def _start_command(self, role: str) -> None:
        port = free_port()
        values = {"{port}": str(port), **self.values}
        argv = [fill(arg, values) for arg in self.server.argv]
        env = {key: fill(value, values) for key, value in self.server.env.items()}
        log_path = Path(f"{self.log_stem}-{role}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                pin(0, self.pinning) + argv,
                cwd=self.server.cwd,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.members.append(
            Member(role, proc.pid, argv, str(log_path), lambda: stop_process(proc), proc.poll)
        )
        wait_for_port(port, proc, SERVER_START_TIMEOUT_S)
        self.urls.append(f"ws://127.0.0.1:{port}{self.server.path}")

    def _start_cluster(self, spec: ClusterSpec) -> None:
        from wsfabric.testing.processes import BackendNode, GateNode

        secret = self.cluster_secret = secrets.token_hex(16)
        log_dir = str(self.log_stem.parent)
        stem = self.log_stem.name
        common = {"cwd": str(self.server.cwd), "env": self.server.env, "log_dir": log_dir}
        nodes: list[tuple[str, Any]] = []
        for i in range(spec.backends):
            service = ("--service", spec.services[i]) if i < len(spec.services) else ()
            nodes.append(
                (
                    f"backend{i}",
                    BackendNode(
                        spec.app, self.redis_url, secret, options=service,
                        name=f"{stem}-backend{i}", **common
                    ),
                )
            )
        gate_options = [fill(arg, self.values) for arg in spec.gate_options]
        for i in range(spec.gates):
            nodes.append(
                (f"gate{i}", GateNode(self.redis_url, secret, options=gate_options,
                                      name=f"{stem}-gate{i}", **common))
            )
        gates = []
        for role, node in nodes:
            node.argv = pin(0, self.pinning) + node.argv
            try:
                node.start(timeout=SERVER_START_TIMEOUT_S)
            except (TimeoutError, RuntimeError) as exc:
                node.stop(SERVER_STOP_TIMEOUT_S)
                raise RuntimeError(f"{role} did not start: {str(exc)[:1500]}") from None
            finally:
                if node.poll() is None:
                    self.members.append(
                        Member(
                            role,
                            node.pid,
                            node.argv,
                            node.log_path,
                            lambda node=node: node.stop(SERVER_STOP_TIMEOUT_S),
                            node.poll,
                        )
                    )
            if role.startswith("gate"):
                gates.append(node)
                self.urls.append(node.ws_url)
        # Every gate must be linked with every backend before anything is
        # measured (Cluster.wait_linked: the gate's "backend <id> ready" lines).
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not all(gate.backends_ready() >= spec.backends for gate in gates):
            message = self.dead()
            if message:
                raise RuntimeError(message)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"gates not linked to all {spec.backends} backend(s) within "
                    f"{SERVER_START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.1)


def wait_until_quiet(max_wait_s: float) -> float:
    """
    Wait (at most ``max_wait_s``) until the machine's total busy CPU falls
    below :data:`QUIET_BUSY_PCT` of one core, so another session's work does
    not share our pinned cores.

    :return: the busy percentage of the last probe.
    """
    started = time.monotonic()
    deadline = started + max_wait_s
    busy = sum(psutil.cpu_percent(interval=QUIET_PROBE_S, percpu=True))
    if busy < QUIET_BUSY_PCT:
        return busy
    print(f"    (machine busy: {busy:.0f} % CPU; waiting up to {max_wait_s:.0f} s)", flush=True)
    while busy >= QUIET_BUSY_PCT and time.monotonic() < deadline:
        busy = sum(psutil.cpu_percent(interval=QUIET_PROBE_S, percpu=True))
    state = "quiet" if busy < QUIET_BUSY_PCT else "still busy, running anyway"
    print(f"    ({state} after {time.monotonic() - started:.0f} s: {busy:.0f} % CPU)", flush=True)
    return busy


# --------------------------------------------------------------------------
# One measurement


@dataclass
class Events:
    """What wsload reported on stderr, with server samples taken at each event."""

    samples: dict[str, Sample] = field(default_factory=dict)
    stderr_tail: list[str] = field(default_factory=list)
    rss_after_open: Sample | None = None


def read_loadgen_events(
    stream: Any,
    server_pids: dict[str, int],
    events: Events,
    on_event: Callable[[str], None] | None = None,
) -> None:
    """
    Follow wsload's stderr: ``EVENT <name> <t>`` lines trigger a server sample
    (the measured window's start and end, the moment all idle connections are
    open) and then ``on_event(name)``; anything else is kept for the error
    report.
    """
    rss_timer: threading.Timer | None = None

    def sample_rss() -> None:
        events.rss_after_open = take_sample(server_pids)

    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        if line.startswith("EVENT "):
            name = line.split()[1]
            events.samples[name] = take_sample(server_pids)
            if on_event is not None:
                on_event(name)
            if name == "all_open":
                rss_timer = threading.Timer(RSS_DELAY_S, sample_rss)
                rss_timer.daemon = True
                rss_timer.start()
        else:
            events.stderr_tail = [*events.stderr_tail[-19:], line]
    if rss_timer is not None:
        rss_timer.join()


def loadgen_deadline(args: Sequence[str]) -> float:
    """:return: a generous upper bound (s) on how long a wsload run may take."""

    def value(flag: str, default: float) -> float:
        return float(args[args.index(flag) + 1]) if flag in args else default

    return (
        value("--open-timeout", 120)
        + value("--warmup", 2)
        + value("-d", 10)
        + value("--hold", 10)
        + value("--drain-timeout", 2)
        + value("--close-timeout", 2)
        + 15
        + LOADGEN_GRACE_S
    )


class Profilers:
    """
    ``--py-spy``: one ``py-spy record`` per Python server process over the
    measured window (started at wsload's ``measure_start``, pinned with the
    load generator to CPU 1), written as collapsed stacks
    to ``<log>-<role>.pyspy.txt`` and summarized into the run record.
    py-spy pauses the process for each sample (``--nonblocking`` gave torn,
    misattributed stacks), which costs the servers a little CPU: profiled
    runs are for finding where the time goes, not for the figures.
    """

    def __init__(self, deployment: Deployment, seconds: float, pinning: bool) -> None:
        self.deployment = deployment
        self.seconds = max(1, int(seconds))
        self.pinning = pinning
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def on_event(self, name: str) -> None:
        """Start the profilers when the measured window starts."""
        if name != "measure_start" or self.running:
            return
        for member in self.deployment.members:
            if member.role == "redis":
                continue
            out = Path(f"{self.deployment.log_stem}-{member.role}.pyspy.txt")
            cmd = pin(1, self.pinning) + [
                PYSPY,
                "record",
                "--pid",
                str(member.pid),
                "--duration",
                str(self.seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nolineno",  # aggregate by function
                "--output",
                str(out),
            ]
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.running.append((member.role, proc, out))

    def finish(self) -> dict[str, Any]:
        """
        Wait for the profilers (bounded; killed by pid if they overrun).

        :return: per role: the file, the sample count, the top functions by
            self time and by inclusive time (% of the process's busy samples).
        """
        results: dict[str, Any] = {}
        for role, proc, out in self.running:
            try:
                _, err = proc.communicate(timeout=self.seconds + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0 or not out.exists():
                results[role] = {"error": err.decode("utf-8", "replace")[-500:]}
                continue
            results[role] = {"file": str(out), **summarize_profile(out)}
        return results

    def kill(self) -> None:
        """Kill (by pid) any profiler still running, e.g. after a failed run."""
        for _, proc, _ in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


# Leaf frames of threads waiting for work: not CPU time, left out of profiles.
IDLE_FRAMES = frozenset({"Condition.wait (threading.py)", "Event.wait (threading.py)"})


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """
    :param path: py-spy ``--format raw`` output (``frame;frame;... count``).
    :return: ``samples`` and the ``top`` functions by ``self`` and ``total``
        share of the samples (%).
    """
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1] in IDLE_FRAMES:
            continue  # an idle thread (twistd's thread pool) that py-spy sampled anyway
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[list[Any]]:
        best = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [[frame, round(100 * n / samples, 1)] for frame, n in best]

    return {"samples": samples, "self": ranked(own), "total": ranked(total)} if samples else {}


def server_wsload_args(wsload_args: Sequence[str], server: Server) -> list[str]:
    """:return: the scenario's wsload arguments with the server's overrides applied."""
    args = list(wsload_args)
    pairs = server.wsload
    for i in range(0, len(pairs) - 1, 2):
        override(args, pairs[i], pairs[i + 1])
    return args


def run_once(
    scenario_name: str,
    scenario: Scenario,
    server_name: str,
    rep: int,
    wsload_args: Sequence[str],
    pinning: bool,
    log_dir: Path,
    profile: bool = False,
) -> dict[str, Any]:
    """
    Start one server (or cluster), load it with wsload, stop it.

    :return: the run record (``ok`` false with ``error`` if anything failed).
    """
    server = SERVERS[server_name]
    wsload_args = server_wsload_args(wsload_args, server)
    record: dict[str, Any] = {
        "kind": "run",
        "scenario": scenario_name,
        "server": server_name,
        "rep": rep,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "ok": False,
    }
    deployment = Deployment(server, log_dir / f"{scenario_name}-{server_name}-{rep}", pinning)
    profilers: Profilers | None = None
    loadgen: subprocess.Popen[bytes] | None = None
    try:
        try:
            deployment.start()
        finally:
            record["processes"] = [
                {"role": m.role, "pid": m.pid, "cmd": m.cmd, "log": m.log}
                for m in deployment.members
            ]
            first = next((m for m in deployment.members if m.role != "redis"), None)
            if first is not None:
                record["server_cmd"] = first.cmd
                record["server_log"] = first.log
            if deployment.urls:
                record["port"] = int(deployment.urls[0].split(":")[2].split("/")[0])
        time.sleep(SETTLE_S)
        values = dict(deployment.values)
        if "{proto_echo_payload}" in server.wsload_extra:
            size = int(wsload_args[wsload_args.index("-s") + 1]) if "-s" in wsload_args else 64
            values["{proto_echo_payload}"] = str(proto_echo_payload(log_dir, size))
        extra = [fill(arg, values) for arg in server.wsload_extra]
        env = dict(os.environ)
        if server.driver is not None:
            cmd = pin(1, pinning) + [fill(arg, values) for arg in server.driver]
            cmd += [*wsload_args, *extra]
            env["WSFABRIC_CLUSTER_SECRET"] = deployment.cluster_secret or ""
        else:
            urls = [arg for url in deployment.urls for arg in ("--url", url)]
            cmd = pin(1, pinning) + [str(ensure_wsload()), *wsload_args[:1], *urls,
                                     *wsload_args[1:], *extra]
        # tokens are credentials: the record names them, never holds them
        record["loadgen_cmd"] = [
            arg.split("?token=")[0] + "?token=..." if "?token=" in arg else arg for arg in cmd
        ]
        pids = deployment.pids
        if profile:
            seconds = float(wsload_args[wsload_args.index("-d") + 1]) if "-d" in wsload_args else 10
            profilers = Profilers(deployment, seconds, pinning)
        before = take_sample(pids)
        events = Events()
        loadgen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=ROOT, env=env,
        )
        # stderr belongs to the event reader alone (communicate() would race
        # it for the EVENT lines), so stdout is collected by a thread of its own.
        reader = threading.Thread(
            target=read_loadgen_events,
            args=(loadgen.stderr, pids, events, profilers.on_event if profilers else None),
            daemon=True,
        )
        chunks: list[bytes] = []
        collector = threading.Thread(
            target=lambda: chunks.append(loadgen.stdout.read()), daemon=True
        )
        reader.start()
        collector.start()
        try:
            loadgen.wait(timeout=loadgen_deadline(wsload_args))
        except subprocess.TimeoutExpired:
            loadgen.kill()  # by pid: only the process we started
            loadgen.wait()
            raise RuntimeError("wsload overran its deadline and was killed") from None
        except BaseException:  # the driver is interrupted: end wsload before joining
            loadgen.kill()
            loadgen.wait()
            raise
        finally:
            collector.join(5)
            reader.join(RSS_DELAY_S + 5)
        stdout = b"".join(chunks)
        if profilers is not None:
            record["profiled"] = True
            record["profile"] = profilers.finish()
        dead = deployment.dead()
        if dead:
            raise RuntimeError(dead)
        try:
            result = json.loads(stdout)
        except ValueError:
            raise RuntimeError(
                f"wsload printed no result: {' | '.join(events.stderr_tail)}"
            ) from None
        record["loadgen"] = redact_tokens(result)
        record.update(derive_figures(result, before, events))
        record["ok"] = bool(result.get("ok")) and scenario.metric in record
        if not record["ok"]:
            record["error"] = result.get("error") or f"no {scenario.metric} measured"
    except (RuntimeError, OSError) as exc:
        record["error"] = str(exc)
    finally:
        if not record["ok"]:
            # read before stopping: RedisServer.stop() removes its directory
            record["server_log_tail"] = deployment.log_tail()
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()  # interrupted driver: by pid, only the process we started
            loadgen.wait()
        if profilers is not None:
            profilers.kill()
        deployment.stop()
    return record


def redact_tokens(result: dict[str, Any]) -> dict[str, Any]:
    """:return: wsload's JSON with the ``?token=`` of its URLs replaced by ``...``."""

    def clean(url: Any) -> Any:
        return url.split("?token=")[0] + "?token=..." if isinstance(url, str) and (
            "?token=" in url) else url

    out = dict(result)
    if "url" in out:
        out["url"] = clean(out["url"])
    if isinstance(out.get("urls"), list):
        out["urls"] = [clean(url) for url in out["urls"]]
    return out


def derive_figures(result: dict[str, Any], before: Sample, events: Events) -> dict[str, Any]:
    """
    :param result: wsload's JSON.
    :param before: server sample taken just before wsload started.
    :param events: samples taken at wsload's events.
    :return: server-side figures: CPU over the measured window (summed over
        the server processes, and per process when there are several), CPU
        per message, the rest of the machine's CPU, RSS per connection.
    """
    out: dict[str, Any] = {}
    for key in ("msgs_per_s", "deliveries_per_s", "cycles_per_s", "publishes_per_s"):
        if key in result:
            out[key] = result[key]
    if "delivery_ratio" in result:
        out["delivery_ratio"] = result["delivery_ratio"]
    if "latency_us" in result:
        out["latency_us"] = result["latency_us"]
        for q in ("p50", "p99", "p999"):
            out[f"latency_{q}_us"] = result["latency_us"][q]
    start, end = events.samples.get("measure_start"), events.samples.get("measure_end")
    if start and end and end.wall > start.wall:
        wall = end.wall - start.wall
        user, sys_ = end.server_user - start.server_user, end.server_sys - start.server_sys
        out["server_cpu_pct"] = round(100 * (user + sys_) / wall, 1)
        out["server_sys_pct"] = round(100 * sys_ / wall, 1)
        client = result.get("client_user_s", 0.0) + result.get("client_sys_s", 0.0)
        out["client_cpu_pct"] = result.get("client_cpu_pct")
        other = (end.machine_busy - start.machine_busy) - (user + sys_) - client
        out["other_cpu_pct"] = round(max(0.0, 100 * other / wall), 1)
        out["noisy"] = out["other_cpu_pct"] > NOISY_OTHER_CPU_PCT
        unit, units = next(((name, result[key]) for key, name in UNITS if result.get(key)), ("", 0))
        out["unit"] = unit
        role_cpu = {
            role: end.by_role[role] - start.by_role.get(role, 0.0)
            for role in end.by_role
            if len(end.by_role) > 1
        }
        if role_cpu:
            out["server_cpu_pct_by_role"] = {
                role: round(100 * cpu / wall, 1) for role, cpu in role_cpu.items()
            }
        if units and user + sys_ > 0:
            out["server_cpu_us_per_unit"] = round(1e6 * (user + sys_) / units, 2)
            # Work per server CPU-second: unlike the rate, it holds when other
            # processes steal the server's core (a shared machine).
            out["units_per_server_cpu_s"] = round(units / (user + sys_), 1)
            if role_cpu:
                out["server_cpu_us_per_unit_by_role"] = {
                    role: round(1e6 * cpu / units, 2) for role, cpu in role_cpu.items()
                }
    if "handshake_total_s" in result:
        out["handshake_total_s"] = result["handshake_total_s"]
    if start and end and end.wall > start.wall:
        holder_cpu = end.holder_cpu - start.holder_cpu
        units = next((result[key] for key, _ in UNITS if result.get(key)), 0)
        if holder_cpu > 0 and units:
            out["holder_cpu_pct"] = round(100 * holder_cpu / (end.wall - start.wall), 1)
            # work per CPU-second of the WebSocket-holding processes (P8: per gate core)
            out["units_per_holder_cpu_s"] = round(units / holder_cpu, 1)
    if events.rss_after_open is not None and result.get("conns_opened"):
        # Memory per connection of the processes holding the WebSockets (the
        # gate, not Redis or the backend: TARGETS.md P5); the total is kept too.
        opened = result["conns_opened"]
        after = events.rss_after_open
        out["rss_before_kib"] = before.holder_rss // 1024
        out["rss_after_kib"] = after.holder_rss // 1024
        def per_conn(grown: int) -> float:
            return round(grown / 1024 / opened, 2)

        out["rss_kib_per_conn"] = per_conn(after.holder_rss - before.holder_rss)
        out["rss_kib_per_conn_all"] = per_conn(after.server_rss - before.server_rss)
        out["rss_kib_per_conn_by_role"] = {
            role: per_conn(rss - before.rss_by_role.get(role, 0))
            for role, rss in after.rss_by_role.items()
        }
        hold_end = events.samples.get("hold_end")
        if hold_end is not None:
            # P7: memory stays flat while the connections are held
            out["rss_hold_end_kib"] = hold_end.holder_rss // 1024
            out["rss_growth_during_hold_kib"] = (hold_end.holder_rss - after.holder_rss) // 1024
    if "errors_during_hold" in result:
        out["errors_during_hold"] = result["errors_during_hold"]
    if "conns_opened" in result:
        out["conns_opened"] = result["conns_opened"]
    return out


# --------------------------------------------------------------------------
# Scenario loop and report


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """:return: min, median and max of ``values`` (None when empty)."""
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# What a run's work is counted in: wsload result key -> unit name.
UNITS = (("msgs_recv", "msg"), ("deliveries", "delivery"), ("cycles", "cycle"))

SUMMARY_FIGURES = (
    "server_cpu_pct",
    "server_sys_pct",
    "client_cpu_pct",
    "other_cpu_pct",
    "server_cpu_us_per_unit",
    "units_per_server_cpu_s",
    "handshake_total_s",
    "delivery_ratio",
    "latency_p50_us",
    "latency_p99_us",
    "holder_cpu_pct",
    "units_per_holder_cpu_s",
    "rss_kib_per_conn",
    "rss_kib_per_conn_all",
    "rss_after_kib",
    "rss_growth_during_hold_kib",
    "errors_during_hold",
    "conns_opened",
)
# Per-process figures of multi-process servers (role -> value dicts in a run).
ROLE_FIGURES = ("server_cpu_pct_by_role", "server_cpu_us_per_unit_by_role")


def paired_ratios(
    runs: list[dict[str, Any]], server: str, baseline: str, key: str
) -> dict[str, float] | None:
    """
    :return: spread of ``server``'s ``key`` divided by the baseline's, each
        repetition divided by the same repetition's baseline.
    """
    base = {r["rep"]: r.get(key) for r in runs if r["server"] == baseline and r["ok"]}
    ratios = [
        round(r[key] / base[r["rep"]], 3)
        for r in runs
        if r["server"] == server and r["ok"] and r.get(key) is not None and base.get(r["rep"])
    ]
    return spread(ratios)


def summarize(
    name: str, scenario: Scenario, servers: Sequence[str], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """
    :return: the summary record: each server's figures (min/median/max) and
        the ratios to the baseline. ``ratios`` divides the scenario's metric;
        ``ratios_per_server_cpu`` divides the work done per server CPU-second,
        which stays meaningful when other processes slowed a run down.
    """
    metric = scenario.metric
    summary: dict[str, Any] = {
        "kind": "summary",
        "scenario": name,
        "metric": metric,
        "higher_is_better": scenario.higher_is_better,
        "target": scenario.target,
        "baseline": scenario.baseline,
        "servers": {},
        "ratios": {},
        "ratios_per_server_cpu": {},
    }
    for srv in servers:
        ok_runs = [r for r in runs if r["server"] == srv and r["ok"]]
        figures: dict[str, Any] = {
            "n": len(ok_runs),
            "failed": sum(1 for r in runs if r["server"] == srv and not r["ok"]),
            "noisy": sum(1 for r in ok_runs if r.get("noisy")),
        }
        for key in (metric, *SUMMARY_FIGURES):
            values = [r[key] for r in ok_runs if r.get(key) is not None]
            if values or key == metric:
                figures[key] = spread(values)
        for key in ROLE_FIGURES:
            roles = sorted({role for r in ok_runs for role in r.get(key, {})})
            if roles:
                figures[key] = {
                    role: spread([r[key][role] for r in ok_runs if role in r.get(key, {})])
                    for role in roles
                }
        summary["servers"][srv] = figures
    pairs = [(srv, scenario.baseline) for srv in servers if srv != scenario.baseline]
    pairs += [p for p in scenario.comparisons if p[0] in servers and p[1] in servers]
    for srv, base in pairs:
        pair = f"{srv}/{base}"
        summary["ratios"][pair] = paired_ratios(runs, srv, base, metric)
        per_cpu = paired_ratios(runs, srv, base, "units_per_server_cpu_s")
        if per_cpu is not None:
            summary["ratios_per_server_cpu"][pair] = per_cpu
        # per CPU-second of the processes holding the WebSockets (a gate):
        # P8's "per gate core"
        per_holder = paired_ratios(runs, srv, base, "units_per_holder_cpu_s")
        if per_holder is not None:
            summary.setdefault("ratios_per_holder_cpu", {})[pair] = per_holder
    return summary


def print_run(record: dict[str, Any], metric: str) -> None:
    """One human line per run."""
    if not record["ok"]:
        print(
            f"  {record['server']:<28} rep {record['rep']}: FAILED: {record.get('error')}",
            flush=True,
        )
        return
    parts = [f"{metric}={record[metric]:,.2f}"]
    for key, label in (
        ("server_cpu_pct", "server CPU %"),
        ("server_sys_pct", "sys %"),
        ("client_cpu_pct", "client CPU %"),
        ("other_cpu_pct", "other CPU %"),
        ("server_cpu_us_per_unit", f"server us/{record.get('unit')}"),
    ):
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:.1f}")
    if "server_cpu_us_per_unit_by_role" in record:
        roles = record["server_cpu_us_per_unit_by_role"]
        parts.append("(" + ", ".join(f"{role} {us:.1f}" for role, us in roles.items()) + ")")
    if record.get("delivery_ratio") is not None:
        parts.append(f"delivery ratio {record['delivery_ratio']:.3f}")
    if "latency_us" in record:
        lat = record["latency_us"]
        parts.append(f"p50/p99 {lat['p50']}/{lat['p99']} us")
    if record.get("handshake_total_s") is not None:
        parts.append(f"opened in {record['handshake_total_s']:.1f} s")
    if "rss_before_kib" in record:
        parts.append(
            f"RSS {record['rss_before_kib'] / 1024:.1f} -> {record['rss_after_kib'] / 1024:.1f} MiB"
        )
    errors = record["loadgen"].get("errors")
    if errors:
        parts.append(f"errors {errors} {record['loadgen'].get('error_detail')}")
    print(f"  {record['server']:<28} rep {record['rep']}: " + ", ".join(parts), flush=True)
    for role, prof in record.get("profile", {}).items():
        if "self" in prof:
            top = "; ".join(f"{frame} {pct}%" for frame, pct in prof["self"][:6])
            print(f"    py-spy {role} ({prof['samples']} samples) self: {top}", flush=True)
        else:
            print(f"    py-spy {role}: failed: {prof.get('error')}", flush=True)
    if (record.get("other_cpu_pct") or 0) > NOISY_OTHER_CPU_PCT:
        other = record["other_cpu_pct"]
        print(f"    warning: other processes used {other:.0f} % CPU during this run", flush=True)


def format_spread(values: dict[str, float] | None, fmt: str) -> str:
    """:return: ``min … median … max`` of a :func:`spread` result, or ``n/a``."""
    if values is None:
        return "n/a"
    return "  ".join(f"{key} {values[key]:{fmt}}" for key in ("min", "median", "max"))


def print_summary(summary: dict[str, Any]) -> None:
    """Human-readable summary of one scenario."""
    print(f"summary {summary['scenario']} ({summary['target']}):")
    metric = summary["metric"]
    for srv, figures in summary["servers"].items():
        counts = f"(n={figures['n']}, failed={figures['failed']}, noisy={figures['noisy']})"
        print(f"  {srv:<28} {metric}: {format_spread(figures[metric], ',.2f')}  {counts}")
        for key in ("server_cpu_pct", "client_cpu_pct", "server_cpu_us_per_unit"):
            if key in figures:
                print(f"  {'':<28} {key}: {format_spread(figures[key], '.1f')}")
        for role, values in figures.get("server_cpu_us_per_unit_by_role", {}).items():
            print(f"  {'':<28}   {role} us/unit: {format_spread(values, '.1f')}")
    for pair, values in summary["ratios"].items():
        print(f"  ratio {pair} ({metric}): {format_spread(values, '.3f')}")
    for pair, values in summary["ratios_per_server_cpu"].items():
        print(f"  ratio {pair} (work per server CPU-second): {format_spread(values, '.3f')}")
    sys.stdout.flush()


def override(args: list[str], flag: str, value: str | None) -> list[str]:
    """:return: ``args`` with ``flag``'s value replaced (or appended) when ``value`` is given."""
    if value is None:
        return args
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def run_scenario(
    name: str, opts: argparse.Namespace, out: Path, emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Run every repetition of one scenario and emit its records and summary."""
    scenario = SCENARIOS[name]
    servers = opts.servers.split(",") if opts.servers else list(scenario.servers)
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        sys.exit(f"unknown server(s): {', '.join(unknown)} (see --list)")
    args = list(scenario.wsload)
    override(args, "-c", opts.conns)
    override(args, "-d", opts.duration)
    override(args, "-w", opts.window if scenario.wsload[0] == "echo" else None)
    args += opts.wsload_arg or []
    print(
        f"== {name}: {scenario.description}\n   wsload {' '.join(args)}\n   results: {out}",
        flush=True,
    )
    log_dir = out.parent / "logs" / out.stem  # one directory per invocation
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for rep in range(opts.reps):
        # Alternate the order so slow drift of the machine does not favour one side.
        order = servers if rep % 2 == 0 else list(reversed(servers))
        for server_name in order:
            for attempt in range(1 + opts.retry_noisy):
                if opts.wait_quiet > 0:
                    wait_until_quiet(opts.wait_quiet)
                record = run_once(
                    name,
                    scenario,
                    server_name,
                    rep,
                    args,
                    not opts.no_pin,
                    log_dir,
                    profile=opts.py_spy,
                )
                # py-spy's own CPU counts as "other": profiled runs are not repeated.
                retry = (
                    record.get("noisy")
                    and not record.get("profiled")
                    and attempt < opts.retry_noisy
                )
                # A noisy attempt stays in the file, marked, but out of the summary.
                record["discarded"] = bool(retry)
                emit(record)
                print_run(record, scenario.metric)
                if not retry:
                    break
                print("    (noisy: repeating this run)", flush=True)
            runs.append(record)
    summary = summarize(name, scenario, servers, runs)
    emit(summary)
    print_summary(summary)
    return summary


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"of {', '.join(SCENARIOS)}")
    parser.add_argument("--list", action="store_true", help="list scenarios and servers")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--servers", help="comma-separated servers instead of the scenario's")
    parser.add_argument("--conns", help="override wsload -c")
    parser.add_argument("--duration", help="override wsload -d (seconds)")
    parser.add_argument("--window", help="echo: override wsload -w")
    parser.add_argument("--wsload-arg", action="append", help="extra wsload argument (repeatable)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="profile every Python server process with py-spy over the measured window "
        "(results/logs/.../*.pyspy.txt and the top functions in each run record; "
        "sampling perturbs the figures)",
    )
    parser.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        help="repeat a run up to this many times when other processes used more than "
        f"{NOISY_OTHER_CPU_PCT:.0f} %% CPU during it (default 2)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other processes "
        "to leave the CPUs idle (0: do not wait; default 60)",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON lines file (default bench/results/<scenarios>-<time>.jsonl)"
    )
    opts = parser.parse_args(argv)

    if opts.list or not opts.scenarios:
        print("scenarios:")
        for name, sc in SCENARIOS.items():
            print(
                f"  {name:<12} {sc.description}\n               servers {', '.join(sc.servers)}; "
                f"baseline {sc.baseline}; {sc.target}"
            )
        print("servers:")
        for name, srv in SERVERS.items():
            print(f"  {name:<28} {srv.describe()}")
        return 0
    unknown = [s for s in opts.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if not 1 <= opts.reps <= 20:
        parser.error("--reps must be 1..20")
    if not 0 <= opts.retry_noisy <= 10:
        parser.error("--retry-noisy must be 0..10")

    raise_nofile()
    # SIGTERM (and SIGINT, even where a shell started us with it ignored) ends
    # the driver through its finally blocks, which stop every server by pid.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    ensure_wsload()
    out = opts.out or RESULTS / f"{'-'.join(opts.scenarios)}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = False
    with open(out, "a", encoding="utf-8") as sink:

        def emit(record: dict[str, Any]) -> None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()

        for name in opts.scenarios:
            summary = run_scenario(name, opts, out, emit)
            failed |= any(s["failed"] for s in summary["servers"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
