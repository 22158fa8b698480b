"""
Run the chat example as a cluster on one machine: a private redis-server,
two backends and two gates, each a real ``twistd`` process::

    .venv/bin/python examples/cluster/run.py

Then open http://127.0.0.1:8080/ and http://127.0.0.1:8081/ (one per gate)
and chat across them. Ctrl-C stops everything. Every process's output is
prefixed with its name. The commands it runs are printed first: they are the
same you would run on several machines (see docs/deployment.md).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def twistd() -> str:
    """
    :return: the twistd beside this Python (the project's venv).
    """
    return str(Path(sys.executable).with_name("twistd"))


def pipe_output(name: str, process: subprocess.Popen[bytes]) -> None:
    """
    Copy a process's output to ours, each line prefixed with its name.
    """
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(f"{name:>9} | {line.decode('utf-8', 'replace')}")
        sys.stdout.flush()


def main() -> int:
    """
    Start the cluster and wait for Ctrl-C.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--gate-ports", default="8080,8081")
    parser.add_argument("--backend-ports", default="7001,7002")
    parser.add_argument("--app", default="examples.chat.app:ChatApp")
    parser.add_argument("--static", default="examples/chat/static")
    arguments = parser.parse_args()

    redis_url = f"redis://127.0.0.1:{arguments.redis_port}/0"
    env = dict(os.environ, WSFABRIC_CLUSTER_SECRET=secrets.token_hex(16))
    commands: list[tuple[str, list[str], float]] = [
        (
            "redis",
            ["redis-server", "--port", str(arguments.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            0.5,
        )
    ]
    for number, port in enumerate(arguments.backend_ports.split(","), 1):
        commands.append((
            f"backend{number}",
            [twistd(), "-n", "--pidfile=", "wsfabric-backend", "--app", arguments.app,
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", redis_url,
             # Each node needs an admin listener of its own (health, metrics,
             # dashboard): backend N on 910N.
             "--admin", f"tcp:{9100 + number}:interface=127.0.0.1"],
            0.3,
        ))
    for number, port in enumerate(arguments.gate_ports.split(","), 1):
        commands.append((
            f"gate{number}",
            [twistd(), "-n", "--pidfile=", "wsfabric-gate", "--listen",
             f"tcp:{port}:interface=127.0.0.1", "--static", arguments.static,
             "--redis", redis_url, "--admin", f"tcp:{9080 + number}:interface=127.0.0.1"],
            0.3,
        ))

    processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def stop_all(*_: object) -> None:
        # Gates first (they drain their clients), then backends, then Redis.
        for _name, process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops the cluster as Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupted)
    print("WSFABRIC_CLUSTER_SECRET is set to a random value for this run.")
    try:
        for name, argv, settle in commands:
            print(f"$ {' '.join(argv)}")
            process = subprocess.Popen(
                argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            processes.append((name, process))
            threading.Thread(target=pipe_output, args=(name, process), daemon=True).start()
            time.sleep(settle)
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; stopping the cluster")
                return 1
        gates = arguments.gate_ports.split(",")
        print("\nchat: " + "  ".join(f"http://127.0.0.1:{port}/" for port in gates))
        print("Ctrl-C stops the cluster.\n")
        while all(process.poll() is None for _, process in processes):
            time.sleep(0.5)
        for name, process in processes:
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; stopping the cluster")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
