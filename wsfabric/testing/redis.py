"""
A real ``redis-server`` for integration tests.

:class:`RedisServer` starts a throw-away server on a free loopback port, with
no persistence, and offers the faults the reliability tests need: kill it,
hang it (SIGSTOP) and resume it, restart it empty on the same port. Every
wait is bounded, every process it starts is stopped by its pid::

    server = RedisServer()
    server.start()
    self.addCleanup(server.stop)
    server.command("PUBSUB", "NUMSUB", "wsfabric:ch:all")

:meth:`RedisServer.command` is a tiny blocking client (a raw socket speaking
RESP) for assertions; it does not need the reactor.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from typing import Any

_BINARY = "redis-server"
_LOOPBACK = "127.0.0.1"


class RedisCommandError(Exception):
    """
    Redis answered :meth:`RedisServer.command` with an error reply.
    """


def find_redis_server(install: bool = True) -> str:
    """
    :param install: install Debian's ``redis-server`` package with apt-get if
        the binary is missing (bounded to 5 minutes).
    :return: the path of ``redis-server``.
    :raises RuntimeError: if it is missing and cannot be installed.
    """
    path = shutil.which(_BINARY) or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if path is None and install and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "redis-server"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
        path = shutil.which(_BINARY)
    if path is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return path


def free_port() -> int:
    """
    :return: a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif not isinstance(arg, bytes):
            arg = str(arg).encode("ascii")
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Reader:
    """
    Parses one RESP2 reply from a blocking socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        self._buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size + 2:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisCommandError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply from redis-server: {line[:80]!r}")


def make_test_certificates(directory: str) -> tuple[str, str, str]:
    """
    Write a throw-away CA and a server certificate for 127.0.0.1 (valid for
    two days) into ``directory``.

    :return: the paths of the CA certificate, the server certificate and the
        server key (PEM).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, key, signer, ca):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(_LOOPBACK)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("wsfabric test CA", "wsfabric test CA", ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(_LOOPBACK, "wsfabric test CA", key, ca_key, False)
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key"))
    pem = serialization.Encoding.PEM
    for path, data in zip(
        paths,
        (
            ca.public_bytes(pem),
            cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
        strict=True,
    ):
        with open(path, "wb") as f:
            f.write(data)
    return paths  # type: ignore[return-value]


class RedisServer:
    """
    One ``redis-server`` process on 127.0.0.1, without persistence.

    :param password: a ``requirepass`` for the server, or ``None``.
    :param start_timeout: seconds to wait for the server to answer PING.
    :param extra_args: more ``redis-server`` arguments.
    :param tls: serve TLS only, with a throw-away CA (:attr:`ca_file`).

    :ivar port: the port, once started (kept across :meth:`restart_empty`).
    :ivar process: the ``subprocess.Popen`` of the server, while running.
    """

    def __init__(
        self,
        password: str | None = None,
        start_timeout: float = 10.0,
        extra_args: tuple[str, ...] = (),
        tls: bool = False,
    ) -> None:
        self.password = password
        self.tls = tls
        self.ca_file: str | None = None
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._dir: str | None = None

    # -- facts

    @property
    def pid(self) -> int:
        """
        The pid of the running server.
        """
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    @property
    def url(self) -> str:
        """
        The ``redis://`` URL of the server (database 0).
        """
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{_LOOPBACK}:{self.port}/0?ca={self.ca_file}"
        return f"redis://{auth}{_LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        """
        Whether the server process is alive (paused counts as alive).
        """
        return self.process is not None and self.process.poll() is None

    # -- lifecycle

    def start(self) -> RedisServer:
        """
        Start the server on a free port (or on :attr:`port` if set) and wait
        until it answers PING.

        :return: this server.
        :raises RuntimeError: if it does not come up within
            ``start_timeout`` (after three tries on fresh ports).
        """
        if self.running:
            return self
        binary = find_redis_server()
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="wsfabric-redis-")
        tls_args: list[str] = []
        if self.tls:
            self.ca_file, cert, key = make_test_certificates(self._dir)
            tls_args = ["--tls-cert-file", cert, "--tls-key-file", key]
            tls_args += ["--tls-ca-cert-file", self.ca_file, "--tls-auth-clients", "no"]
        fixed = self.port is not None
        error = "no attempt"
        for _ in range(1 if fixed else 3):
            if not fixed:
                self.port = free_port()
            port_args = ["--port", "0", "--tls-port"] if self.tls else ["--port"]
            args = [
                binary,
                *port_args,
                str(self.port),
                "--bind",
                _LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self._dir,
                "--logfile",
                "",
                "--loglevel",
                "warning",
            ]
            if self.password:
                args += ["--requirepass", self.password]
            args += tls_args + list(self.extra_args)
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._paused = False
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    error = f"redis-server exited with status {self.process.returncode}"
                    break
                try:
                    if self.command("PING", timeout=0.5) == "PONG":
                        return self
                except (OSError, ConnectionError, RedisCommandError) as e:
                    error = str(e)
                time.sleep(0.02)
            else:
                error = f"no answer to PING within {self.start_timeout:g} s"
            self._reap(signal.SIGKILL)
        raise RuntimeError(f"could not start redis-server on port {self.port}: {error}")

    def stop(self) -> None:
        """
        Stop the server: SIGTERM, then SIGKILL after 3 s. Harmless when it is
        not running.
        """
        self._reap(signal.SIGTERM)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """
        Kill the server at once (SIGKILL), as a crash would.
        """
        self._reap(signal.SIGKILL)

    def pause(self) -> None:
        """
        Hang the server (SIGSTOP): its connections stay open, nothing is
        answered.
        """
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """
        Resume a paused server (SIGCONT).
        """
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def restart_empty(self) -> None:
        """
        Kill the server (SIGKILL) and start a new, empty one on the same
        port: a Redis restart that lost its data.
        """
        self.kill()
        self.start()

    def _reap(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                if self._paused and sig != signal.SIGKILL:
                    # A stopped process keeps SIGTERM pending until SIGCONT.
                    os.kill(process.pid, signal.SIGCONT)
                os.kill(process.pid, sig)
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=3)
            except ProcessLookupError:
                pass
        self._paused = False

    # -- a tiny blocking client

    def command(self, *args: Any, timeout: float = 2.0) -> Any:
        """
        Run one command on a fresh connection and return its reply (bulk
        strings as bytes, status replies as str, arrays as lists).

        :raises RedisCommandError: for an error reply.
        :raises OSError: if the server cannot be reached within ``timeout``.
        """
        if self.port is None:
            raise RuntimeError("redis-server was never started")
        with self._connect(timeout) as sock:
            reader = _Reader(sock)
            if self.password:
                sock.sendall(_encode(("AUTH", self.password)))
                answer = reader.reply()
                if isinstance(answer, RedisCommandError):
                    raise answer
            sock.sendall(_encode(args))
            reply = reader.reply()
        if isinstance(reply, RedisCommandError):
            raise reply
        return reply

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((_LOOPBACK, self.port), timeout=timeout)
        sock.settimeout(timeout)
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file)
            sock = context.wrap_socket(sock, server_hostname=_LOOPBACK)
        return sock

    def keys(self, pattern: str) -> list[str]:
        """
        :return: the keys matching ``pattern`` (``KEYS``; tests only).
        """
        return sorted(k.decode("utf-8") for k in self.command("KEYS", pattern))

    def numsub(self, channel: str) -> int:
        """
        :return: how many connections are subscribed to ``channel``.
        """
        reply = self.command("PUBSUB", "NUMSUB", channel)
        return int(reply[1])

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RawSubscriber:
    """
    A blocking subscriber on its own connection, independent of wsfabric:
    the witness that tells whether a message really went out.

    :param server: the server.
    :param channels: the channels to subscribe to.
    """

    def __init__(self, server: RedisServer, *channels: str) -> None:
        self._sock = server._connect(2.0)
        self._reader = _Reader(self._sock)
        if server.password:
            self._sock.sendall(_encode(("AUTH", server.password)))
            self._reader.reply()
        self._sock.sendall(_encode(("SUBSCRIBE", *channels)))
        for _ in channels:
            self._reader.reply()

    def messages(self, wait: float = 0.2) -> list[tuple[bytes, bytes]]:
        """
        :param wait: seconds to wait for the first message.
        :return: the ``(channel, payload)`` messages that arrived.
        """
        received = []
        self._sock.settimeout(wait)
        try:
            while True:
                reply = self._reader.reply()
                if isinstance(reply, list) and reply[:1] == [b"message"]:
                    received.append((reply[1], reply[2]))
                self._sock.settimeout(0.05)
        except TimeoutError:
            pass
        return received

    def close(self) -> None:
        """
        Close the connection.
        """
        self._sock.close()


__all__ = [
    "RawSubscriber",
    "RedisCommandError",
    "RedisServer",
    "find_redis_server",
    "free_port",
    "make_test_certificates",
]
