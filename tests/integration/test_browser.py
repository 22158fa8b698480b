"""
The browser side in headless Chromium (Debian's): the chat example page with
two users, the tests of wsfabric.js against the echo application and of its
routed layer against a Router, and the game example's view watching a
protobuf bot. The drivers are in tests/browser/; each prints one result line.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile

from tests.integration.support import PROJECT, IntegrationTestCase, async_test
from wsfabric.testing.processes import Cluster

BROWSER = os.path.join(PROJECT, "tests", "browser")
SCREENSHOTS = os.path.join(tempfile.gettempdir(), "wsfabric-screenshots")


class BrowserTests(IntegrationTestCase):
    timeout = 180

    async def drive(self, script: str, *arguments: str) -> None:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, os.path.join(BROWSER, script), *arguments],
            capture_output=True, text=True, timeout=150,
            env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"),
        )
        print(result.stdout.strip())
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr[-4000:])

    @async_test(timeout=170)
    async def test_chat_page(self) -> None:
        """
        Two users log in to the chat page, join a room, see each other, and a
        message and a private message go from one to the other; a page whose
        socket is closed logs in and rejoins by itself.
        """
        node = self.standalone(
            "examples.chat.app:ChatApp", ["--static", "examples/chat/static"]
        )
        await self.drive("chat_check.py", node.http_url + "/", SCREENSHOTS)

    @async_test(timeout=170)
    async def test_chat_page_across_gates(self) -> None:
        """
        On a cluster of two gates and two backends, alice's page comes from
        one gate and bob's from the other, and the chat works across them
        exactly as in standalone mode.
        """
        cluster = Cluster(
            "examples.chat.app:ChatApp", gates=2, backends=2, cwd=PROJECT,
            gate_options=["--static", "examples/chat/static"],
        )
        self.addCleanup(cluster.stop)
        await asyncio.to_thread(cluster.start)
        first, second = (url.replace("ws://", "http://").replace("/ws", "/")
                         for url in cluster.gate_urls)
        await self.drive(
            "chat_check.py", first, SCREENSHOTS + "-cluster", "--bob-url", second
        )

    @async_test(timeout=170)
    async def test_wsfabric_js(self) -> None:
        """
        wsfabric.js connects, sends and receives text and binary, queues
        before open, reconnects with backoff, and stops when closed.
        """
        node = self.standalone("examples.echo.app:EchoApp", ["--static", "tests/browser"])
        await self.drive("js_check.py", node.http_url + "/wsfabric_js_test.html")

    @async_test(timeout=170)
    async def test_wsfabric_js_routed(self) -> None:
        """
        wsfabric.client(): request/response with timeouts, error codes,
        notify, pushes by route, raw messages, route compression, and
        pending requests across server-side closes, against a Router.
        """
        node = self.standalone(
            "tests.browser.routed_app:RoutedTestApp", ["--static", "tests/browser"]
        )
        await self.drive(
            "js_check.py", node.http_url + "/wsfabric_js_routed_test.html", "--native-close"
        )

    @async_test(timeout=120)
    async def test_game_view_sees_protobuf_bot(self) -> None:
        """
        The game example end to end: a bot plays over the protobuf codec
        (wsfabric.client), and the browser view, on the JSON codec, lists it,
        sees it move cell by cell and paints it on the canvas; then the page
        joins as a player and moves with the arrow keys.
        """
        node = self.standalone("examples.game.app:GameApp", ["--static", "examples/game/static"])
        bot = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "examples.game.bot", "--url", node.ws_url,
            "--name", "bot-check", "--moves", "150", "--interval", "0.1",
            cwd=PROJECT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )

        def stop_bot() -> None:
            if bot.returncode is None:
                bot.kill()

        self.addCleanup(stop_bot)
        shots = os.path.abspath(self.mktemp())
        await self.drive(
            "game_check.py", node.http_url + "/", shots, "--bot", "bot-check", "--timeout", "35"
        )
        self.assertIsNone(bot.returncode, "the bot stopped before the check ended")
        bot.terminate()
        output, _ = await asyncio.wait_for(bot.communicate(), 10)
        self.assertIn(b"bot-check: playing in match 'arena'", output)
        self.assertTrue(os.path.exists(os.path.join(shots, "02-bot-moved.png")))
