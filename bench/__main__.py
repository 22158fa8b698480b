"""
``python -m bench``: wsfabric's benchmark suite in one command.

    python -m bench run              # full: >= 3 repetitions of P1-P8 (~20 min)
    python -m bench run --quick      # smoke: 1 repetition, short windows (~4 min)
    python -m bench run --only P3,P4 --reps 5
    python -m bench report           # rebuild report.md and plots from results/
    python -m bench publish          # copy the report into docs/performance.md

``run`` first makes sure of the bench venv ``bench/.venv`` (created when
missing; wsfabric installed from this clone with ``pip install -e .``, the
peers of ``bench/requirements.txt`` from the package registry; reinstalled
when either file changes) and re-executes itself with it; ``--no-venv`` runs
with the current interpreter and leaves out the peers it lacks. It builds
the C load generator with gcc, raises the descriptor limit, runs every
selected target (servers on CPU 0, wsload on CPU 1 when ``taskset`` is
there, everything on 127.0.0.1, every run bounded), stops every process it
started by pid, and writes into ``bench/results/`` (``--out``):
``results.jsonl`` (one line per scenario), ``runs.jsonl`` (every run),
``meta.json``, ``report.md`` and ``bench-*.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv"
REQUIREMENTS = BENCH / "requirements.txt"
RESULTS = BENCH / "results"
DOCS = ROOT / "docs"
STAMP = VENV / ".bench-stamp"

# The engine modules import each other by name (they also run as scripts).
sys.path.insert(0, str(BENCH))

#: Servers that need a peer framework, and the module that must be importable.
PEER_MODULES = {
    "socketio-group": "socketio",
    "channels-group": "channels_redis",
    "channels-group-core": "channels_redis",
}

#: Packages whose versions the report states.
VERSIONED = (
    "wsfabric", "twisted", "autobahn", "txredisapi", "hiredis", "python-socketio",
    "python-engineio", "aiohttp", "redis", "channels", "channels_redis", "daphne", "django",
    "psutil", "matplotlib", "py-spy",
)

PUBLISH_START = "<!-- bench-report:start -->"
PUBLISH_END = "<!-- bench-report:end -->"
#: The routed section (routed messages, service calls, JWT) has markers of
#: its own, so publishing one part of the suite leaves the other as it was.
ROUTED_START = "<!-- bench-routed:start -->"
ROUTED_END = "<!-- bench-routed:end -->"
ROUTED_HEADING = "## Routed messages, RPC and authentication"


# --------------------------------------------------------------------------
# The bench venv


def _in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _stamp() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, ROOT / "setup.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv() -> Path:
    """
    Create or update ``bench/.venv``.

    :return: its Python.
    :raises SystemExit: with a one-line error if pip fails.
    """
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"bench: creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    if not STAMP.exists() or STAMP.read_text() != _stamp():
        print("bench: installing wsfabric (editable) and the peers into the bench venv",
              flush=True)
        # compat mode: a .pth path entry, so twistd finds twisted/plugins/
        # (the import-hook editable mode hides that namespace directory)
        cmd = [str(python), "-m", "pip", "install", "--quiet",
               "--config-settings", "editable_mode=compat", "-e", str(ROOT),
               "-r", str(REQUIREMENTS)]
        proc = subprocess.run(cmd, cwd=ROOT, timeout=1800, check=False)
        if proc.returncode != 0:
            sys.exit(f"bench: error: {' '.join(cmd)} failed (status {proc.returncode})")
        STAMP.write_text(_stamp())
    return python


# --------------------------------------------------------------------------
# What the report states about the run


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> dict[str, str]:
    """:return: CPU, cores, memory, kernel, limits."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import resource

    import psutil

    pinning = "servers on CPU 0, wsload on CPU 1 (taskset)" if (
        shutil.which("taskset") and (os.cpu_count() or 1) >= 2) else "no pinning"
    return {
        "CPU": f"{model}, {os.cpu_count()} cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "kernel": platform.release(),
        "OS": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "descriptor limit": f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,} (hard)",
        "pinning": pinning,
    }


def versions() -> dict[str, str]:
    """:return: Python, the packages, redis-server, gcc and the git revision."""
    out = {"Python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    rev = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "wsfabric"],
                           capture_output=True, text=True, check=False).stdout.strip()
    state = ", wsfabric/ modified" if dirty else ""
    out["wsfabric"] = out.get("wsfabric", "?") + f" (git {rev}{state})"
    out["redis-server"] = _first_line(["redis-server", "--version"])
    out["gcc"] = _first_line(["gcc", "--version"])
    return out


