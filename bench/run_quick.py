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
_VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(_VENV_BIN / "python") if (_VENV_BIN / "python").exists() else sys.executable
TWISTD = str(_VENV_BIN / "twistd") if (_VENV_BIN / "twistd").exists() else "twistd"

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
class Server:
    """
    A server command under test.

    :ivar argv: the command; ``{port}`` is replaced by the port.
    :ivar path: the WebSocket path the load generator connects to.
    :ivar cwd: working directory of the command.
    :ivar env: extra environment variables.
    """

    argv: tuple[str, ...]
    path: str = "/"
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)


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
    "wsfabric-echo": Server(
        (
            TWISTD,
            "-n",
            "--pidfile=",
            "wsfabric",
            "--app",
            "examples.echo.app:EchoApp",
            "--listen",
            "tcp:{port}:interface=127.0.0.1",
        ),
        path="/ws",
    ),
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
    """

    description: str
    wsload: tuple[str, ...]
    servers: tuple[str, ...]
    baseline: str
    metric: str
    higher_is_better: bool
    target: str


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


def take_sample(pid: int) -> Sample:
    """:return: counters of the server tree rooted at ``pid`` and of the machine."""
    user = sys_ = 0.0
    rss = 0
    for proc in process_tree(pid):
        try:
            cpu = proc.cpu_times()
            user += cpu.user
            sys_ += cpu.system
            rss += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    machine = psutil.cpu_times()
    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    return Sample(time.monotonic(), user, sys_, rss, busy)


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


def read_loadgen_events(stream: Any, server_pid: int, events: Events) -> None:
    """
    Follow wsload's stderr: ``EVENT <name> <t>`` lines trigger a server sample
    (the measured window's start and end, the moment all idle connections are
    open); anything else is kept for the error report.
    """
    rss_timer: threading.Timer | None = None

    def sample_rss() -> None:
        events.rss_after_open = take_sample(server_pid)

    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        if line.startswith("EVENT "):
            name = line.split()[1]
            events.samples[name] = take_sample(server_pid)
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


def run_once(
    scenario_name: str,
    scenario: Scenario,
    server_name: str,
    rep: int,
    wsload_args: Sequence[str],
    pinning: bool,
    log_dir: Path,
) -> dict[str, Any]:
    """
    Start one server, load it with wsload, stop it.

    :return: the run record (``ok`` false with ``error`` if anything failed).
    """
    server = SERVERS[server_name]
    port = free_port()
    argv = [arg.replace("{port}", str(port)) for arg in server.argv]
    record: dict[str, Any] = {
        "kind": "run",
        "scenario": scenario_name,
        "server": server_name,
        "rep": rep,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "server_cmd": argv,
        "port": port,
        "ok": False,
    }
    log_path = log_dir / f"{scenario_name}-{server_name}-{rep}.log"
    record["server_log"] = str(log_path)
    with open(log_path, "wb") as log:
        server_proc = subprocess.Popen(
            pin(0, pinning) + argv,
            cwd=server.cwd,
            env={**os.environ, **server.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, server_proc, SERVER_START_TIMEOUT_S)
        time.sleep(SETTLE_S)
        url = f"ws://127.0.0.1:{port}{server.path}"
        cmd = pin(1, pinning) + [
            str(ensure_wsload()),
            *wsload_args[:1],
            "--url",
            url,
            *wsload_args[1:],
        ]
        record["loadgen_cmd"] = cmd
        before = take_sample(server_proc.pid)
        events = Events()
        loadgen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        # stderr belongs to the event reader alone (communicate() would race
        # it for the EVENT lines), so stdout is collected by a thread of its own.
        reader = threading.Thread(
            target=read_loadgen_events, args=(loadgen.stderr, server_proc.pid, events), daemon=True
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
        finally:
            collector.join(5)
            reader.join(RSS_DELAY_S + 5)
        stdout = b"".join(chunks)
        if server_proc.poll() is not None:
            raise RuntimeError(f"server exited during the run (status {server_proc.returncode})")
        try:
            result = json.loads(stdout)
        except ValueError:
            raise RuntimeError(
                f"wsload printed no result: {' | '.join(events.stderr_tail)}"
            ) from None
        record["loadgen"] = result
        record.update(derive_figures(result, before, events))
        record["ok"] = bool(result.get("ok")) and scenario.metric in record
        if not record["ok"]:
            record["error"] = result.get("error") or f"no {scenario.metric} measured"
    except (RuntimeError, OSError) as exc:
        record["error"] = str(exc)
    finally:
        stop_process(server_proc)
    if not record["ok"]:
        record["server_log_tail"] = log_path.read_text(errors="replace")[-2000:]
    return record


def derive_figures(result: dict[str, Any], before: Sample, events: Events) -> dict[str, Any]:
    """
    :param result: wsload's JSON.
    :param before: server sample taken just before wsload started.
    :param events: samples taken at wsload's events.
    :return: server-side figures: CPU over the measured window, CPU per
        message, the rest of the machine's CPU, RSS per connection.
    """
    out: dict[str, Any] = {}
    for key in ("msgs_per_s", "deliveries_per_s", "cycles_per_s"):
        if key in result:
            out[key] = result[key]
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
        if units and user + sys_ > 0:
            out["server_cpu_us_per_unit"] = round(1e6 * (user + sys_) / units, 2)
            # Work per server CPU-second: unlike the rate, it holds when other
            # processes steal the server's core (a shared machine).
            out["units_per_server_cpu_s"] = round(units / (user + sys_), 1)
    if "handshake_total_s" in result:
        out["handshake_total_s"] = result["handshake_total_s"]
    if events.rss_after_open is not None and result.get("conns_opened"):
        grown = events.rss_after_open.server_rss - before.server_rss
        out["rss_before_kib"] = before.server_rss // 1024
        out["rss_after_kib"] = events.rss_after_open.server_rss // 1024
        out["rss_kib_per_conn"] = round(grown / 1024 / result["conns_opened"], 2)
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
)


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
        summary["servers"][srv] = figures
    for srv in servers:
        if srv == scenario.baseline:
            continue
        pair = f"{srv}/{scenario.baseline}"
        summary["ratios"][pair] = paired_ratios(runs, srv, scenario.baseline, metric)
        per_cpu = paired_ratios(runs, srv, scenario.baseline, "units_per_server_cpu_s")
        if per_cpu is not None:
            summary["ratios_per_server_cpu"][pair] = per_cpu
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
                record = run_once(name, scenario, server_name, rep, args, not opts.no_pin, log_dir)
                retry = record.get("noisy") and attempt < opts.retry_noisy
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
                f"  {name:<10} {sc.description}\n             servers {', '.join(sc.servers)}; "
                f"baseline {sc.baseline}; {sc.target}"
            )
        print("servers:")
        for name, srv in SERVERS.items():
            print(f"  {name:<28} path {srv.path}: {' '.join(srv.argv)}")
        return 0
    unknown = [s for s in opts.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if not 1 <= opts.reps <= 20:
        parser.error("--reps must be 1..20")
    if not 0 <= opts.retry_noisy <= 10:
        parser.error("--retry-noisy must be 0..10")

    raise_nofile()
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
