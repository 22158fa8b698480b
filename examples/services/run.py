"""
Run the services example on one machine with one command: a private
redis-server, a backend of each service (``default``, ``lobby``, ``game``)
and two gates, each a real process on a free loopback port::

    .venv/bin/python -m examples.services.run            # Ctrl-C stops it
    .venv/bin/python -m examples.services.run --demo     # two bots play, then stop

It prints the commands it runs (the ones you would run on several machines),
each process's output prefixed with its name, and the gates' URLs; then
play with ``python -m examples.services.bot --url URL`` (twice: a match
needs two players). Ctrl-C (or SIGTERM) stops every process it started, by
pid: gates first, then backends, then Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from wsfabric.testing.processes import free_port, wait_for_port

PROJECT = Path(__file__).resolve().parents[2]

#: The backends: service name and application.
SERVICES = (
    ("default", "examples.services.front:FrontApp"),
    ("lobby", "examples.services.lobby:LobbyApp"),
    ("game", "examples.services.game:GameApp"),
)

_LINKED = re.compile(r"\bbackend (\S+) ready\b")


def _die_with_parent() -> None:
    # In the child before exec (Linux): if this launcher is killed, even by
    # SIGKILL, the kernel stops its processes too.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def twistd() -> str:
    """
    :return: the twistd beside this Python (the project's venv).
    """
    return str(Path(sys.executable).with_name("twistd"))


class Node:
    """
    One process of the example, its output copied to ours.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.linked: set[str] = set()
        print(f"$ {' '.join(argv)}", flush=True)
        self.process = subprocess.Popen(
            argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        threading.Thread(target=self._pipe, daemon=True).start()

    def _pipe(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace")
            match = _LINKED.search(line)
            if match:
                self.linked.add(match.group(1))
            sys.stdout.write(f"{self.name:>8} | {line}")
            sys.stdout.flush()

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL after 10 s.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(gates: int, nodes: list[Node]) -> list[str]:
    """
    Start Redis, the backends and the gates (appending each to ``nodes``),
    and wait until every gate is linked with every backend.

    :return: the gates' WebSocket URLs.
    """
    env = dict(os.environ, WSFABRIC_CLUSTER_SECRET=secrets.token_hex(16))
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    nodes.append(Node(
        "redis",
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        env, redis_port,
    ))
    wait_for_port(redis_port, 10)
    for service, app in SERVICES:
        port = free_port()
        nodes.append(Node(
            service,
            [twistd(), "-n", "--pidfile=", "wsfabric-backend", "--service", service,
             "--app", app, "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--redis", redis_url, "--admin", "none"],
            env, port,
        ))
    for number in range(1, gates + 1):
        port = free_port()
        nodes.append(Node(
            f"gate{number}",
            [twistd(), "-n", "--pidfile=", "wsfabric-gate",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", redis_url,
             "--admin", "none"],
            env, port,
        ))
    for node in nodes:
        wait_for_port(node.port, 20)
    deadline = time.monotonic() + 30
    for node in nodes[-gates:]:
        while len(node.linked) < len(SERVICES):
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not link with every backend")
            time.sleep(0.1)
    return [f"ws://127.0.0.1:{node.port}/ws" for node in nodes[-gates:]]


async def demo(urls: list[str]) -> None:
    """
    Two bots, one per gate, play one match.
    """
    from examples.services.bot import play

    await asyncio.gather(
        play(urls[0], "ann", seed=1), play(urls[-1], "bob", seed=2)
    )


def main(argv: list[str] | None = None) -> int:
    """
    Start the example and wait for Ctrl-C (or, with ``--demo``, play one
    match and stop).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gates", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--demo", action="store_true",
                        help="let two bots play one match, then stop")
    arguments = parser.parse_args(argv)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops the example as Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupted)
    nodes: list[Node] = []
    try:
        urls = start(arguments.gates, nodes)
        print("\nservices example: " + "  ".join(urls))
        print(f"play: {sys.executable} -m examples.services.bot --url {urls[0]}  (twice)\n",
              flush=True)
        if arguments.demo:
            asyncio.run(demo(urls))
            return 0
        print("Ctrl-C stops everything.\n", flush=True)
        while all(node.process.poll() is None for node in nodes):
            time.sleep(0.5)
        for node in nodes:
            if node.process.poll() is not None:
                print(f"{node.name} exited with {node.process.returncode}; stopping")
        return 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, OSError, TimeoutError) as e:
        print(f"services example: error: {e}", file=sys.stderr)
        return 1
    finally:
        # Gates first (they drain their clients), then backends, then Redis.
        for node in reversed(nodes):
            node.stop()


if __name__ == "__main__":
    sys.exit(main())