# --------------------------------------------------------------------------
# Commands


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_run(opts: argparse.Namespace, argv: Sequence[str]) -> int:
    """``run``: the suite; see the module docstring."""
    if not opts.no_venv and not _in_bench_venv():
        python = ensure_venv()
        os.chdir(ROOT)
        os.execv(str(python), [str(python), "-m", "bench", *argv])

    import build_wsload
    import report
    import run_quick
    import suite

    missing = tuple(s for s, mod in PEER_MODULES.items() if importlib.util.find_spec(mod) is None)
    if missing:
        print(f"bench: peers not installed here, left out: {', '.join(missing)}", flush=True)
    settings = suite.Settings(
        quick=opts.quick,
        reps=opts.reps or (1 if opts.quick else 3),
        pinning=not opts.no_pin,
        wait_quiet=opts.wait_quiet,
        retry_noisy=opts.retry_noisy,
        only=tuple(x.strip() for x in (opts.only or "").split(",") if x.strip()),
        servers=tuple(x.strip() for x in (opts.servers or "").split(",") if x.strip()),
        duration=opts.duration,
        skip_servers=missing,
        profile_misses=not opts.no_profile and not opts.quick,
    )
    known = {t.key.lower() for t in suite.targets()} | {t.scenario for t in suite.targets()}
    known |= {p.lower() for t in suite.targets() for p in t.key.split("+")}
    unknown = [x for x in settings.only if x.lower() not in known]
    if unknown:
        print(f"bench: error: unknown target(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    bad = [s for s in settings.servers if s not in run_quick.SERVERS]
    if bad:
        print(f"bench: error: unknown server(s) {', '.join(bad)}", file=sys.stderr)
        return 2
    if not 1 <= settings.reps <= 20:
        print("bench: error: --reps must be 1..20", file=sys.stderr)
        return 2

    run_quick.raise_nofile()
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    try:
        build_wsload.ensure_wsload()
    except build_wsload.BuildError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    out = opts.out.resolve()
    started = time.monotonic()
    meta: dict[str, Any] = {
        "command": "python -m bench " + shlex.join(argv),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": settings.quick,
        "reps": settings.reps,
        "machine": machine(),
        "versions": versions(),
    }
    outcomes = suite.run_suite(settings, out, meta)
    meta["duration_s"] = time.monotonic() - started
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    path = report.write_report(out, meta)
    print(f"bench: {len(outcomes)} scenario(s) in {meta['duration_s']:.0f} s; report {path}",
          flush=True)
    for outcome in outcomes:
        for check in outcome.checks:
            print(f"  {outcome.target.key:<6} {check['label']:<45} "
                  f"{suite.fmt_value(check['value']):<32} {check['verdict']}")
    failed = sum(f["failed"] for o in outcomes for f in o.summary["servers"].values())
    return 1 if failed else 0


def cmd_report(opts: argparse.Namespace) -> int:
    """``report``: rebuild report.md and the plots from a results directory."""
    import report
    import suite

    out = opts.out.resolve()
    meta = json.loads((out / "meta.json").read_text())
    if (out / "runs.jsonl").exists():
        suite.rescore(out)
    print(report.write_report(out, meta))
    return 0


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def cmd_publish(opts: argparse.Namespace) -> int:
    """
    ``publish``: put the latest report into docs/performance.md and its plots
    into docs/images/. Each part the results hold replaces only its own part
    of the page: P1-P8 between the ``bench-report`` markers, the routed
    scenarios (``--only R1,R2,S1,S32,A1``) between the ``bench-routed``
    markers (the section is appended when the page has none yet).
    """
    import report

    out = opts.out.resolve()
    meta = json.loads((out / "meta.json").read_text())
    scenarios = report.load(out)
    sections = {report.section_of(sc) for sc in scenarios}
    images = DOCS / "images"
    images.mkdir(parents=True, exist_ok=True)
    report.write_report(out, meta, image_prefix="images/")
    text = (out / "report.md").read_text(encoding="utf-8")
    report.write_report(out, meta)  # the results directory keeps local links
    plots = {f"bench-{sc['scenario']}.png" for sc in scenarios}
    if "targets" in sections:
        plots.add("bench-targets.png")
    for png in out.glob("bench-*.png"):
        if png.name in plots:  # another part's plots stay as published
            shutil.copy2(png, images / png.name)
    page = DOCS / "performance.md"
    current = page.read_text(encoding="utf-8") if page.exists() else (
        f"# Performance\n\n{PUBLISH_START}\n{PUBLISH_END}\n")
    routed_text = ""
    if "\n## Routed messages, RPC and authentication\n" in text:
        text, routed_text = text.split("\n## Routed messages, RPC and authentication\n", 1)
    if "targets" in sections:
        if PUBLISH_START not in current or PUBLISH_END not in current:
            print(f"bench: error: {page} lacks the {PUBLISH_START} markers", file=sys.stderr)
            return 1
        body = text.split("\n", 1)[1].replace("\n## ", "\n### ")
        current = _replace_between(current, PUBLISH_START, PUBLISH_END, body)
    if routed_text:
        if ROUTED_START not in current or ROUTED_END not in current:
            current = (f"{current.rstrip()}\n\n{ROUTED_HEADING}\n\n"
                       f"{ROUTED_START}\n{ROUTED_END}\n")
        current = _replace_between(current, ROUTED_START, ROUTED_END, routed_text)
    page.write_text(current, encoding="utf-8")
    print(f"{page} updated ({', '.join(sorted(sections))}); plots in {images}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suite")
    run.add_argument("--quick", action="store_true", help="1 repetition, short windows")
    run.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    run.add_argument("--only", help="comma-separated targets or scenarios (P1, P3, idle...)")
    run.add_argument("--servers", help="comma-separated servers to keep in every scenario")
    run.add_argument("--duration", type=float, help="every measured window, seconds")
    run.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    run.add_argument("--no-venv", action="store_true", help="use this interpreter as it is")
    run.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    run.add_argument("--no-profile", action="store_true",
                     help="no py-spy run where a target is missed")
    run.add_argument("--wait-quiet", type=float, default=5.0,
                     help="wait up to this long for an idle machine before each run")
    run.add_argument("--retry-noisy", type=int, default=1,
                     help="repeat a run that other processes disturbed (default 1)")
    for name in ("report", "publish"):
        p = sub.add_parser(name, help=f"{name} the results")
        p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    opts = parser.parse_args(argv)
    if opts.command == "run":
        return cmd_run(opts, argv)
    if opts.command == "report":
        return cmd_report(opts)
    return cmd_publish(opts)


if __name__ == "__main__":
    sys.exit(main())
