#!/usr/bin/env python3
"""
Check of the admin dashboard in headless Chromium.

    python tests/browser/dashboard_check.py URL SCREENSHOT [--group NAME]
        [--node-roles gate,backend] [--polls 3] [--timeout 60]

URL is the dashboard of a running node, e.g. http://127.0.0.1:8081/dashboard/.
The page must load with no uncaught error, poll its state at least
--polls times, show the node as ready, list a node row for each role of
--node-roles, list group NAME with its member count, show message rates,
and draw its chart. The screenshot goes to SCREENSHOT (also on failure).

Prints one line, ``dashboard_check: OK ...`` or ``dashboard_check: FAIL:
reason``, and exits 0 / 1 (check failed) / 2 (environment) / 3 (overall
timeout); see browserlib.py. It relies only on the element ids documented at
the top of wsfabric/admin/static/dashboard.html.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import browserlib  # noqa: E402
from browserlib import CheckFailed, EnvironmentProblem  # noqa: E402

NAME = "dashboard_check"
STEP_MS = 20000

# What the page shows, read in one go.
READ_JS = """() => {
  const text = (id) => document.getElementById(id).textContent.trim();
  const chart = document.getElementById('chart');
  return {
    polls: Number(document.body.dataset.polls || 0),
    status: text('status'),
    statusClass: document.getElementById('status').className,
    role: text('node-role'),
    connections: text('connections'),
    clients: text('clients-total'),
    rateIn: text('rate-in'),
    roles: Array.from(document.querySelectorAll('#nodes tr[data-node-id]'),
                      (tr) => tr.dataset.role),
    groups: Object.fromEntries(Array.from(document.querySelectorAll('#groups tr[data-group]'),
                      (tr) => [tr.dataset.group, tr.children[1].textContent])),
    chartWidth: chart.width,
  };
}"""


def check(url: str, screenshot: str, chromium_path: str, group: str, roles: list[str],
          polls: int, watchdog: browserlib.Watchdog) -> str:
    errors: list[str] = []
    with browserlib.chromium(
        chromium_path, launch_timeout_ms=watchdog.remaining_ms(30000)
    ) as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        browserlib.attach_logging(NAME, "dashboard", page, errors)
        try:
            watchdog.step = f"loading {url}"
            response = page.goto(url, wait_until="load",
                                 timeout=watchdog.remaining_ms(STEP_MS))
            if response is None or response.status != 200:
                raise EnvironmentProblem(
                    f"{url} answered {response.status if response else 'nothing'}"
                )
            watchdog.step = f"waiting for {polls} polls of the state"
            page.wait_for_function(
                "(polls) => Number(document.body.dataset.polls || 0) >= polls",
                arg=polls,
                timeout=watchdog.remaining_ms(STEP_MS + polls * 2500),
            )
            watchdog.step = f"waiting for group {group!r} and every node role"
            page.wait_for_function(
                """([group, roles]) => {
                  const have = new Set(Array.from(
                    document.querySelectorAll('#nodes tr[data-node-id]'),
                    (tr) => tr.dataset.role));
                  return roles.every((r) => have.has(r)) &&
                    document.querySelector('#groups tr[data-group="' + CSS.escape(group) + '"]');
                }""",
                arg=[group, roles],
                timeout=watchdog.remaining_ms(STEP_MS),
            )
            watchdog.step = "reading the page"
            seen: dict[str, Any] = page.evaluate(READ_JS)
            browserlib.log(NAME, f"page shows {seen}")
            if seen["status"] != "ready" or "ready" not in seen["statusClass"]:
                raise CheckFailed(f"the node is not shown ready: {seen['status']!r}")
            if seen["connections"] in ("", "–"):
                raise CheckFailed("no connection count")
            if seen["rateIn"] in ("", "–"):
                raise CheckFailed("no message rate")
            if seen["groups"].get(group) in (None, "", "–", "0"):
                raise CheckFailed(f"group {group!r} has no member count: {seen['groups']}")
            if seen["chartWidth"] <= 0:
                raise CheckFailed("the chart was not drawn")
            if errors:
                raise CheckFailed(f"uncaught errors in the page: {errors}")
            watchdog.step = "taking the screenshot"
            page.screenshot(path=screenshot, full_page=True,
                            timeout=watchdog.remaining_ms(STEP_MS))
        except BaseException:
            try:
                page.screenshot(path=screenshot, full_page=True, timeout=5000)
            except Exception:
                pass
            raise
    return (
        f"{seen['role']} ready, nodes {sorted(seen['roles'])}, groups {seen['groups']}, "
        f"{seen['rateIn']} msg/s in; screenshot {screenshot}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the dashboard, e.g. http://127.0.0.1:8081/dashboard/")
    parser.add_argument("screenshot", help="where the PNG goes")
    parser.add_argument("--group", default="lobby", help="a group that must be listed")
    parser.add_argument("--node-roles", default="", help="roles the node list must show")
    parser.add_argument("--polls", type=int, default=3,
                        help="polls of the state to wait for (default 3; 2 s each)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="overall limit in seconds (default 60)"
    )
    parser.add_argument(
        "--chromium",
        default=os.environ.get("WSFABRIC_CHROMIUM", browserlib.DEFAULT_CHROMIUM),
        help="Chromium binary (default $WSFABRIC_CHROMIUM or /usr/bin/chromium)",
    )
    args = parser.parse_args(argv)
    roles = [role for role in args.node_roles.split(",") if role]

    def body(watchdog: browserlib.Watchdog) -> str:
        browserlib.require_loopback(args.url)
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        return check(args.url, args.screenshot, args.chromium, args.group, roles, args.polls,
                     watchdog)

    return browserlib.run(NAME, body, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
