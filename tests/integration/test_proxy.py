"""
The sample reverse-proxy configurations of ``deploy/`` run in front of a real
cluster (two gates, one backend, Redis): ``deploy/nginx.conf`` with nginx and
``deploy/haproxy.cfg`` with HAProxy.

Each test renders the committed file with the gates' ports, a free listen
port and paths in a temporary directory (every replaced text must occur in
the file exactly once, so the test breaks when the sample changes under it),
starts the proxy in the foreground as the test's own process, and checks
through the proxy what docs/deployment.md promises:

- clients land on both gates (read from the cluster index in Redis);
- a group send made through the cluster reaches the clients on both gates;
- the health-check path ``/wsfabric.js`` answers through the proxy;
- when a gate stops (SIGTERM), its clients are closed with 1001, reconnect
  through the proxy onto the other gate, and group sends reach everyone
  again;
- the gates' pings keep an idle WebSocket open past the proxy's idle
  timeout, and without pings the proxy closes it.

The proxy binaries come from ``scripts/ensure-system-packages`` (Debian's
``nginx`` and ``haproxy`` packages). Without the binary, a test is skipped
with a message saying what to install. The system services are never used.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence

from twisted.trial.unittest import SkipTest

from tests.integration.support import (
    CONTRACT_APP,
    PROJECT,
    ContractClient,
    IntegrationTestCase,
    async_test,
)
from wsfabric.testing.processes import Cluster, Process, free_port, wait_for_port

DEPLOY = os.path.join(PROJECT, "deploy")
CLIENTS = 6
_REGISTERED = re.compile(r"registered gate (\S+) in Redis")


def find_binary(name: str) -> str | None:
    """
    :return: the path of the program ``name`` (also looked for in the sbin
        directories, which a non-root PATH often lacks), or ``None``.
    """
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def render(template: str, replacements: dict[str, str]) -> str:
    """
    Replace texts of a committed sample configuration.

    :param template: the file's text.
    :param replacements: each text to replace, and its replacement.
    :raises AssertionError: if a text to replace does not occur exactly once.
    """
    for old, new in replacements.items():
        count = template.count(old)
        if count != 1:
            raise AssertionError(
                f"the sample configuration should contain {old!r} once, not {count} times"
            )
        template = template.replace(old, new)
    return template


class ProxyTestsMixin:
    """
    The checks, for one proxy. A subclass names the binary and knows how to
    render its configuration and run it.
    """

    #: the program, e.g. "nginx"
    binary: str
    #: the Debian package that provides it
    package: str

    def proxy_command(
        self,
        executable: str,
        directory: str,
        listen_port: int,
        gate_ports: list[int],
        idle_timeout: int | None,
    ) -> list[str]:
        """
        Write the rendered configuration in ``directory``.

        :param idle_timeout: if given, the WebSocket idle timeout in seconds
            instead of the sample's.
        :return: the command that runs the proxy in the foreground.
        """
        raise NotImplementedError

    def setUp(self) -> None:
        executable = find_binary(self.binary)
        if executable is None:
            raise SkipTest(
                f"{self.binary} is not installed: run scripts/ensure-system-packages "
                f"(apt-get install {self.package}) to test deploy/ with it"
            )
        self.executable = executable
        self.directory = tempfile.mkdtemp(prefix=f"wsfabric-{self.binary}-")
        # The proxy's workers may run as another user (nobody, www-data).
        os.chmod(self.directory, 0o755)
        self.addCleanup(shutil.rmtree, self.directory, True)  # type: ignore[attr-defined]
        self.clients: list[ContractClient] = []

    async def start(
        self,
        gate_options: Sequence[Sequence[str]] = ((), ()),
        idle_timeout: int | None = None,
    ) -> tuple[Cluster, int]:
        """
        Start a cluster of one backend and two gates, and the proxy in front
        of the gates.

        :param gate_options: extra options of each gate.
        :param idle_timeout: passed to :meth:`proxy_command`.
        :return: the cluster and the proxy's port.
        """
        cluster = Cluster(CONTRACT_APP, gates=0, backends=1, cwd=PROJECT)
        self.addCleanup(cluster.stop)  # type: ignore[attr-defined]

        def start_cluster() -> None:
            cluster.start()
            for options in gate_options:
                cluster.add_gate(options)
            cluster.wait_linked()

        await asyncio.to_thread(start_cluster)
        port = free_port()
        argv = self.proxy_command(
            self.executable,
            self.directory,
            port,
            [gate.port for gate in cluster.gates],
            idle_timeout,
        )
        proxy = Process(self.binary, argv, cwd=self.directory, log_dir=self.directory)
        self.proxy = proxy
        self.addCleanup(proxy.stop)  # type: ignore[attr-defined]
        proxy.start()
        await asyncio.to_thread(wait_for_port, port, 15.0, "127.0.0.1", proxy)
        return cluster, port

    def proxy_logs(self) -> str:
        """
        :return: the end of each log file in the proxy's directory, for
            failure messages.
        """
        parts = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".log"):
                with open(os.path.join(self.directory, name), errors="replace") as f:
                    parts.append(f"--- {name}\n{f.read()[-2000:]}")
        return "\n".join(parts)

    async def connect(self, url: str, count: int, **options: object) -> list[ContractClient]:
        """
        Connect ``count`` clients to ``url``, one after the other, each kept open.
        """
        connected = []
        for _ in range(count):
            client = await ContractClient.connect(url, **options)
            self.clients.append(client)
            connected.append(client)
        return connected

    async def close_clients(self) -> None:
        for client in self.clients:
            if client.close_code is None:
                await client.close()

    def gate_of(self, cluster: Cluster, client: ContractClient) -> str:
        """
        :return: the id of the gate that holds ``client``, from the cluster
            index (``{ns}:client:{cid}`` has the field ``gate``).
        """
        gate = cluster.redis.command("HGET", f"wsfabric:client:{client.client_id}", "gate")
        assert gate is not None, f"client {client.client_id} is not in the index"
        return gate.decode("ascii")

    def gate_id(self, cluster: Cluster, index: int) -> str:
        """
        :return: the id gate process ``index`` registered under.
        """
        found = _REGISTERED.findall(cluster.gates[index].log())
        assert found, f"gate {index} never registered:\n{cluster.gates[index].log()[-2000:]}"
        return found[-1]

    async def group_send_reaches(
        self, clients: list[ContractClient], group: str, text: str
    ) -> None:
        """
        Every client joins ``group``; the first sends ``text`` to it; every
        client receives it.
        """
        for client in clients:
            await client.call("join_group", client.client_id, group)
        await clients[0].call("send_to_group", group, text)
        for client in clients:
            self.assertEqual(await client.next_push(), text)  # type: ignore[attr-defined]

    @async_test(timeout=90)
    async def test_clients_spread_and_group_send(self) -> None:
        """
        Through the proxy, clients land on both gates, a group send reaches
        all of them, and the health-check path answers.
        """
        cluster, port = await self.start()
        try:
            url = f"ws://127.0.0.1:{port}/ws"
            clients = await self.connect(url, CLIENTS)
            gates = {self.gate_of(cluster, client) for client in clients}
            self.assertEqual(  # type: ignore[attr-defined]
                gates,
                {self.gate_id(cluster, 0), self.gate_id(cluster, 1)},
                "the proxy should spread clients over both gates",
            )
            await self.group_send_reaches(clients, "through-proxy", "hello, both gates")

            # The health-check path, as the proxy's own check uses it.
            def head() -> int:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/wsfabric.js", method="HEAD"
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status

            self.assertEqual(await asyncio.to_thread(head), 200)  # type: ignore[attr-defined]
        finally:
            await self.close_clients()
        self.assertNotIn(" is DOWN", self.proxy.log())  # type: ignore[attr-defined]

    @async_test(timeout=120)
    async def test_gate_stops(self) -> None:
        """
        A gate that stops closes its clients with 1001; they reconnect
        through the proxy, land on the other gate, and group sends reach
        everyone.
        """
        cluster, port = await self.start()
        try:
            url = f"ws://127.0.0.1:{port}/ws"
            clients = await self.connect(url, CLIENTS)
            leaving_id = self.gate_id(cluster, 0)
            staying_id = self.gate_id(cluster, 1)
            leaving = [c for c in clients if self.gate_of(cluster, c) == leaving_id]
            staying = [c for c in clients if c not in leaving]
            self.assertTrue(leaving and staying)  # type: ignore[attr-defined]

            # A gate stopped within about a second of its clients connecting
            # sometimes drops them (1006) instead of closing them with 1001
            # (reported to the lead; about 1 run in 15 without this pause).
            await asyncio.sleep(2)
            status = await asyncio.to_thread(cluster.gates[0].stop)
            self.assertEqual(status, 0)  # type: ignore[attr-defined]
            for client in leaving:
                await asyncio.wait_for(asyncio.shield(client._reader), 10)
            self.assertEqual(  # type: ignore[attr-defined]
                [client.close_code for client in leaving],
                [1001] * len(leaving),
                f"gate log:\n{cluster.gates[0].log()[-4000:]}\nproxy logs:\n{self.proxy_logs()}",
            )
            for client in staying:
                self.assertIsNone(client.close_code)  # type: ignore[attr-defined]

            # What wsfabric.js does: connect again, to the same URL.
            again = await self.connect(url, len(leaving))
            for client in again:
                self.assertEqual(  # type: ignore[attr-defined]
                    self.gate_of(cluster, client), staying_id
                )
            await self.group_send_reaches(staying + again, "after-restart", "still here")
        finally:
            await self.close_clients()

    @async_test(timeout=90)
    async def test_pings_outlive_idle_timeout(self) -> None:
        """
        With the proxy's idle timeout cut to 3 s, a silent client on a gate
        that pings every second stays connected; on a gate that never pings,
        the proxy drops it.
        """
        cluster, port = await self.start(
            gate_options=[
                ["--ping-interval", "1", "--ping-timeout", "2"],
                ["--ping-interval", "0"],
            ],
            idle_timeout=3,
        )
        try:
            # The client sends no pings of its own: only the gate's count.
            clients = await self.connect(f"ws://127.0.0.1:{port}/ws", 2, ping_interval=None)
            pinged = [c for c in clients if self.gate_of(cluster, c) == self.gate_id(cluster, 0)]
            silent = [c for c in clients if c not in pinged]
            self.assertEqual((len(pinged), len(silent)), (1, 1))  # type: ignore[attr-defined]
            await asyncio.sleep(8)
            self.assertIsNone(pinged[0].close_code)  # type: ignore[attr-defined]
            self.assertEqual(  # type: ignore[attr-defined]
                await pinged[0].call("whoami"), pinged[0].client_id
            )
            self.assertIsNotNone(silent[0].close_code)  # type: ignore[attr-defined]
        finally:
            await self.close_clients()


class NginxTests(ProxyTestsMixin, IntegrationTestCase):
    """
    ``deploy/nginx.conf`` with nginx.
    """

    binary = "nginx"
    package = "nginx"

    def proxy_command(
        self,
        executable: str,
        directory: str,
        listen_port: int,
        gate_ports: list[int],
        idle_timeout: int | None,
    ) -> list[str]:
        with open(os.path.join(DEPLOY, "nginx.conf"), encoding="utf-8") as f:
            template = f.read()
        temp_paths = "".join(
            f"\n    {kind}_temp_path {directory}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        replacements = {
            "worker_processes auto;": "worker_processes 2;",
            "pid /run/nginx.pid;": f"pid {directory}/nginx.pid;",
            "error_log /var/log/nginx/error.log;": f"error_log {directory}/error.log;",
            "access_log /var/log/nginx/access.log;": f"access_log {directory}/access.log;",
            "worker_rlimit_nofile 65536;": "",
            "worker_connections 32768;": "worker_connections 1024;",
            "http {": "http {" + temp_paths,
            "server 127.0.0.1:8080 ": f"server 127.0.0.1:{gate_ports[0]} ",
            "server 127.0.0.1:8081 ": f"server 127.0.0.1:{gate_ports[1]} ",
            "listen 80;": f"listen 127.0.0.1:{listen_port};",
        }
        if idle_timeout is not None:
            replacements["proxy_read_timeout 75s;"] = f"proxy_read_timeout {idle_timeout}s;"
            replacements["proxy_send_timeout 75s;"] = f"proxy_send_timeout {idle_timeout}s;"
        path = os.path.join(directory, "nginx.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(template, replacements))
        return [executable, "-g", "daemon off;", "-c", path, "-p", directory + "/"]


class HAProxyTests(ProxyTestsMixin, IntegrationTestCase):
    """
    ``deploy/haproxy.cfg`` with HAProxy.
    """

    binary = "haproxy"
    package = "haproxy"

    def proxy_command(
        self,
        executable: str,
        directory: str,
        listen_port: int,
        gate_ports: list[int],
        idle_timeout: int | None,
    ) -> list[str]:
        with open(os.path.join(DEPLOY, "haproxy.cfg"), encoding="utf-8") as f:
            template = f.read()
        replacements = {
            # Logs go to the process's output, which the test keeps.
            "log /dev/log local0": "log stdout format raw local0",
            "bind :80": f"bind 127.0.0.1:{listen_port}",
            "127.0.0.1:8080": f"127.0.0.1:{gate_ports[0]}",
            "127.0.0.1:8081": f"127.0.0.1:{gate_ports[1]}",
        }
        if idle_timeout is not None:
            replacements["timeout tunnel 75s"] = f"timeout tunnel {idle_timeout}s"
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(template, replacements))
        # -db: foreground. The test tracks the process by its pid (HAProxy
        # writes no pid file in this mode).
        return [executable, "-f", path, "-db"]
