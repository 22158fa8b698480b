"""
The suite's report: ``report.md`` and ``bench-*.png`` plots from the
scenario lines of ``results.jsonl`` (see :mod:`suite`).

    python -m bench report [--results DIR]   # rebuild from a results directory
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: How each metric reads in the report.
METRIC_LABELS = {
    "msgs_per_s": "echoed messages/s",
    "deliveries_per_s": "deliveries/s",
    "rss_kib_per_conn": "KiB per connection",
    "latency_p50_us": "p50 latency (us)",
    "latency_p99_us": "p99 latency (us)",
    "conns_opened": "connections held",
    "cycles_per_s": "connect+close cycles/s",
    "units_per_holder_cpu_s": "per gate (or server) CPU-second",
    "errors_during_hold": "errors",
    "rss_growth_during_hold_kib": "KiB",
}

#: Frames on every stack (the reactor loop, twistd, logging context): left
#: out of the inclusive lists, which should show where the work is.
PLUMBING = ("<module>", "twisted/application", "twisted/scripts", "ReactorBase.",
            "doPoll", "log.py", "context.py", "_doReadOrWrite")

#: Per-server columns of the scenario tables: (record key, header, format).
COLUMNS = (
    ("server_cpu_pct", "server CPU %", ".0f"),
    ("client_cpu_pct", "wsload CPU %", ".0f"),
    ("server_cpu_us_per_unit", "server µs/unit", ".1f"),
    ("other_cpu_pct", "others' CPU %", ".0f"),
)


def load(results: Path) -> list[dict[str, Any]]:
    """:return: the scenario lines of ``results/results.jsonl``."""
    lines = (results / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def spread_text(values: dict[str, float] | None, fmt: str = ",.3g") -> str:
    """:return: ``median`` and ``[min – max]`` of a spread."""
    if not values:
        return "n/a"
    return f"**{values['median']:{fmt}}** [{values['min']:{fmt}} – {values['max']:{fmt}}]"


def figure_fmt(metric: str) -> str:
    """:return: the format for a metric's values."""
    return ",.2f" if metric.startswith("rss_kib") else ",.0f"


def verdict_text(check: dict[str, Any]) -> str:
    """:return: the verdict as the table shows it."""
    verdict = check["verdict"]
    if verdict == "not met" and check.get("floor") is not None:
        side = "above" if check.get("floor_met") else "below"
        return f"not met ({side} the {check['floor']:g} floor)"
    return verdict


