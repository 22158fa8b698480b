"""
The load driver of the service-to-service call scenarios, in place of wsload.

It joins the cluster's Redis as an outside process (``wsfabric.connect``,
docs/services.md), asks backend ``a`` to run ``bench.rpc`` (calls from
``a`` to service ``b``, see :class:`bench.apps.RpcBenchApp`) once for a
warm-up and once for the measured window, and prints ONE JSON object shaped
like wsload's echo result (a "message" is one call's round trip), with
``EVENT measure_start`` / ``EVENT measure_end`` on stderr so the engine
samples the servers' CPU over exactly that window::

    WSFABRIC_CLUSTER_SECRET=... python bench/rpc_driver.py echo \\
        --redis redis://127.0.0.1:PORT/0 -c 32 -w 1 -s 64 -d 6 --warmup 2

It takes wsload's echo flags, so one scenario's arguments drive both:
``-c`` x ``-w`` calls in flight, ``-s`` characters of data per call, ``-d``
measured seconds, ``--warmup`` seconds. Other wsload flags are ignored.
Only a loopback Redis is accepted; every call and the whole run are bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

#: Loopback hosts the driver accepts in --redis.
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Calls a run may make at most, whatever its duration.
MAX_CALLS = 2_000_000
#: How long the backends may take to register their services.
READY_TIMEOUT_S = 30.0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """:return: the options (wsload's echo flags plus ``--redis`` and ``--service``)."""
    parser = argparse.ArgumentParser(prog="rpc_driver", description=__doc__.splitlines()[1])
    parser.add_argument("mode", choices=("echo",), help="wsload's mode (echo only)")
    parser.add_argument("--redis", required=True, help="the cluster's Redis URL (loopback)")
    parser.add_argument("--service", default="a", help="the calling service [a]")
    parser.add_argument("--callee", default="b", help="the called service [b]")
    parser.add_argument("-c", "--conns", type=int, default=1)
    parser.add_argument("-w", "--window", type=int, default=1)
    parser.add_argument("-s", "--size", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    opts, _ignored = parser.parse_known_args(list(argv))
    if urlsplit(opts.redis).hostname not in LOOPBACK:
        parser.error("--redis must be on 127.0.0.1, localhost or ::1")
    if not 1 <= opts.conns * opts.window <= 1024:
        parser.error("-c x -w must be 1..1024")
    if not 0 < opts.duration <= 120 or not 0 <= opts.warmup <= 60:
        parser.error("-d must be in (0, 120] and --warmup in [0, 60]")
    if not 1 <= opts.size <= 65536:
        parser.error("-s must be 1..65536")
    return opts


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(reactor: Any, opts: argparse.Namespace) -> dict[str, Any]:
    """
    Warm up, then run the measured window.

    :return: the result object (``ok`` false with ``error`` on failure).
    """
    from twisted.internet.task import deferLater

    import wsfabric
    from wsfabric.errors import RemoteError

    fabric = wsfabric.connect(opts.redis, cluster_secret=os.environ["WSFABRIC_CLUSTER_SECRET"])
    await fabric.when_ready(timeout=15.0)
    concurrency = opts.conns * opts.window
    request = {"service": opts.callee, "concurrency": concurrency, "count": MAX_CALLS,
               "data": "x" * opts.size}
    try:
        # Until both backends have registered (and a's registry cache sees b),
        # calls fail with service_unavailable: retry the warm-up, bounded.
        ready_by = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                warm = await fabric.call(
                    opts.service, "bench.rpc", {**request, "seconds": max(opts.warmup, 0.2)},
                    timeout=opts.warmup + 30)
            except RemoteError as exc:
                if exc.code != "service_unavailable" or time.monotonic() > ready_by:
                    raise
                warm = None
            if warm is not None and warm["calls"] and not warm["errors"]:
                break
            if time.monotonic() > ready_by:
                raise RuntimeError(f"the warm-up calls kept failing: {warm}")
            await deferLater(reactor, 0.2, lambda: None)
        cpu0 = _cpu()
        print(f"EVENT measure_start {time.monotonic():.6f}", file=sys.stderr, flush=True)
        answer = await fabric.call(opts.service, "bench.rpc",
                                   {**request, "seconds": opts.duration},
                                   timeout=opts.duration + 30)
        print(f"EVENT measure_end {time.monotonic():.6f}", file=sys.stderr, flush=True)
        cpu = _cpu() - cpu0
    finally:
        await fabric.close()
    seconds = answer["seconds"] or 1e-9
    calls = answer["calls"]
    result: dict[str, Any] = {
        "ok": calls > 0,
        "mode": "rpc",
        "url": opts.redis,
        "caller": opts.service,
        "callee": opts.callee,
        "concurrency": concurrency,
        "size": opts.size,
        "duration_s": seconds,
        "msgs_recv": calls,
        "msgs_per_s": round(calls / seconds, 3),
        "errors": answer["errors"],
        "error_detail": {kind: 1 for kind in answer.get("error_kinds", [])},
        "latency_us": {"p50": answer["p50_us"], "p99": answer["p99_us"],
                       "p999": answer["p999_us"], "max": answer["max_us"]},
        "client_cpu_pct": round(100 * cpu / seconds, 1),
        "client_cpu_total_s": round(_cpu(), 3),
    }
    if not result["ok"]:
        result["error"] = "no call was answered"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    opts = parse(sys.argv[1:] if argv is None else argv)
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    outcome: dict[str, Any] = {}

    def run(reactor_: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(drive(reactor_, opts))
        d.addCallback(outcome.update)
        d.addErrback(lambda f: outcome.update(
            {"ok": False, "error": f"{f.type.__name__}: {f.getErrorMessage()}"[:500]}))
        # a hard bound on the whole run, beyond the calls' own timeouts
        timer = reactor_.callLater(opts.warmup + opts.duration + 90, d.cancel)
        d.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return d

    try:
        react(run)
    except SystemExit:
        pass
    print(json.dumps(outcome), flush=True)
    return 0 if outcome.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
