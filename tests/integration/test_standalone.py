"""
The real ``twistd -n wsfabric`` process, driven by the ``websockets``
package: the hardened edge, hooks, shutdown, static files, start-up errors
and configuration files.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request

import websockets

from tests.integration.support import (
    PROJECT,
    ContractClient,
    IntegrationTestCase,
    async_test,
)
from wsfabric.testing.processes import free_port, twistd_command


class EdgeTests(IntegrationTestCase):
    @async_test()
    async def test_echo_text_and_binary(self) -> None:
        """
        Text comes back as text and binary as binary, through send_to_client.
        """
        node = self.standalone("examples.echo.app:EchoApp")
        async with websockets.connect(node.ws_url) as ws:
            await ws.send("héllo")
            self.assertEqual(await ws.recv(), "héllo")
            await ws.send(b"\x00\xffbin")
            self.assertEqual(await ws.recv(), b"\x00\xffbin")

    @async_test()
    async def test_oversize_message_closes_1009(self) -> None:
        """
        A message over --max-message-size closes the client with 1009; one at
        the limit passes.
        """
        node = self.standalone("examples.echo.app:EchoApp", ["--max-message-size", "65536"])
        async with websockets.connect(node.ws_url, max_size=None) as ws:
            await ws.send(b"a" * 65536)
            self.assertEqual(len(await ws.recv()), 65536)
            await ws.send(b"a" * 65537)
            with self.assertRaises(websockets.ConnectionClosed) as caught:
                await ws.recv()
            self.assertEqual(caught.exception.rcvd.code, 1009)

    @async_test()
    async def test_default_limit_is_one_mebibyte(self) -> None:
        """
        By default a 1 MiB message crosses and a larger one is refused.
        """
        node = self.standalone("examples.echo.app:EchoApp")
        async with websockets.connect(node.ws_url, max_size=None) as ws:
            await ws.send(b"m" * 1048576)
            self.assertEqual(len(await ws.recv()), 1048576)
            await ws.send(b"m" * 1048577)
            with self.assertRaises(websockets.ConnectionClosed) as caught:
                await ws.recv()
            self.assertEqual(caught.exception.rcvd.code, 1009)

    @async_test()
    async def test_bad_origin_403(self) -> None:
        """
        A browser origin outside --allowed-origin gets HTTP 403; the allowed
        one (written without its default port) connects; so do clients that
        send no Origin at all.
        """
        node = self.standalone(
            "examples.echo.app:EchoApp", ["--allowed-origin", "https://app.example.com"]
        )
        with self.assertRaises(websockets.InvalidStatus) as caught:
            await websockets.connect(node.ws_url, origin="https://evil.example.com")
        self.assertEqual(caught.exception.response.status_code, 403)
        async with websockets.connect(node.ws_url, origin="https://app.example.com") as ws:
            await ws.send("ok")
            self.assertEqual(await ws.recv(), "ok")
        async with websockets.connect(node.ws_url) as ws:
            await ws.send("no origin")
            self.assertEqual(await ws.recv(), "no origin")

    @async_test(timeout=90)
    async def test_slow_consumer_closed_rss_bounded(self) -> None:
        """
        A client that stops reading while the server sends to it is closed
        as a slow consumer (the server's queue is bounded at 1 MiB), the
        server's memory stays bounded, and other clients keep working.
        """
        node = self.standalone()
        other = await ContractClient.connect(node.ws_url)
        slow = await ContractClient.connect(node.ws_url, max_queue=1)
        slow_id = slow.client_id
        baseline = node.rss()
        # Stop reading: pause the transport so the kernel buffers fill up.
        slow.connection.transport.pause_reading()
        slow._reader.cancel()
        # 200 MB offered in total; far more than the kernel buffers hold.
        for _ in range(20):
            await other.call("send_to_client", slow_id, "x" * 1_000_000)
        online = True
        for _ in range(100):
            online = await other.call("is_online", slow_id)
            if not online:
                break
            await asyncio.sleep(0.1)
        self.assertFalse(online, "the slow client was never closed")
        growth = node.rss() - baseline
        self.assertLess(growth, 24 * 1024 * 1024, f"server RSS grew by {growth} bytes")
        self.assertIn("slow consumer", node.log())
        self.assertEqual(await other.call("whoami"), other.client_id)
        slow.connection.transport.abort()
        await other.close()

    @async_test()
    async def test_hook_error_is_logged_and_contained(self) -> None:
        """
        An exception in on_message is logged with the client id and a
        traceback; that client and others stay connected and served.
        """
        node = self.standalone()
        a = await ContractClient.connect(node.ws_url)
        b = await ContractClient.connect(node.ws_url)
        with self.assertRaises(asyncio.TimeoutError):
            # The hook raises before answering, so no reply comes.
            await a.call("raise", timeout=1)
        self.assertEqual(await a.call("whoami"), a.client_id)
        self.assertEqual(await b.call("whoami"), b.client_id)
        log = node.log()
        self.assertIn(f"on_message raised for client {a.client_id}", log)
        self.assertIn("Traceback", log)
        self.assertIn("hook failed on purpose", log)
        await a.close()
        await b.close()

    @async_test()
    async def test_reject_and_failing_on_connect(self) -> None:
        """
        Reject(code) in on_connect closes with that code; another exception
        closes with 1011; neither kills the process.
        """
        node = self.standalone()
        async with websockets.connect(node.ws_url + "?reject=4403") as ws:
            with self.assertRaises(websockets.ConnectionClosed) as caught:
                await ws.recv()
            self.assertEqual(caught.exception.rcvd.code, 4403)
        async with websockets.connect(node.ws_url + "?fail=1") as ws:
            with self.assertRaises(websockets.ConnectionClosed) as caught:
                await ws.recv()
            self.assertEqual(caught.exception.rcvd.code, 1011)
        client = await ContractClient.connect(node.ws_url)
        self.assertEqual(await client.call("get_all_client_count"), 1)
        await client.close()

    @async_test()
    async def test_sigterm_closes_clients_1001_and_exits_0(self) -> None:
        """
        SIGTERM closes every client with 1001 and the process exits 0.
        """
        node = self.standalone()
        clients = [await ContractClient.connect(node.ws_url) for _ in range(5)]
        node.signal(signal.SIGTERM)
        for client in clients:
            await asyncio.wait_for(client._reader, 10)
            self.assertEqual(client.close_code, 1001)
        self.assertEqual(await asyncio.to_thread(node.wait, 15), 0)


class HttpTests(IntegrationTestCase):
    def fetch(self, url: str) -> tuple[int, bytes, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read(), response.headers["content-type"]
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers["content-type"]

    @async_test()
    async def test_client_script_and_static_files(self) -> None:
        """
        /wsfabric.js and the --static directory are served beside /ws;
        paths cannot escape the directory.
        """
        node = self.standalone(
            "examples.chat.app:ChatApp", ["--static", "examples/chat/static"]
        )
        status, body, kind = await asyncio.to_thread(self.fetch, node.http_url + "/wsfabric.js")
        self.assertEqual((status, kind), (200, "text/javascript"))
        self.assertIn(b"wsfabric", body)
        status, body, _ = await asyncio.to_thread(self.fetch, node.http_url + "/")
        self.assertEqual(status, 200)
        self.assertIn(b"wsfabric.js", body)
        status, _, _ = await asyncio.to_thread(
            self.fetch, node.http_url + "/../../setup.py"
        )
        self.assertEqual(status, 404)


class StartupTests(IntegrationTestCase):
    def run_twistd(self, *args: str, cwd: str = PROJECT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*twistd_command(), "-n", "--pidfile=", "wsfabric", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def assertOneLineError(self, result: subprocess.CompletedProcess[str], *words: str) -> None:
        """
        The command failed with one line on standard error naming the
        problem, and no traceback anywhere. (Standard output may hold twistd's
        own start-up log lines when the error comes after logging began.)
        """
        self.assertNotEqual(result.returncode, 0)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, f"expected one line, got: {lines} / {result.stdout}")
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        for word in words:
            self.assertIn(word, lines[0])

    def test_unknown_option(self) -> None:
        """
        An unknown option is a one-line error with a non-zero exit.
        """
        result = self.run_twistd("--app", "examples.echo.app:EchoApp", "--frobnicate")
        self.assertOneLineError(result, "frobnicate")

    def test_bad_value(self) -> None:
        """
        A bad option value names the option.
        """
        result = self.run_twistd(
            "--app", "examples.echo.app:EchoApp", "--max-message-size", "lots"
        )
        self.assertOneLineError(result, "max-message-size")

    def test_missing_app(self) -> None:
        """
        --app is required.
        """
        self.assertOneLineError(self.run_twistd(), "--app")

    def test_unimportable_app(self) -> None:
        """
        An --app whose module cannot be imported is a one-line error.
        """
        result = self.run_twistd("--app", "no.such.module:App")
        self.assertOneLineError(result, "no.such.module")

    def test_app_without_interface(self) -> None:
        """
        An --app whose result does not provide IApplication is refused.
        """
        result = self.run_twistd(
            "--app", "tests.integration.apps:NotAnApplication", "--listen", f"tcp:{free_port()}"
        )
        self.assertOneLineError(result, "IApplication")

    def test_app_that_fails_to_start(self) -> None:
        """
        An --app that raises while being created is a one-line error.
        """
        result = self.run_twistd(
            "--app", "tests.integration.apps:broken_factory", "--listen", f"tcp:{free_port()}"
        )
        self.assertOneLineError(result, "cannot start without a database")

    def test_port_in_use(self) -> None:
        """
        A port already in use is a one-line error naming the endpoint.
        """
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            result = self.run_twistd(
                "--app", "examples.echo.app:EchoApp",
                "--listen", f"tcp:{port}:interface=127.0.0.1",
            )
        self.assertOneLineError(result, f"tcp:{port}", "in use")
        self.assertNotIn("error", result.stdout.lower())

    def test_bad_endpoint(self) -> None:
        """
        A malformed endpoint string is a one-line error.
        """
        result = self.run_twistd("--app", "examples.echo.app:EchoApp", "--listen", "tcp:notaport")
        self.assertOneLineError(result, "--listen")

    def test_config_file_errors(self) -> None:
        """
        A configuration file with an unknown key, or that is not TOML, is a
        one-line error.
        """
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "wsfabric.toml")
            with open(path, "w") as f:
                f.write('app = "examples.echo.app:EchoApp"\nfrobnicate = 1\n')
            self.assertOneLineError(self.run_twistd("--config", path), "frobnicate")
            with open(path, "w") as f:
                f.write("app = \n")
            self.assertOneLineError(self.run_twistd("--config", path), "TOML")

    @async_test()
    async def test_config_file_and_command_line(self) -> None:
        """
        Options come from --config; the command line wins over the file.
        """
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "wsfabric.toml")
            with open(path, "w") as f:
                f.write(
                    'app = "examples.echo.app:EchoApp"\n'
                    "max_message_size = 100\n"
                    'allowed-origin = ["https://a.example.com"]\n'
                )
            node = self.standalone(
                "examples.echo.app:EchoApp",
                ["--config", path, "--allowed-origin", "https://b.example.com"],
            )
            async with websockets.connect(node.ws_url, origin="https://b.example.com") as ws:
                await ws.send(b"x" * 100)
                self.assertEqual(len(await ws.recv()), 100)
                await ws.send(b"x" * 101)
                with self.assertRaises(websockets.ConnectionClosed) as caught:
                    await ws.recv()
                self.assertEqual(caught.exception.rcvd.code, 1009)
            with self.assertRaises(websockets.InvalidStatus):
                await websockets.connect(node.ws_url, origin="https://a.example.com")
