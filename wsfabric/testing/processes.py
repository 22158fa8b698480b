"""
Real wsfabric processes for integration tests: start ``twistd`` roles on
free loopback ports, wait until they listen, pause, kill or stop them by pid,
and read their logs.

Every wait is bounded; :meth:`Process.stop` always ends the process (SIGTERM,
then SIGKILL), and tests should register it with ``addCleanup`` so nothing is
left running when a test fails.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test runner dies (even by
    # SIGKILL), the kernel kills this process too, so no test leaves a
    # server running.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """
    :return: a TCP port on ``host`` that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1",
                  process: Process | None = None) -> None:
    """
    Wait until something accepts TCP connections on ``port``.

    :param process: if given, fail early when it exits.
    :raises TimeoutError: if nothing listens within ``timeout`` seconds.
    :raises RuntimeError: if ``process`` exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited with {process.returncode} before listening:\n"
                + process.log()[-3000:]
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def twistd_command() -> list[str]:
    """
    :return: the command that runs the ``twistd`` of this Python.
    """
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Process:
    """
    One process started for a test, its output going to a log file.

    :param name: a short name for messages and the log file.
    :param argv: the command.
    :param cwd: the working directory.
    :param env: extra environment variables.
    :param log_dir: where the log file goes (a temporary directory if
        ``None``).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        directory = log_dir or tempfile.mkdtemp(prefix="wsfabric-")
        self.log_path = os.path.join(directory, f"{name}.log")
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        """
        Start the process.
        """
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return self

    @property
    def pid(self) -> int:
        """
        The process id.
        """
        assert self._popen is not None, "not started"
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """
        The exit status, or ``None`` while running.
        """
        return self._popen.returncode if self._popen is not None else None

    def poll(self) -> int | None:
        """
        :return: the exit status if the process has ended, else ``None``.
        """
        return self._popen.poll() if self._popen is not None else None

    def wait(self, timeout: float) -> int:
        """
        Wait for the process to end.

        :raises subprocess.TimeoutExpired: if it runs on past ``timeout``.
        """
        assert self._popen is not None, "not started"
        return self._popen.wait(timeout)

    def signal(self, signum: int) -> None:
        """
        Send ``signum`` to the process if it runs.
        """
        if self._popen is not None and self._popen.poll() is None:
            os.kill(self._popen.pid, signum)

    def pause(self) -> None:
        """
        Freeze the process (SIGSTOP).
        """
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """
        Let a frozen process run again (SIGCONT).
        """
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """
        Kill the process at once (SIGKILL) and reap it.
        """
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """
        Stop the process: SIGCONT (in case it is paused), SIGTERM, and
        SIGKILL if it is still running after ``timeout`` seconds.

        :return: its exit status.
        """
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._popen.returncode

    def log(self) -> str:
        """
        :return: everything the process has written so far.
        """
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        """
        :return: the resident set size in bytes (from /proc).
        """
        with open(f"/proc/{self.pid}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")


class StandaloneNode(Process):
    """
    A ``twistd -n wsfabric`` process on a free loopback port.

    :param app: the ``--app`` value.
    :param options: further options (e.g. ``["--static", "dir"]``).
    :param cwd: the working directory (the ``--app`` module is found there).
    """

    def __init__(
        self,
        app: str,
        options: Sequence[str] = (),
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        name: str = "standalone",
        log_dir: str | None = None,
    ) -> None:
        self.port = free_port()
        argv = [
            *twistd_command(),
            "-n",
            "--pidfile=",
            "wsfabric",
            "--app",
            app,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            *options,
        ]
        super().__init__(name, argv, cwd=cwd, env=env, log_dir=log_dir)

    @property
    def ws_url(self) -> str:
        """
        The WebSocket URL of the node.
        """
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """
        The HTTP URL of the node's client listener.
        """
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> StandaloneNode:
        """
        Start the node and wait until it listens.
        """
        super().start()
        wait_for_port(self.port, timeout, process=self)
        return self
