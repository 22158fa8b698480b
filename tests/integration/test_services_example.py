"""
examples/services against real processes: a redis-server, a backend of each
service (``default``, ``lobby``, ``game``) and two gates; players are
``wsfabric.client`` clients (the example's bot). And the example's own
one-command launcher.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from examples.services.bot import play
from examples.services.run import SERVICES
from tests.integration.support import PROJECT, IntegrationTestCase, async_test
from wsfabric.client import aio
from wsfabric.errors import RemoteError
from wsfabric.testing.processes import BackendNode, Cluster, GateNode

SECRET = "services-example-secret"


def start_example() -> Cluster:
    """
    :return: the example's cluster, every gate linked with every backend.
    """
    cluster = Cluster(SERVICES[0][1], gates=0, backends=0, cwd=PROJECT, secret=SECRET)
    try:
        cluster.redis.start()
        for service, app in SERVICES:
            cluster.backends.append(BackendNode(
                app, cluster.redis.url, SECRET, ["--service", service],
                cwd=PROJECT, name=service, log_dir=cluster.log_dir,
            ).start())
        for number in range(2):
            cluster.gates.append(GateNode(
                cluster.redis.url, SECRET, cwd=PROJECT, name=f"gate{number}",
                log_dir=cluster.log_dir,
            ).start())
        cluster.wait_linked()
    except BaseException:
        cluster.stop()
        raise
    return cluster


class ServicesExampleTests(IntegrationTestCase):
    """
    Two players on two gates play a match: lobby (queue) → call → game.
    """

    @async_test(60)
    async def test_match_and_forfeit(self) -> None:
        """
        Two bots queue in the lobby, which has the game service create their
        match; they play it to the end and both see the same final board.
        A client cannot create a match itself; a player who disconnects
        loses.
        """
        cluster = start_example()
        self.addCleanup(cluster.stop)
        ann_url, bob_url = cluster.gate_urls
        said: list[str] = []
        ann, bob = await asyncio.gather(
            play(ann_url, "ann", seed=1, say=said.append),
            play(bob_url, "bob", seed=2, say=said.append),
        )
        self.assertEqual(ann, bob)
        self.assertEqual(sorted(ann["names"]), ["ann", "bob"])
        self.assertIn(ann["winner"], [*ann["players"], "draw"])
        self.assertIn(ann["reason"], ("line", "full"))
        marks = [cell for cell in ann["cells"] if cell]
        self.assertIn(marks.count("X") - marks.count("O"), (0, 1))

        # game.create is for services only.
        client = await aio.connect(ann_url)
        try:
            with self.assertRaises(RemoteError) as raised:
                await client.request("game.create", {"players": ["a", "b"]})
            self.assertEqual(raised.exception.code, "not_allowed")
        finally:
            await client.close()

        # Leaving mid-match loses it (game asked for client events).
        states: asyncio.Queue[Any] = asyncio.Queue()
        stayer = await aio.connect(ann_url)
        leaver = await aio.connect(bob_url)
        try:
            stayer.on("game.state", states.put_nowait)
            stayer.on("lobby.matched", lambda data: None)
            leaver.on("game.state", lambda data: None)
            me = (await stayer.request("hello", {"name": "cy"}))["client_id"]
            await leaver.request("hello", {"name": "dee"})
            self.assertEqual(await stayer.request("lobby.queue", None), {"status": "queued"})
            matched = await leaver.request("lobby.queue", None)
            self.assertEqual(matched["status"], "matched")
            first = await asyncio.wait_for(states.get(), 10)
            self.assertIsNone(first["winner"])
            await leaver.close()
            final = await asyncio.wait_for(states.get(), 10)
            self.assertEqual((final["winner"], final["reason"]), (me, "left"))
        finally:
            await stayer.close()
            await leaver.close()


class LauncherTests(IntegrationTestCase):
    """
    ``python -m examples.services.run`` is the one command that runs it.
    """

    def test_demo(self) -> None:
        """
        ``--demo`` starts Redis, the three backends and two gates, lets two
        bots play a match across the gates, and stops everything.
        """
        result = subprocess.run(
            [sys.executable, "-m", "examples.services.run", "--demo"],
            cwd=PROJECT, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-2000:])
        self.assertIn("services example: ws://127.0.0.1:", result.stdout)
        outcomes = [line for line in result.stdout.splitlines()
                    if line.startswith(("ann: ", "bob: "))
                    and line.split(": ", 1)[1].split(" ")[0] in ("won", "lost", "draw")]
        self.assertEqual(len(outcomes), 2, result.stdout[-3000:])
