"""
Shared helpers of the headless-Chromium drivers in this folder.

The drivers are standalone scripts (run as ``python tests/browser/X.py``),
not trial tests: each prints exactly one line on stdout -- ``NAME: OK ...``
or ``NAME: FAIL: reason`` -- and exits with

    0  every check passed
    1  a check failed
    2  the environment is not usable (no Chromium, no playwright, bad URL,
       the page did not load)
    3  the overall time limit ran out

Step-by-step progress and browser console output go to stderr.

Chromium is Debian's (``/usr/bin/chromium``, see ensure_chromium.sh), driven
by the ``playwright`` package from PyPI; playwright never downloads a browser
of its own here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ENVIRONMENT = 2
EXIT_TIMEOUT = 3

DEFAULT_CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class CheckFailed(Exception):
    """A check did not hold; the message is the one-line reason."""

    exit_code = EXIT_FAILED


class EnvironmentProblem(CheckFailed):
    """The browser or the page could not be brought up."""

    exit_code = EXIT_ENVIRONMENT


def log(name: str, message: str) -> None:
    print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def require_loopback(url: str) -> None:
    """
    Refuse any URL whose host is not on this machine: the drivers must only
    ever talk to a server the test started on the loopback interface.
    """
    host = urlsplit(url).hostname
    if host is None:
        raise EnvironmentProblem(f"not a URL: {url!r}")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise EnvironmentProblem(f"refusing non-loopback URL {url!r}")


# Temporary directories of running browsers, removed by the watchdog too.
_workdirs: list[str] = []


def _kill_descendants() -> None:
    """Kill the processes this script started (the playwright driver and
    Chromium), by pid; used only when the overall time limit runs out."""
    try:
        import psutil
    except ImportError:
        return
    try:
        children = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)


# Playwright waits are given this much time beyond the deadline, so that on a
# hang the watchdog, which names the step, reports first.
WAIT_GRACE_S = 1.0


class Watchdog:
    """
    Bounds the whole run: when ``seconds`` pass, print the FAIL line naming
    the step that was running, kill our child processes and exit 3 -- even
    if the browser hangs somewhere playwright's own timeouts do not reach.

    Exactly one result line is printed: ``report`` and the expiry take the
    same lock, and whichever comes second stays silent.
    """

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        self.step = "starting"
        self.deadline = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._reported = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining_ms(self, cap_ms: float | None = None) -> float:
        """Milliseconds a wait may take: to the deadline plus a grace
        period (at least 1), capped by ``cap_ms``."""
        left = max(1.0, (self.deadline + WAIT_GRACE_S - time.monotonic()) * 1000)
        return min(left, cap_ms) if cap_ms is not None else left

    def report(self, line: str) -> bool:
        """Print the result line unless the watchdog already did."""
        with self._lock:
            if self._reported:
                return False
            self._reported = True
            print(line, flush=True)
            return True

    def _expire(self) -> None:
        if not self.report(
            f"{self.name}: FAIL: timed out after {self.seconds:g} s during: {self.step}"
        ):
            return
        try:
            _kill_descendants()
            for workdir in list(_workdirs):
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            os._exit(EXIT_TIMEOUT)


@contextlib.contextmanager
def chromium(
    chromium_path: str = DEFAULT_CHROMIUM, launch_timeout_ms: float = 30000
) -> Iterator[Any]:
    """
    Launch headless Chromium through playwright and yield the Browser.

    Playwright launches Chromium with a fresh, empty user-data-dir of its own
    (it refuses ``--user-data-dir`` in ``args`` for a non-persistent browser);
    TMPDIR points at a directory made for this run, so that profile lives
    there and is removed with it, whatever happens.
    """
    if not os.path.isfile(chromium_path) or not os.access(chromium_path, os.X_OK):
        raise EnvironmentProblem(
            f"no Chromium at {chromium_path} (run tests/browser/ensure_chromium.sh)"
        )
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise EnvironmentProblem(
            "the playwright package is missing (pip install playwright)"
        ) from None

    workdir = tempfile.mkdtemp(prefix="wsfabric-browser-")
    _workdirs.append(workdir)
    old_tmpdir = os.environ.get("TMPDIR")
    # The playwright driver (a Node process) inherits this and puts the
    # profile directory under it.
    os.environ["TMPDIR"] = workdir
    try:
        with sync_playwright() as pw:
            try:
                browser = pw.chromium.launch(
                    executable_path=chromium_path,
                    args=CHROMIUM_ARGS,
                    headless=True,
                    timeout=launch_timeout_ms,
                    handle_sigint=False,
                    handle_sigterm=False,
                    handle_sighup=False,
                )
            except PlaywrightError as e:
                raise EnvironmentProblem(f"cannot launch Chromium: {one_line(e)}") from None
            try:
                yield browser
            finally:
                with contextlib.suppress(Exception):
                    browser.close()
    finally:
        if old_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmpdir
        shutil.rmtree(workdir, ignore_errors=True)
        _workdirs.remove(workdir)


def attach_logging(name: str, label: str, page: Any, page_errors: list[str]) -> None:
    """Forward a page's console to stderr and collect its uncaught errors."""
    page.on("console", lambda msg: log(name, f"{label} console.{msg.type}: {msg.text}"))

    def on_error(error: Any) -> None:
        text = one_line(getattr(error, "message", error))
        log(name, f"{label} uncaught error: {text}")
        page_errors.append(f"{label}: {text}")

    page.on("pageerror", on_error)


def run(name: str, main: Any, timeout_s: float) -> int:
    """
    Run ``main(watchdog)`` under a watchdog; print the one result line and
    return the exit code. ``main`` returns the text after "OK".
    """
    with Watchdog(name, timeout_s) as watchdog:
        try:
            summary = main(watchdog)
        except CheckFailed as e:
            line, code = f"{name}: FAIL: {one_line(e)}", e.exit_code
        except Exception as e:  # a playwright timeout, a crash of the driver...
            log(name, f"unexpected {type(e).__name__} during {watchdog.step}")
            line = f"{name}: FAIL: during {watchdog.step}: {type(e).__name__}: {one_line(e)[:300]}"
            code = EXIT_FAILED
        else:
            line, code = f"{name}: OK {summary}", EXIT_OK
        if not watchdog.report(line):
            # The watchdog is killing the browser and will exit the process.
            time.sleep(60)
        return code
