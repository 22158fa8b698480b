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
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_LINK_EVENT = re.compile(r"\bbackend (\S+) (ready|lost|is draining)")


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

    #: The port of the node's admin listener (set by the node classes below).
    admin_port = 0

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
    def admin_url(self) -> str:
        """
        The HTTP URL of the node's admin listener (nodes started by the
        classes below listen on a free ``admin_port``).
        """
        return f"http://127.0.0.1:{self.admin_port}"

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
    :param tcp: also listen for raw TCP clients (``--listen-tcp``) on a free
        ``tcp_port``.
    """

    #: The ``--listen-tcp`` port, or 0.
    tcp_port = 0

    def __init__(
        self,
        app: str,
        options: Sequence[str] = (),
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        name: str = "standalone",
        log_dir: str | None = None,
        tcp: bool = False,
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        if tcp:
            self.tcp_port = free_port()
            options = ["--listen-tcp", f"tcp:{self.tcp_port}:interface=127.0.0.1", *options]
        argv = [
            *twistd_command(),
            "-n",
            "--pidfile=",
            "wsfabric",
            "--app",
            app,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--admin",
            f"tcp:{self.admin_port}:interface=127.0.0.1",
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
        if self.tcp_port:
            wait_for_port(self.tcp_port, timeout, process=self)
        return self


class GateNode(Process):
    """
    A ``twistd -n wsfabric-gate`` process on a free loopback port.

    :param redis_url: the cluster's Redis.
    :param secret: the cluster secret.
    :param options: further options.
    :param tcp: also listen for raw TCP clients (``--listen-tcp``) on a free
        ``tcp_port``.
    """

    #: The ``--listen-tcp`` port, or 0.
    tcp_port = 0

    def __init__(
        self,
        redis_url: str,
        secret: str,
        options: Sequence[str] = (),
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        name: str = "gate",
        log_dir: str | None = None,
        tcp: bool = False,
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        if tcp:
            self.tcp_port = free_port()
            options = ["--listen-tcp", f"tcp:{self.tcp_port}:interface=127.0.0.1", *options]
        argv = [
            *twistd_command(), "-n", "--pidfile=", "wsfabric-gate",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--redis", redis_url,
            "--admin", f"tcp:{self.admin_port}:interface=127.0.0.1",
            *options,
        ]
        super().__init__(name, argv, cwd=cwd,
                         env={"WSFABRIC_CLUSTER_SECRET": secret, **(env or {})},
                         log_dir=log_dir)

    @property
    def ws_url(self) -> str:
        """
        The WebSocket URL of the gate.
        """
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 15.0) -> GateNode:
        """
        Start the gate and wait until it listens.
        """
        super().start()
        wait_for_port(self.port, timeout, process=self)
        if self.tcp_port:
            wait_for_port(self.tcp_port, timeout, process=self)
        return self

    def backends_ready(self) -> int:
        """
        :return: how many backends the gate is linked with now, read from its
            log (a backend is linked from its "ready" line until its "lost" or
            "draining" line).
        """
        linked: set[str] = set()
        for match in _LINK_EVENT.finditer(self.log()):
            if match.group(2) == "ready":
                linked.add(match.group(1))
            else:
                linked.discard(match.group(1))
        return len(linked)


class BackendNode(Process):
    """
    A ``twistd -n wsfabric-backend`` process with its AMP listener on a free
    loopback port.

    :param app: the ``--app`` value.
    :param redis_url: the cluster's Redis.
    :param secret: the cluster secret.
    :param options: further options.
    """

    def __init__(
        self,
        app: str,
        redis_url: str,
        secret: str,
        options: Sequence[str] = (),
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        name: str = "backend",
        log_dir: str | None = None,
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        argv = [
            *twistd_command(), "-n", "--pidfile=", "wsfabric-backend",
            "--app", app,
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--redis", redis_url,
            "--admin", f"tcp:{self.admin_port}:interface=127.0.0.1",
            *options,
        ]
        super().__init__(name, argv, cwd=cwd,
                         env={"WSFABRIC_CLUSTER_SECRET": secret, **(env or {})},
                         log_dir=log_dir)

    def start(self, timeout: float = 15.0) -> BackendNode:
        """
        Start the backend and wait until it listens.
        """
        super().start()
        wait_for_port(self.port, timeout, process=self)
        return self


class Cluster:
    """
    A whole cluster of real processes on loopback: a ``redis-server``, M
    backends and N gates, every one of which can be killed, paused or
    restarted.

    :param app: the ``--app`` of the backends.
    :param gates: how many gates.
    :param backends: how many backends.
    :param cwd: the working directory (the ``--app`` module is found there).
    :param gate_options: extra options for every gate.
    :param backend_options: extra options for every backend.
    :param secret: the cluster secret.
    :param tcp: gates also listen for raw TCP clients (``GateNode.tcp_port``).
    """

    def __init__(
        self,
        app: str,
        gates: int = 2,
        backends: int = 2,
        cwd: str | None = None,
        gate_options: Sequence[str] = (),
        backend_options: Sequence[str] = (),
        secret: str = "test-cluster-secret",
        log_dir: str | None = None,
        tcp: bool = False,
    ) -> None:
        from wsfabric.testing.redis import RedisServer

        self.tcp = tcp
        self.app = app
        self.cwd = cwd
        self.secret = secret
        self.gate_options = list(gate_options)
        self.backend_options = list(backend_options)
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="wsfabric-cluster-")
        self.redis = RedisServer()
        self.gates: list[GateNode] = []
        self.backends: list[BackendNode] = []
        self._gate_count = gates
        self._backend_count = backends

    @property
    def gate_urls(self) -> list[str]:
        """
        The WebSocket URLs of the gates.
        """
        return [gate.ws_url for gate in self.gates]

    def start(self, timeout: float = 30.0) -> Cluster:
        """
        Start Redis, the backends, then the gates, and wait until every gate
        has authenticated with every backend.
        """
        try:
            self.redis.start()
            for _ in range(self._backend_count):
                self.add_backend()
            for _ in range(self._gate_count):
                self.add_gate()
            self.wait_linked(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def add_backend(self, options: Sequence[str] = ()) -> BackendNode:
        """
        Start one more backend.
        """
        backend = BackendNode(
            self.app, self.redis.url, self.secret, [*self.backend_options, *options],
            cwd=self.cwd, name=f"backend{len(self.backends)}", log_dir=self.log_dir,
        ).start()
        self.backends.append(backend)
        return backend

    def add_gate(self, options: Sequence[str] = ()) -> GateNode:
        """
        Start one more gate.
        """
        gate = GateNode(
            self.redis.url, self.secret, [*self.gate_options, *options],
            cwd=self.cwd, name=f"gate{len(self.gates)}", log_dir=self.log_dir,
            tcp=self.tcp,
        ).start()
        self.gates.append(gate)
        return gate

    def wait_linked(self, timeout: float = 30.0) -> None:
        """
        Wait until every running gate has as many authenticated backend
        connections as there are running backends.

        :raises TimeoutError: if they do not link in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            running = sum(1 for backend in self.backends if backend.poll() is None)
            if all(
                gate.backends_ready() >= running
                for gate in self.gates
                if gate.poll() is None
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("gates did not connect to every backend in time")
            time.sleep(0.1)

    def stop(self) -> None:
        """
        Stop every process: gates, backends, then Redis.
        """
        for process in [*self.gates, *self.backends]:
            process.stop()
        self.redis.stop()
