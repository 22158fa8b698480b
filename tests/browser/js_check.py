#!/usr/bin/env python3
"""
Run the browser tests of wsfabric.js (wsfabric_js_test.html) in headless
Chromium.

    python tests/browser/js_check.py URL [--timeout 60] [--screenshot PNG]
                                         [--native-close]

URL is the test page on a running server with an echo application at /ws,
e.g. http://127.0.0.1:8080/wsfabric_js_test.html from

    twistd -n wsfabric --app examples.echo.app:EchoApp --static tests/browser

The page's tests in group "server-close" need the server to close the
socket with a chosen code (1012, 1008, 4001, 4500); the page asks for it by
sending the text "!close CODE REASON".

- By default this driver runs those tests in a second browser context whose
  WebSockets are routed through playwright (``route_web_socket``): every
  message is forwarded to the real server and back, except "!close CODE
  REASON", on which the driver closes the page's socket with CODE and REASON
  (and the server side with 1000). The echo application then needs no
  special command. The other tests run in a context without any routing, on
  Chromium's own WebSocket.
- With --native-close all tests run unrouted, and the echo application
  itself must answer "!close CODE REASON" by closing with that code.

Prints one line, ``js_check: OK ...`` or ``js_check: FAIL: reason``, and
exits 0 / 1 / 2 / 3 as described in browserlib.py.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import browserlib  # noqa: E402
from browserlib import CheckFailed, EnvironmentProblem  # noqa: E402

NAME = "js_check"
CLOSE_RE = re.compile(r"^!close (\d{4})(?: (.*))?$", re.S)
# The emitter test throws from a listener on purpose; wsfabric.js rethrows
# it asynchronously, so it shows as an uncaught error.
EXPECTED_ERROR_MARK = "expected-listener-error"


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def intercept_close(route: Any) -> None:
    """
    Route one page WebSocket to the real server, turning "!close CODE
    REASON" into a close of the page's socket with that code, as if the
    server had sent it.
    """
    server = route.connect_to_server()

    def from_page(message: str | bytes) -> None:
        if isinstance(message, str):
            match = CLOSE_RE.match(message)
            if match:
                route.close(code=int(match.group(1)), reason=match.group(2) or "")
                server.close(code=1000, reason="closed by js_check")
                return
        server.send(message)

    route.on_message(from_page)
    server.on_message(lambda message: route.send(message))


def run_page(
    browser: Any,
    url: str,
    watchdog: browserlib.Watchdog,
    label: str,
    intercept: bool,
    screenshot: str | None,
) -> list[dict[str, Any]]:
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        if intercept:
            context.route_web_socket(re.compile(r"^wss?://"), intercept_close)
        page = context.new_page()
        browserlib.attach_logging(NAME, label, page, errors)
        watchdog.step = f"{label}: load {url}"
        browserlib.log(NAME, watchdog.step)
        try:
            response = page.goto(url, wait_until="load", timeout=watchdog.remaining_ms(20000))
        except Exception as e:
            raise EnvironmentProblem(f"cannot load {url}: {browserlib.one_line(e)[:200]}") from None
        if response is None or not response.ok:
            status = response.status if response is not None else "no response"
            raise EnvironmentProblem(f"loading {url} gave HTTP {status}")

        watchdog.step = f"{label}: run the tests of {url}"
        browserlib.log(NAME, watchdog.step)
        try:
            page.wait_for_function(
                "() => window.__wsfabricTest && window.__wsfabricTest.done",
                timeout=watchdog.remaining_ms(),
                polling=200,
            )
        except Exception:
            partial = page.evaluate(
                "() => window.__wsfabricTest ? window.__wsfabricTest.results.length : -1"
            )
            raise CheckFailed(
                f"{label}: the test page did not finish ({partial} tests reported)"
            ) from None
        results = page.evaluate("() => window.__wsfabricTest.results")
        if screenshot:
            page.screenshot(path=screenshot, full_page=True, timeout=watchdog.remaining_ms(10000))
            browserlib.log(NAME, f"screenshot {screenshot}")
        unexpected = [e for e in errors if EXPECTED_ERROR_MARK not in e]
        if unexpected:
            raise CheckFailed(f"uncaught JavaScript error: {unexpected[0]}")
        return results
    finally:
        try:
            context.close()
        except Exception:
            pass


def check(args: argparse.Namespace, watchdog: browserlib.Watchdog) -> str:
    browserlib.require_loopback(args.url)
    with browserlib.chromium(
        args.chromium, launch_timeout_ms=watchdog.remaining_ms(30000)
    ) as browser:
        if args.native_close:
            runs = [("page", args.url, False, args.screenshot)]
        else:
            second = None
            if args.screenshot:
                root, ext = os.path.splitext(args.screenshot)
                second = f"{root}-server-close{ext or '.png'}"
            runs = [
                ("basic", with_query(args.url, skip="server-close"), False, args.screenshot),
                ("server-close", with_query(args.url, only="server-close"), True, second),
            ]
        results: list[dict[str, Any]] = []
        for label, url, intercept, shot in runs:
            results += run_page(browser, url, watchdog, label, intercept, shot)

    for r in results:
        mark = "pass" if r["ok"] else f"FAIL: {r['error']}"
        browserlib.log(NAME, f"[{r['group']}] {r['name']}: {mark} ({r['ms']} ms)")
    failed = [r for r in results if not r["ok"]]
    if not results:
        raise CheckFailed("the test page ran no test")
    if failed:
        first = failed[0]
        raise CheckFailed(
            f"{len(failed)} of {len(results)} tests failed;"
            f" first: {first['name']}: {first['error']}"
        )
    mode = "native" if args.native_close else "intercepted"
    return f"{len(results)} passed, 0 failed (server closes {mode})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "url", help="the test page, e.g. http://127.0.0.1:8080/wsfabric_js_test.html"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="overall limit in seconds (default 60)"
    )
    parser.add_argument("--screenshot", help="save a screenshot of the results here (PNG)")
    parser.add_argument(
        "--native-close",
        action="store_true",
        help='the echo app closes the socket itself on "!close CODE REASON"',
    )
    parser.add_argument(
        "--chromium",
        default=os.environ.get("WSFABRIC_CHROMIUM", browserlib.DEFAULT_CHROMIUM),
        help="Chromium binary (default $WSFABRIC_CHROMIUM or /usr/bin/chromium)",
    )
    args = parser.parse_args(argv)
    return browserlib.run(NAME, lambda watchdog: check(args, watchdog), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
