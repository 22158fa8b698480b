"""
The benchmark suite: TARGETS.md P1-P8, each beside its baselines in one run.

Each :class:`Target` names one scenario (the same wsload invocation against
several servers, all started fresh for every repetition, in alternating
order) and the :class:`Check` lines that decide met / not met from the
figures of that same run: a ratio to a baseline measured in the same
repetition (median over the repetitions), or an absolute figure.

The machinery (starting servers, clusters and Redis, running wsload,
sampling CPU and RSS) is :mod:`run_quick`'s; this module says what the suite
measures, with the ``--quick`` and the full sizes, and evaluates it.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import run_quick as rq

#: P7 asks for 50,000 connections; the descriptor limit may allow fewer.
P7_CONNS = 50_000
#: Descriptors kept free for everything a process needs beside the clients.
FD_MARGIN = 800
#: Connections per source address in P7 (under the ~28,000 ephemeral ports).
CONNS_PER_SOURCE = 20_000


@dataclass(frozen=True)
class Check:
    """
    One line of a target: a figure compared with a threshold.

    :ivar label: what is checked, for the report.
    :ivar server: the server whose figure is checked.
    :ivar metric: the run-record key.
    :ivar op: ``">="`` or ``"<="``.
    :ivar threshold: the target.
    :ivar baseline: divide by this server's figure of the same repetition
        (a ratio check); ``None`` for an absolute figure.
    :ivar floor: a softer bound reported beside the target (P2's 45 %).
    """

    label: str
    server: str
    metric: str
    op: str
    threshold: float
    baseline: str | None = None
    floor: float | None = None


@dataclass(frozen=True)
class Target:
    """
    One performance target of TARGETS.md and how it is measured.

    :ivar key: ``P1``...``P8``.
    :ivar title: the target as TARGETS.md states it.
    :ivar scenario: a short name (file names, plots).
    :ivar description: what the load is.
    :ivar servers: names in :data:`run_quick.SERVERS`, measured every repetition.
    :ivar metric: the figure plotted and summarized (a run-record key).
    :ivar higher_is_better: direction of ``metric``.
    :ivar wsload: the wsload arguments, full size.
    :ivar quick: replacements for ``--quick`` (flag -> value).
    :ivar checks: what decides met / not met.
    :ivar note: a caveat for the report.
    :ivar comparisons: further ``(server, baseline)`` ratios to report
        (besides every server's ratio to the first one).
    :ivar section: where the report and ``publish`` put it: ``"targets"``
        (P1-P8, TARGETS.md) or ``"routed"`` (routed messages, service
        calls and authentication: figures beside their baselines, no
        targets yet).
    """

    key: str
    title: str
    scenario: str
    description: str
    servers: tuple[str, ...]
    metric: str
    higher_is_better: bool
    wsload: tuple[str, ...]
    quick: dict[str, str]
    checks: tuple[Check, ...]
    note: str = ""
    comparisons: tuple[tuple[str, str], ...] = ()
    section: str = "targets"

    @property
    def baseline(self) -> str:
        """The first server: what every other one is divided by in the summary."""
        return self.servers[0]

    def wsload_args(self, quick: bool, duration: float | None = None) -> list[str]:
        """:return: wsload arguments for a full or a ``--quick`` run."""
        args = list(self.wsload)
        if quick:
            for flag, value in self.quick.items():
                rq.override(args, flag, value)
        if duration is not None and "-d" in args:
            rq.override(args, "-d", f"{duration:g}")
        return args


def nofile_hard_limit() -> int:
    """:return: the hard descriptor limit every process here inherits."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def p7_conns() -> int:
    """:return: how many connections P7 can hold here (50,000 unless the limit is lower)."""
    return max(1000, min(P7_CONNS, nofile_hard_limit() - FD_MARGIN))


def source_binds(conns: int) -> list[str]:
    """:return: wsload ``--bind`` arguments spreading ``conns`` over 127.0.0.x sources."""
    sources = max(2, math.ceil(conns / CONNS_PER_SOURCE))
    return [arg for i in range(sources) for arg in ("--bind", f"127.0.0.{i + 1}")]


_ECHO = ("echo", "-c", "100", "-w", "8", "-s", "64", "-d", "6", "--warmup", "2")
_ECHO_QUICK = {"-d": "2", "--warmup": "1"}
_LATENCY = ("latency", "-c", "100", "-r", "2000", "-s", "64", "-d", "6", "--warmup", "2")
_ROUTED_SERVERS = (
    "wsfabric-echo", "wsfabric-routed-json", "wsfabric-routed-proto",
    "wsfabric-cluster-echo", "wsfabric-cluster-routed-json", "wsfabric-cluster-routed-proto",
)
_ROUTED_COMPARISONS = (
    ("wsfabric-cluster-routed-json", "wsfabric-cluster-echo"),
    ("wsfabric-cluster-routed-proto", "wsfabric-cluster-echo"),
    ("wsfabric-routed-proto", "wsfabric-routed-json"),
    ("wsfabric-cluster-routed-proto", "wsfabric-cluster-routed-json"),
)
_FANOUT = (
    "broadcast", "-c", "1000", "--pub-window", "8", "-s", "64", "-d", "5", "--warmup", "3",
)
_FANOUT_QUICK = {"-d": "2", "--warmup": "2"}


def targets() -> list[Target]:
    """:return: P1-P8 as measured on this machine (P7's size depends on its limits)."""
    hold = p7_conns()
    return [
        Target(
            key="P1+P2",
            title="P1 standalone echo >= 80 % of raw Autobahn; "
            "P2 cluster echo >= 60 % of raw (45 % floor)",
            scenario="echo",
            description="echo, 100 conns x 8 in flight, 64-byte text; raw Autobahn echo, "
            "standalone wsfabric (send_to_client), a cluster of 1 gate + 1 backend + Redis "
            "(all on one core)",
            servers=("autobahn-echo", "wsfabric-echo", "wsfabric-cluster-echo"),
            metric="msgs_per_s",
            higher_is_better=True,
            wsload=_ECHO,
            quick=_ECHO_QUICK,
            checks=(
                Check("P1 standalone / raw", "wsfabric-echo", "msgs_per_s", ">=", 0.80,
                      baseline="autobahn-echo"),
                Check("P2 cluster / raw", "wsfabric-cluster-echo", "msgs_per_s", ">=", 0.60,
                      baseline="autobahn-echo", floor=0.45),
            ),
        ),
        Target(
            key="P3",
            title="P3 group fan-out, 1,000 clients over 2 gates: >= 90 % of Twisted+txredisapi, "
            ">= 2 x python-socketio, >= 8 x Channels",
            scenario="group",
            description="group fan-out to 1,000 clients (every one a member, the publisher "
            "too), 8 publishes outstanding, 64 B; every server is 2 processes + Redis on one "
            "core: wsfabric = 2 gates + 1 backend + Redis",
            servers=(
                "twisted-redis-group",
                "wsfabric-cluster-group",
                "socketio-group",
                "channels-group",
                "channels-group-core",
            ),
            metric="deliveries_per_s",
            higher_is_better=True,
            wsload=_FANOUT,
            quick=_FANOUT_QUICK,
            checks=(
                Check("wsfabric / Twisted+txredisapi", "wsfabric-cluster-group",
                      "deliveries_per_s", ">=", 0.90, baseline="twisted-redis-group"),
                Check("wsfabric / python-socketio", "wsfabric-cluster-group",
                      "deliveries_per_s", ">=", 2.0, baseline="socketio-group"),
                Check("wsfabric / Channels (pub/sub layer)", "wsfabric-cluster-group",
                      "deliveries_per_s", ">=", 8.0, baseline="channels-group"),
                Check("wsfabric / Channels (default layer)", "wsfabric-cluster-group",
                      "deliveries_per_s", ">=", 8.0, baseline="channels-group-core"),
            ),
        ),
        Target(
            key="P4",
            title="P4 standalone send_to_all / group send to 1,000 clients >= 90 % of "
            "prepareMessage broadcast",
            scenario="broadcast",
            description="broadcast to 1,000 clients in one process, 8 publishes outstanding, "
            "64 B: raw Autobahn prepareMessage broadcast, wsfabric send_to_group, "
            "wsfabric send_to_all",
            servers=("autobahn-broadcast-prepared", "wsfabric-group", "wsfabric-all"),
            metric="deliveries_per_s",
            higher_is_better=True,
            wsload=_FANOUT,
            quick=_FANOUT_QUICK,
            checks=(
                Check("send_to_group / prepared", "wsfabric-group", "deliveries_per_s",
                      ">=", 0.90, baseline="autobahn-broadcast-prepared"),
                Check("send_to_all / prepared", "wsfabric-all", "deliveries_per_s",
                      ">=", 0.90, baseline="autobahn-broadcast-prepared"),
            ),
        ),
        Target(
            key="P5",
            title="P5 idle memory per connection at 10,000 conns, standalone and gate: <= 12 KiB",
            scenario="idle",
            description="10,000 idle connections opened 50 at a time; RSS of the process "
            "holding them (the gate for the cluster) 3 s after the last handshake, minus "
            "before, per connection",
            servers=("autobahn-echo", "wsfabric-echo", "wsfabric-cluster-echo"),
            metric="rss_kib_per_conn",
            higher_is_better=False,
            wsload=("idle", "-c", "10000", "-k", "50", "--hold", "5"),
            quick={"-c": "2000", "--hold": "4"},
            checks=(
                Check("standalone KiB/conn", "wsfabric-echo", "rss_kib_per_conn", "<=", 12.0),
                Check("gate KiB/conn", "wsfabric-cluster-echo", "rss_kib_per_conn", "<=", 12.0),
            ),
        ),
        Target(
            key="P6",
            title="P6 latency at 2,000 msg/s, 100 conns, cluster echo: p50 <= 2 x raw, "
            "p99 <= 3 ms",
            scenario="latency",
            description="open loop: 2,000 msg/s in total over 100 connections, latency "
            "from the scheduled send time (no coordinated omission)",
            servers=("autobahn-echo", "wsfabric-cluster-echo", "wsfabric-echo"),
            metric="latency_p50_us",
            higher_is_better=False,
            wsload=_LATENCY,
            quick=_ECHO_QUICK,
            checks=(
                Check("cluster p50 / raw p50", "wsfabric-cluster-echo", "latency_p50_us",
                      "<=", 2.0, baseline="autobahn-echo"),
                Check("cluster p99 (us)", "wsfabric-cluster-echo", "latency_p99_us",
                      "<=", 3000.0),
            ),
        ),
        Target(
            key="P7",
            title="P7 50,000 connections held by one gate process, flat memory, no error",
            scenario="hold",
            description=f"{hold:,} connections to one gate (cluster: 1 gate + 1 backend + "
            "Redis), from several 127.0.0.x source addresses, held 10 s; RSS sampled 3 s "
            "after the last handshake and at the end of the hold",
            servers=("wsfabric-cluster-echo",),
            metric="conns_opened",
            higher_is_better=True,
            wsload=("idle", "-c", str(hold), "-k", "50", "--hold", "10",
                    "--open-timeout", "240", *source_binds(hold)),
            quick={"-c": str(min(hold, 3000)), "--hold": "5"},
            checks=(
                Check("connections held", "wsfabric-cluster-echo", "conns_opened", ">=",
                      float(P7_CONNS)),
                Check("errors during the hold", "wsfabric-cluster-echo",
                      "errors_during_hold", "<=", 0.0),
                Check("gate RSS growth during the hold (KiB)", "wsfabric-cluster-echo",
                      "rss_growth_during_hold_kib", "<=", 2048.0),
            ),
            note=(
                ""
                if hold >= P7_CONNS
                else f"this machine's hard RLIMIT_NOFILE is {nofile_hard_limit():,} and the "
                "session cannot raise it (no CAP_SYS_RESOURCE), so one process can hold at "
                f"most that many sockets: P7 runs at {hold:,} connections"
            ),
        ),
        Target(
            key="P8",
            title="P8 connection rate (connect + handshake + on_connect + close): "
            ">= 2,000 per second per gate core",
            scenario="connrate",
            description="16 concurrent cycles of TCP connect + WebSocket handshake + "
            "on_connect + close handshake; the cluster's gate and backend share one core, "
            "so its rate per gate core is cycles / gate CPU-seconds",
            servers=("autobahn-echo", "wsfabric-echo", "wsfabric-cluster-echo"),
            metric="cycles_per_s",
            higher_is_better=True,
            wsload=("connrate", "-c", "16", "-d", "5", "--warmup", "1"),
            quick={"-d": "2"},
            checks=(
                Check("cluster cycles per gate CPU-second", "wsfabric-cluster-echo",
                      "units_per_holder_cpu_s", ">=", 2000.0),
                Check("standalone cycles per server CPU-second", "wsfabric-echo",
                      "units_per_holder_cpu_s", ">=", 2000.0),
            ),
        ),
        *routed_targets(),
    ]


def routed_targets() -> list[Target]:
    """
    :return: the scenarios of routed messages (issue 4), service-to-service
        calls (issue 7) and authenticated connections (issue 5), each beside
        its unrouted, uncalled or unauthenticated baseline in the same run.
    """
    routed = (
        "a Router's route bench.echo answering each request with its data: JSON codec "
        "(subprotocol wsfabric.json, text {\"route\":\"bench.echo\",\"id\":1,\"data\":"
        "\"<64 characters>\"}) and protobuf codec (wsfabric.proto, a binary Envelope, route "
        "bench.echo, id 1, data: the same string as UTF-8 JSON, since the route declares "
        "no protobuf type), beside the raw on_message echo app; standalone, and a cluster "
        "of 1 gate + 1 backend + Redis on one core"
    )
    rpc = (
        "{c} call(s) in flight from backend a to backend b (fabric.call(\"b\", "
        "\"bench.echo\", <64 characters>), Redis pub/sub both ways; 2 backends + Redis on "
        "one core, no gate; the calls run inside backend a, started from outside the cluster "
        "by bench/rpc_driver.py with wsfabric.connect().call(\"a\", \"bench.rpc\", ...)), "
        "beside the cluster echo with {c} message(s) in flight (client -> gate -> backend "
        "-> gate -> client, 1 gate + 1 backend + Redis)"
    )
    return [
        Target(
            key="R1",
            title="R1 routed request/response: round trips/s at 100 connections x 8 in flight",
            scenario="routed",
            description="echo, 100 conns x 8 in flight; " + routed,
            servers=_ROUTED_SERVERS,
            metric="msgs_per_s",
            higher_is_better=True,
            wsload=_ECHO,
            quick=_ECHO_QUICK,
            checks=(),
            comparisons=_ROUTED_COMPARISONS,
            section="routed",
        ),
        Target(
            key="R2",
            title="R2 routed request/response: latency at 2,000 requests/s over 100 connections",
            scenario="routed-latency",
            description="open loop, 2,000 requests/s in total over 100 conns, latency from "
            "the scheduled send time; " + routed,
            servers=_ROUTED_SERVERS,
            metric="latency_p50_us",
            higher_is_better=False,
            wsload=_LATENCY,
            quick=_ECHO_QUICK,
            checks=(),
            comparisons=_ROUTED_COMPARISONS,
            section="routed",
        ),
        *(
            Target(
                key=f"S{c}",
                title=f"S{c} service-to-service calls, {c} in flight",
                scenario=f"rpc-c{c}",
                description=rpc.format(c=c),
                servers=("wsfabric-cluster-echo", "wsfabric-rpc"),
                metric="msgs_per_s",
                higher_is_better=True,
                wsload=("echo", "-c", str(c), "-w", "1", "-s", "64", "-d", "6", "--warmup", "2"),
                quick=_ECHO_QUICK,
                checks=(),
                section="routed",
            )
            for c in (1, 32)
        ),
        Target(
            key="A1",
            title="A1 connection rate with JWT authentication (HS256, ES256) vs none",
            scenario="connrate-jwt",
            description="16 concurrent cycles of connect + handshake + on_connect + close; "
            "no authentication, HS256 and ES256 tokens in ?token= (checked before the "
            "upgrade, uid bound before on_connect): 16 tokens for uids u0-u15, connection "
            "slot i always uses uid i, so no two open connections share a uid; standalone "
            "and a cluster of 1 gate + 1 backend + Redis on one core (rate per gate "
            "CPU-second)",
            servers=(
                "wsfabric-echo", "wsfabric-echo-jwt-hs256", "wsfabric-echo-jwt-es256",
                "wsfabric-cluster-echo", "wsfabric-cluster-echo-jwt-hs256",
                "wsfabric-cluster-echo-jwt-es256",
            ),
            metric="cycles_per_s",
            higher_is_better=True,
            wsload=("connrate", "-c", "16", "-d", "5", "--warmup", "1"),
            quick={"-d": "2"},
            checks=(),
            comparisons=(
                ("wsfabric-cluster-echo-jwt-hs256", "wsfabric-cluster-echo"),
                ("wsfabric-cluster-echo-jwt-es256", "wsfabric-cluster-echo"),
            ),
            section="routed",
        ),
    ]


# --------------------------------------------------------------------------
# Running and evaluating


@dataclass
class Settings:
    """
    How the suite runs.

    :ivar quick: short durations, small sizes.
    :ivar reps: repetitions of every scenario.
    :ivar pinning: pin servers to CPU 0 and wsload to CPU 1.
    :ivar wait_quiet: seconds to wait for an idle machine before each run.
    :ivar retry_noisy: repeats of a run that others' CPU use spoiled.
    :ivar only: target keys or scenario names to run (empty: all).
    :ivar servers: restrict every scenario to these servers (empty: all).
    :ivar duration: replace every measured window (seconds).
    :ivar skip_servers: servers left out (e.g. peers not installed).
    """

    quick: bool = False
    reps: int = 3
    pinning: bool = True
    wait_quiet: float = 5.0
    retry_noisy: int = 1
    only: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    duration: float | None = None
    skip_servers: tuple[str, ...] = ()
    profile_misses: bool = True


@dataclass
class Outcome:
    """One scenario's result: its run records, summary and verdicts."""

    target: Target
    servers: list[str]
    runs: list[dict[str, Any]]
    summary: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def record(self, meta: dict[str, Any]) -> dict[str, Any]:
        """:return: the scenario's JSON line (results.jsonl)."""
        return {
            "kind": "scenario",
            "target": self.target.key,
            "scenario": self.target.scenario,
            "title": self.target.title,
            "description": self.target.description,
            "note": self.target.note,
            "servers": self.servers,
            "metric": self.target.metric,
            "higher_is_better": self.target.higher_is_better,
            "reps": meta["reps"],
            "quick": meta["quick"],
            "time": meta["time"],
            "loadgen_args": self.runs[0].get("loadgen_cmd") if self.runs else None,
            "figures": self.summary["servers"],
            "ratios": self.summary["ratios"],
            "ratios_per_server_cpu": self.summary["ratios_per_server_cpu"],
            "ratios_per_holder_cpu": self.summary.get("ratios_per_holder_cpu", {}),
            "section": self.target.section,
            "checks": self.checks,
            "profiles": self.profiles,
        }


def selected(target: Target, only: Sequence[str]) -> bool:
    """:return: whether ``--only`` selects this target (by key, P-number or scenario)."""
    if not only:
        return True
    names = {target.key.lower(), target.scenario.lower(), *target.key.lower().split("+")}
    return any(name.lower() in names for name in only)


#: Metrics that are a rate of work (their per-CPU ratio is reported too).
THROUGHPUTS = frozenset({"msgs_per_s", "deliveries_per_s", "cycles_per_s"})


def evaluate(check: Check, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    :return: the check's figure (min/median/max over the repetitions; a ratio
        is paired with the baseline of the same repetition), its verdict
        (``met``, ``not met``, or ``not measured``) and the inputs.
    """
    per_cpu = check.baseline is not None and check.metric in THROUGHPUTS
    if per_cpu:
        # Work per server CPU-second: on a server that has its core to itself
        # (100 % CPU) this is the rate itself; on a shared machine, where other
        # processes take part of that core, it is what still measures the code.
        values = rq.paired_ratios(runs, check.server, check.baseline, "units_per_server_cpu_s")
    elif check.baseline is not None:
        values = rq.paired_ratios(runs, check.server, check.baseline, check.metric)
    else:
        values = rq.spread(
            [r[check.metric] for r in runs
             if r["server"] == check.server and r["ok"] and r.get(check.metric) is not None]
        )
    out: dict[str, Any] = {**asdict(check), "value": values}
    if per_cpu:
        out["basis"] = "work per server CPU-second"
        out["value_rate"] = rq.paired_ratios(runs, check.server, check.baseline, check.metric)
    if values is None:
        out["verdict"] = "not measured"
        return out
    median = values["median"]
    ok = median >= check.threshold if check.op == ">=" else median <= check.threshold
    out["verdict"] = "met" if ok else "not met"
    if not ok and check.floor is not None:
        above = median >= check.floor if check.op == ">=" else median <= check.floor
        out["floor_met"] = above
    return out


def run_target(
    target: Target,
    settings: Settings,
    log_dir: Path,
    emit_run: Callable[[dict[str, Any]], None],
) -> Outcome:
    """Run every repetition of one target's scenario; evaluate its checks."""
    servers = [
        s for s in target.servers
        if (not settings.servers or s in settings.servers) and s not in settings.skip_servers
    ]
    args = target.wsload_args(settings.quick, settings.duration)
    print(f"== {target.key} {target.scenario}: {target.description}\n   wsload {' '.join(args)}",
          flush=True)
    runs: list[dict[str, Any]] = []
    for rep in range(settings.reps):
        order = servers if rep % 2 == 0 else list(reversed(servers))
        for name in order:
            for attempt in range(1 + settings.retry_noisy):
                if settings.wait_quiet > 0:
                    rq.wait_until_quiet(settings.wait_quiet)
                record = rq.run_once(target.scenario, _scenario(target), name, rep, args,
                                     settings.pinning, log_dir)
                retry = bool(record.get("noisy")) and attempt < settings.retry_noisy
                record["discarded"] = retry
                emit_run(record)
                rq.print_run(record, target.metric)
                if not retry:
                    break
                print("    (noisy: repeating this run)", flush=True)
            runs.append(record)
    summary = rq.summarize(target.scenario, _scenario(target), servers, runs)
    rq.print_summary(summary)
    outcome = Outcome(target, servers, runs, summary)
    outcome.checks = [
        evaluate(check, runs) for check in target.checks
        if check.server in servers and (check.baseline is None or check.baseline in servers)
    ]
    for check in outcome.checks:
        print(f"   {target.key} {check['label']}: {fmt_value(check['value'])} "
              f"(target {check['op']} {check['threshold']:g}): {check['verdict']}", flush=True)
    return outcome


def profile_misses(
    outcome: Outcome, settings: Settings, log_dir: Path, emit_run: Callable[[dict[str, Any]], None]
) -> None:
    """
    For each wsfabric server with a missed check, one extra run under
    py-spy (not counted in the figures): where its CPU goes.
    """
    missed = sorted({c["server"] for c in outcome.checks if c["verdict"] == "not met"})
    if not missed or outcome.target.metric in ("rss_kib_per_conn", "conns_opened"):
        return  # memory and holding targets: a CPU profile says nothing
    args = outcome.target.wsload_args(settings.quick, 4.0 if not settings.quick else 2.0)
    for server in missed:
        print(f"   profiling {server} (py-spy, one extra run, not in the figures)", flush=True)
        record = rq.run_once(outcome.target.scenario, _scenario(outcome.target), server,
                             99, args, settings.pinning, log_dir, profile=True)
        record["discarded"] = True
        emit_run(record)
        rq.print_run(record, outcome.target.metric)
        outcome.profiles.append(
            {"server": server, "ok": record["ok"], "profile": record.get("profile", {}),
             "metric": record.get(outcome.target.metric)}
        )


def _scenario(target: Target) -> rq.Scenario:
    comparisons = tuple(
        (c.server, c.baseline) for c in target.checks
        if c.baseline is not None and c.baseline != target.baseline
    ) + target.comparisons
    return rq.Scenario(
        description=target.description,
        wsload=target.wsload,
        servers=target.servers,
        baseline=target.baseline,
        metric=target.metric,
        higher_is_better=target.higher_is_better,
        target=target.title,
        comparisons=comparisons,
    )


def fmt_value(values: dict[str, float] | None) -> str:
    """:return: ``median (min-max)`` of a spread, or ``n/a``."""
    if values is None:
        return "n/a"
    return f"{values['median']:,.3g} ({values['min']:,.3g}-{values['max']:,.3g})"


def rescore(results_dir: Path) -> None:
    """
    Evaluate the checks again from ``runs.jsonl`` with the current rules and
    rewrite ``results.jsonl`` (``python -m bench report``).
    """
    runs = [json.loads(line) for line in
            (results_dir / "runs.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    by_scenario = {t.scenario: t for t in targets()}
    path = results_dir / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    for line in lines:
        target = by_scenario.get(line["scenario"])
        if target is None:
            continue
        mine = [r for r in runs if r["scenario"] == line["scenario"] and not r.get("discarded")]
        line["checks"] = [
            evaluate(check, mine) for check in target.checks
            if check.server in line["servers"]
            and (check.baseline is None or check.baseline in line["servers"])
        ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def run_suite(settings: Settings, out_dir: Path, meta: dict[str, Any]) -> list[Outcome]:
    """
    Run the selected targets; write ``results.jsonl`` (one line per scenario)
    and ``runs.jsonl`` (every run) into ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    outcomes: list[Outcome] = []
    with open(out_dir / "runs.jsonl", "w", encoding="utf-8") as runs_file, \
            open(out_dir / "results.jsonl", "w", encoding="utf-8") as results_file:

        def emit_run(record: dict[str, Any]) -> None:
            runs_file.write(json.dumps(record) + "\n")
            runs_file.flush()

        for target in targets():
            if not selected(target, settings.only):
                continue
            started = time.monotonic()
            outcome = run_target(target, settings, log_dir, emit_run)
            if settings.profile_misses:
                profile_misses(outcome, settings, log_dir, emit_run)
            outcomes.append(outcome)
            results_file.write(json.dumps(outcome.record(meta)) + "\n")
            results_file.flush()
            print(f"   ({target.key} took {time.monotonic() - started:.0f} s)", flush=True)
    return outcomes
