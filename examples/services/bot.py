"""
A player for the services example, on ``wsfabric.client`` (asyncio)::

    python -m examples.services.bot --name ann
    python -m examples.services.bot --name bob     # in another terminal

It says hello (``default``), queues (``lobby``), then plays random legal
moves (``game``) until the match ends, printing the board.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Callable
from typing import Any

from wsfabric.client import aio
from wsfabric.errors import RemoteError


def render(state: dict[str, Any]) -> str:
    """
    :return: the board of ``state`` as three lines of text.
    """
    cells = [mark or str(i) for i, mark in enumerate(state["cells"])]
    return "\n".join(" ".join(cells[row * 3:row * 3 + 3]) for row in range(3))


async def play(
    url: str,
    name: str,
    seed: int | None = None,
    timeout: float = 30.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """
    Play one match.

    :param url: a gate's WebSocket URL.
    :param name: the player's name.
    :param seed: for the random moves.
    :param timeout: seconds to wait for the opponent's move or a match.
    :param say: where to report.
    :return: the final state of the match.
    """
    rng = random.Random(seed)
    client = await aio.connect(url)
    try:
        states: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        client.on("game.state", states.put_nowait)
        client.on("lobby.matched", lambda data: say(f"{name}: matched in {data['match']}"))
        me = (await client.request("hello", {"name": name}))["client_id"]
        queued = await client.request("lobby.queue", None)
        say(f"{name}: {queued['status']}")
        while True:
            state = await asyncio.wait_for(states.get(), timeout)
            if state["winner"] is not None:
                winner = state["winner"]
                outcome = "draw" if winner == "draw" else ("won" if winner == me else "lost")
                say(f"{name}: {outcome} ({state['reason']})\n{render(state)}")
                return state
            if state["turn"] != me:
                continue
            cell = rng.choice([i for i, mark in enumerate(state["cells"]) if not mark])
            try:
                await client.request("game.move", {"match": state["match"], "cell": cell})
            except RemoteError as e:
                say(f"{name}: move {cell} refused: {e.code} {e.message}")
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    """
    Play one match from the command line.
    """
    parser = argparse.ArgumentParser(description="A tic-tac-toe player for examples/services.")
    parser.add_argument("--url", default="ws://127.0.0.1:8090/ws")
    parser.add_argument("--name", default=f"bot{random.randrange(1000)}")
    parser.add_argument("--seed", type=int, default=None)
    arguments = parser.parse_args(argv)
    try:
        asyncio.run(play(arguments.url, arguments.name, arguments.seed))
    except (OSError, TimeoutError, RemoteError) as e:
        print(f"bot: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