def plot(scenarios: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """
    One bar chart per scenario (median, min–max whiskers) and one chart of
    every check as a fraction of its target.

    :return: the PNG files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for sc in scenarios:
        metric = sc["metric"]
        names = [s for s in sc["servers"] if sc["figures"].get(s, {}).get(metric)]
        if not names:
            continue
        med = [sc["figures"][s][metric]["median"] for s in names]
        low = [m - sc["figures"][s][metric]["min"] for s, m in zip(names, med, strict=True)]
        high = [sc["figures"][s][metric]["max"] - m for s, m in zip(names, med, strict=True)]
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.55 * len(names)))
        colors = ["#4c72b0" if n.startswith("wsfabric") else "#999999" for n in names]
        ax.barh(names, med, xerr=[low, high], color=colors, capsize=4)
        ax.invert_yaxis()
        ax.set_xlabel(METRIC_LABELS.get(metric, metric) + (
            "" if sc["higher_is_better"] else " (lower is better)"))
        ax.set_title(f"{sc['target']} {sc['scenario']}: median of {sc['reps']}, min–max",
                     fontsize=10)
        for i, value in enumerate(med):
            ax.text(value, i, f" {value:,.{2 if metric.startswith('rss') else 0}f}",
                    va="center", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"bench-{sc['scenario']}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    checks = [(sc["target"], c) for sc in scenarios for c in sc["checks"] if c.get("value")]
    if checks:
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.4 * len(checks)))
        labels, scores, colors = [], [], []
        for key, c in checks:
            value = c["value"]["median"]
            # "how far along the target": >= 1 is met whichever the direction
            if c["op"] == ">=":
                score = value / c["threshold"] if c["threshold"] else 0.0
            else:
                score = c["threshold"] / value if value else (1.0 if c["threshold"] >= 0 else 0.0)
                if c["threshold"] == 0:
                    score = 1.0 if value <= 0 else 0.0
            labels.append(c["label"] if c["label"].startswith("P") else f"{key} {c['label']}")
            scores.append(min(score, 3.0))
            colors.append("#55a868" if c["verdict"] == "met" else "#c44e52")
        ax.barh(labels, scores, color=colors)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.invert_yaxis()
        ax.set_xlabel("measured / target (>= 1 is met; capped at 3)")
        ax.set_title("Targets P1–P8, medians, same-run ratios", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        fig.tight_layout()
        path = out_dir / "bench-targets.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def targets_table(scenarios: list[dict[str, Any]]) -> list[str]:
    """:return: the P1–P8 table: one row per check."""
    rows = [
        "| target | check | measured: median [min – max] | target | verdict "
        "| the same ratio in rate (msg/s, deliveries/s) |",
        "|---|---|---|---|---|---|",
    ]
    for sc in scenarios:
        for c in sc["checks"]:
            kind = f"ratio to {c['baseline']}" if c["baseline"] else METRIC_LABELS.get(
                c["metric"], c["metric"])
            if c.get("basis"):
                kind += ", per server CPU-second"
            fmt = ",.3f" if c["baseline"] else figure_fmt(c["metric"])
            rows.append(
                f"| {sc['target']} | {c['label']} ({kind}) | {spread_text(c['value'], fmt)} "
                f"| {c['op']} {c['threshold']:,g} | {verdict_text(c)} "
                f"| {spread_text(c['value_rate'], ',.3f') if c.get('value_rate') else ''} |"
            )
    return rows


def scenario_section(sc: dict[str, Any], image_prefix: str) -> list[str]:
    """:return: one scenario's section: description, figures table, ratios, plot."""
    metric = sc["metric"]
    fmt = figure_fmt(metric)
    out = [f"### {sc['target']} — {sc['scenario']}", "", sc["description"] + ".", ""]
    if sc.get("note"):
        out += [f"> Note: {sc['note']}.", ""]
    if sc.get("loadgen_args"):
        args = sc["loadgen_args"]
        cmd = " ".join(a for i, a in enumerate(args) if not a.startswith("ws://")
                       and not (a == "--url" and i + 1 < len(args)
                                and args[i + 1].startswith("ws://")))
        out += [f"Load: `{cmd}` (URLs left out)", ""]
    header = f"| server | {METRIC_LABELS.get(metric, metric)} | " + " | ".join(
        h for _, h, _ in COLUMNS) + " | runs ok/failed |"
    out += [header, "|---" * (3 + len(COLUMNS)) + "|"]
    for name in sc["servers"]:
        fig = sc["figures"].get(name, {})
        cells = [spread_text(fig.get(metric), fmt)]
        for key, _, cfmt in COLUMNS:
            value = fig.get(key)
            cells.append(f"{value['median']:{cfmt}}" if value else "")
        out.append(f"| {name} | " + " | ".join(cells) + f" | {fig.get('n', 0)}/"
                   f"{fig.get('failed', 0)} |")
    extra = []
    for name in sc["servers"]:
        fig = sc["figures"].get(name, {})
        for key in ("latency_p99_us", "units_per_holder_cpu_s", "rss_kib_per_conn_all",
                    "rss_growth_during_hold_kib", "errors_during_hold", "delivery_ratio"):
            if key != metric and fig.get(key):
                extra.append(f"{name} {key}: {spread_text(fig[key], ',.4g')}")
    if extra:
        out += ["", "Other figures (median [min – max]): " + "; ".join(extra) + "."]
    if sc["ratios"]:
        out += ["", "Same-repetition ratios of the metric (median [min – max]): " + "; ".join(
            f"{pair} {spread_text(v, '.3f')}" for pair, v in sc["ratios"].items() if v) + "."]
    out += ["", f"![{sc['scenario']}]({image_prefix}bench-{sc['scenario']}.png)", ""]
    for prof in sc.get("profiles", []):
        out += profile_lines(prof)
    return out


def profile_lines(prof: dict[str, Any], top: int = 12) -> list[str]:
    """:return: a py-spy profile's top frames as a Markdown list."""
    out = [f"py-spy profile of **{prof['server']}** (one extra run, not in the figures):", ""]
    for role, data in sorted(prof.get("profile", {}).items()):
        if "self" not in data:
            out.append(f"- {role}: profile failed: {data.get('error', '')[:200]}")
            continue
        own = ", ".join(f"`{f}` {p}%" for f, p in data["self"][:top])
        frames = data["total"]
        if Path(data.get("file", "")).is_file():  # the full profile: look deeper
            from run_quick import summarize_profile

            frames = summarize_profile(Path(data["file"]), top=80).get("total", frames)
        total = ", ".join(f"`{f}` {p}%" for f, p in frames
                          if not any(part in f for part in PLUMBING))
        out.append(f"- {role} ({data['samples']} samples) — self: {own}")
        if total:
            out.append(f"  - inclusive: {total}")
    return [*out, ""]


def section_of(sc: dict[str, Any]) -> str:
    """:return: the report section of a scenario line (``targets`` or ``routed``)."""
    return sc.get("section", "targets")


def _cell(fig: dict[str, Any], key: str, fmt: str = ",.0f") -> str:
    return spread_text(fig.get(key), fmt) if fig.get(key) else "n/a"


def _ratio(sc: dict[str, Any], pair: str, table: str = "ratios_per_server_cpu") -> str:
    values = sc.get(table, {}).get(pair)
    return spread_text(values, ".3f") if values else ""


def routed_summary(scenarios: list[dict[str, Any]]) -> list[str]:
    """
    :return: the summary tables of the routed section: routed round trips
        beside raw echo, service calls beside cluster echo, connection rate
        with and without JWT; every figure median [min – max], every ratio
        paired within a repetition.
    """
    by_name = {sc["scenario"]: sc for sc in scenarios}
    out: list[str] = []
    routed, latency = by_name.get("routed"), by_name.get("routed-latency")
    if routed or latency:
        out += [
            "### Routed request/response (`bench.echo`, 64-character data)",
            "",
            "| server | round trips/s (100 conns x 8) | per server CPU-second | "
            "÷ its raw echo, per CPU-second | p50 µs at 2,000/s | p99 µs at 2,000/s | "
            "÷ its raw echo, p50 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in (routed or latency)["servers"]:
            base = "wsfabric-cluster-echo" if "cluster" in name else "wsfabric-echo"
            pair = f"{name}/{base}"
            rf = routed["figures"].get(name, {}) if routed else {}
            lf = latency["figures"].get(name, {}) if latency else {}
            per_cpu = "" if name == base else _ratio(routed or {}, pair)
            p50_ratio = ("" if name == base or latency is None
                         else _ratio(latency, pair, "ratios"))
            out.append(
                f"| {name} | {_cell(rf, 'msgs_per_s')} | {_cell(rf, 'units_per_server_cpu_s')} "
                f"| {per_cpu} | {_cell(lf, 'latency_p50_us')} | {_cell(lf, 'latency_p99_us')} "
                f"| {p50_ratio} |"
            )
        out.append("")
    rpc = [by_name[k] for k in sorted(by_name) if k.startswith("rpc-c")]
    if rpc:
        out += [
            "### Service-to-service calls (backend a → Redis → backend b → Redis → a)",
            "",
            "| in flight | server | round trips/s | per server CPU-second | p50 µs | p99 µs "
            "| RPC ÷ cluster echo (rate) | (per CPU-second) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for sc in sorted(rpc, key=lambda sc: int(sc["scenario"][5:])):
            for name in sc["servers"]:
                fig = sc["figures"].get(name, {})
                pair = f"{name}/{sc['servers'][0]}"
                rate = _ratio(sc, pair, "ratios") if name != sc["servers"][0] else ""
                cpu = _ratio(sc, pair) if name != sc["servers"][0] else ""
                out.append(
                    f"| {sc['scenario'][5:]} | {name} | {_cell(fig, 'msgs_per_s')} "
                    f"| {_cell(fig, 'units_per_server_cpu_s')} | {_cell(fig, 'latency_p50_us')} "
                    f"| {_cell(fig, 'latency_p99_us')} | {rate} | {cpu} |"
                )
        out.append("")
    conn = by_name.get("connrate-jwt")
    if conn:
        out += [
            "### Connection rate with and without JWT (16 concurrent cycles)",
            "",
            "| server | cycles/s | cycles per gate (or server) CPU-second | "
            "÷ no authentication, per gate CPU-second | µs of gate CPU per cycle |",
            "|---|---|---|---|---|",
        ]
        for name in conn["servers"]:
            fig = conn["figures"].get(name, {})
            base = "wsfabric-cluster-echo" if "cluster" in name else "wsfabric-echo"
            ratio = "" if name == base else _ratio(conn, f"{name}/{base}",
                                                   "ratios_per_holder_cpu")
            holder = fig.get("units_per_holder_cpu_s")
            us = (f"{1e6 / holder['median']:,.0f}" if holder and holder["median"] else "n/a")
            out.append(
                f"| {name} | {_cell(fig, 'cycles_per_s')} "
                f"| {_cell(fig, 'units_per_holder_cpu_s')} | {ratio} | {us} |"
            )
        out.append("")
    return out


def routed_section(
    scenarios: list[dict[str, Any]], meta: dict[str, Any], image_prefix: str
) -> list[str]:
    """:return: the body of the routed section: how it was made, summary, scenarios."""
    mine = [sc for sc in scenarios if section_of(sc) == "routed"]
    if not mine:
        return []
    how = "quick: 1 repetition" if meta["quick"] else f"{meta['reps']} repetitions"
    out = [
        f"Made by `{meta['command']}` on {meta['time']} ({how}, "
        f"{meta.get('duration_s', 0):.0f} s), on the machine of the report above unless "
        f"stated: {meta['machine'].get('CPU', '?')}, {meta['machine'].get('pinning', '')}; "
        f"wsfabric {meta['versions'].get('wsfabric', '?')}.",
        "",
        "Every figure is the median [min – max] over the repetitions; every ratio divides "
        "by the baseline **of the same repetition** (servers started fresh, back to back, "
        "order alternated). Throughput ratios are per server CPU-second (all the server's "
        "processes on one core), which holds when other work on this shared machine takes "
        "part of that core; the connection-rate ratios are per gate (or standalone "
        "server) CPU-second, as P8 counts.",
        "",
        *routed_summary(mine),
    ]
    out += ["### Each scenario", ""]
    for sc in mine:
        out += [("#" + line) if line.startswith("### ") else line
                for line in scenario_section(sc, image_prefix)]
    return out


def write_report(results: Path, meta: dict[str, Any], image_prefix: str = "") -> Path:
    """
    Write ``report.md`` and the plots into ``results``.

    :param meta: command, machine and versions (``meta.json``).
    :param image_prefix: how the Markdown refers to the plots' directory.
    :return: the report's path.
    """
    scenarios = load(results)
    try:
        plot(scenarios, results)
    except ImportError:  # matplotlib is in the bench venv, not everywhere
        print("bench: matplotlib is not installed: no plots", file=sys.stderr)
    how = "quick: 1 repetition, short windows" if meta["quick"] else f"{meta['reps']} repetitions"
    lines = [
        "# wsfabric benchmark report",
        "",
        f"Made by `{meta['command']}` on {meta['time']} "
        f"({how}, {meta['duration_s']:.0f} s).",
        "",
        "Every figure is the **median [min – max]** over the repetitions; every ratio divides "
        "a server's figure by its baseline's **of the same repetition** (servers run back "
        "to back, order alternated). Absolute figures drift with the machine (a shared "
        "2-core VM: other sessions' work shows as *others' CPU %*); the ratios are what "
        "the targets state.",
        "",
        "Throughput targets (P1–P4) are judged on the ratio of **work per server "
        "CPU-second** (messages or deliveries per CPU-second of all the server's processes, "
        "pinned to one core): when the server has its core to itself it equals the ratio of "
        "rates, and when other processes take part of that core it still measures the code. "
        "The ratio of rates is shown beside it.",
        "",
        "## Machine and versions",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in meta["machine"].items()]
    lines += [f"- {key} {value}" for key, value in meta["versions"].items()]
    targets = [sc for sc in scenarios if section_of(sc) == "targets"]
    if targets:
        lines += [
            "",
            "## Targets",
            "",
            *targets_table(targets),
            "",
            f"![targets]({image_prefix}bench-targets.png)",
            "",
            "## Scenarios",
            "",
        ]
        for sc in targets:
            lines += scenario_section(sc, image_prefix)
    routed = routed_section(scenarios, meta, image_prefix)
    if routed:
        lines += ["", "## Routed messages, RPC and authentication", "", *routed]
    path = results / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
