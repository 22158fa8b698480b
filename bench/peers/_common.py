"""
Shared start-up for the raw Autobahn peers.

The peers are the baselines of TARGETS.md: Autobahn on Twisted with nothing
else, so wsfabric's figures can be read as a ratio to what the stack itself
does. They must stay as plain as the baselines were measured: epoll reactor,
no compression, no auto-ping, default Autobahn options otherwise.
"""

from __future__ import annotations

import argparse
import resource
import sys


def install_epoll_reactor() -> None:
    """Install the epoll reactor; must run before anything imports the reactor."""
    from twisted.internet import epollreactor

    epollreactor.install()


def parse_port(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """
    :param description: the peer's one-line description for ``--help``.
    :param argv: arguments (``sys.argv[1:]`` by default).
    :return: parsed arguments with ``port`` (and ``mode`` where the caller adds it).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument(
        "--mode",
        choices=("naive", "prepared"),
        default="prepared",
        help="broadcast only: sendMessage per client, or prepareMessage once",
    )
    return parser.parse_args(argv)


def raise_nofile() -> None:
    """Raise the soft descriptor limit to the hard one (idle runs hold 10k+ sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listen(factory: object, port: int, run: bool = True) -> None:
    """
    Listen on 127.0.0.1 only and run the reactor until SIGTERM/SIGINT.

    :param factory: a configured ``WebSocketServerFactory``.
    :param port: the TCP port.
    :param run: run the reactor (false: it already runs; just listen).
    """
    from twisted.internet import reactor

    # A deep accept queue: Twisted's default backlog of 50 drops SYNs when a
    # load generator opens thousands of connections, which would measure
    # SYN retransmission timers instead of the server.
    reactor.listenTCP(port, factory, backlog=1024, interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    if run:
        reactor.run()
