"""
The client listener: one port that serves the WebSocket endpoint and plain
HTTP (``/wsfabric.js`` and, with ``--static``, a directory of files).

A small front protocol reads the request head of each new connection, then
hands the connection to Autobahn when the path is the WebSocket path and to
``twisted.web`` otherwise. Autobahn therefore parses each handshake once, and
the HTTP side gets a full web server (ranges, caching headers, safe paths)
for static files.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web import resource, static
from twisted.web.server import Request, Site

#: Longest request head (request line and headers) a client may send.
MAX_HEAD_SIZE = 16384



def _json_response(status: str, error: str) -> bytes:
    body = json.dumps({"error": error}).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_TOO_LARGE = _json_response("431 Request Header Fields Too Large", "request head is too large")
_BAD_REQUEST = _json_response("400 Bad Request", "malformed request line")


def client_script_path() -> Any:
    """
    :return: the path of the packaged ``wsfabric.js``.
    """
    return files("wsfabric") / "static" / "wsfabric.js"


class _Front(Protocol):
    """
    Reads a request head, then hands the connection on and passes every
    later read straight through.
    """

    def __init__(self, edge: EdgeFactory, address: IAddress) -> None:
        self._edge = edge
        self._address = address
        self._head = b""
        self._inner: Protocol | None = None
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        # Slow-loris defence while the head trickles in; Autobahn and
        # twisted.web take over timeouts once they have the connection.
        self._timeout = self._edge.clock.callLater(
            self._edge.head_timeout, self._expire
        )

    def dataReceived(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.dataReceived(data)
            return
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_SIZE:
                self._refuse(_TOO_LARGE)
            else:
                self._head = head
            return
        if end > MAX_HEAD_SIZE:
            self._refuse(_TOO_LARGE)
            return
        self._head = b""
        request_line = head[: head.find(b"\r\n")].split(b" ")
        if len(request_line) != 3:
            self._refuse(_BAD_REQUEST)
            return
        path = request_line[1].split(b"?", 1)[0]
        edge = self._edge
        if path == edge.ws_path:
            inner = edge.websocket.buildProtocol(self._address)
        else:
            inner = edge.site.buildProtocol(self._address)
        self._cancel_timeout()
        if inner is None:
            self.transport.abortConnection()
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        inner.dataReceived(head)

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_timeout()
        if self._inner is not None:
            self._inner.connectionLost(reason)

    def _refuse(self, response: bytes) -> None:
        self._cancel_timeout()
        self.transport.write(response)
        self.transport.loseConnection()

    def _expire(self) -> None:
        self._timeout = None
        self.transport.abortConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None


class EdgeFactory(Factory):
    """
    The factory of the client listener.

    :param websocket: builds WebSocket connections (Autobahn).
    :param site: serves plain HTTP.
    :param ws_path: the WebSocket path, e.g. ``"/ws"``.
    :param clock: schedules the head timeout.
    :param head_timeout: seconds a client has to send its request head.
    """

    noisy = False

    def __init__(
        self,
        websocket: Factory,
        site: Site,
        ws_path: str,
        clock: IReactorTime,
        head_timeout: float,
    ) -> None:
        self.websocket = websocket
        self.site = site
        self.ws_path = ws_path.encode("ascii")
        self.clock = clock
        self.head_timeout = head_timeout

    def buildProtocol(self, addr: IAddress) -> Protocol:
        """
        :return: a front protocol for a new connection.
        """
        return _Front(self, addr)

    def doStart(self) -> None:
        """
        Start the inner factories with this one.
        """
        super().doStart()
        self.websocket.doStart()
        self.site.doStart()

    def doStop(self) -> None:
        """
        Stop the inner factories with this one.
        """
        self.site.doStop()
        self.websocket.doStop()
        super().doStop()


class _StaticFiles(static.File):
    """
    A directory served at ``/``: files only, no directory listings, and
    nothing whose name starts with a dot (``.git``, ``.env``, ...).
    """

    def directoryListing(self) -> resource.Resource:
        """
        Directories without an index.html are not listed.
        """
        return resource.NoResource("No such resource.")

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        """
        Refuse hidden names.
        """
        if path.startswith(b"."):
            return resource.NoResource("No such resource.")
        return super().getChild(path, request)


class _Request(Request):
    """
    A request whose response does not advertise the server's software and
    version.
    """

    def setHeader(self, name: Any, value: Any) -> None:
        """
        Set a response header, except ``Server``.
        """
        if (name.lower() if isinstance(name, bytes) else name.lower().encode()) != b"server":
            super().setHeader(name, value)


class _Home(resource.Resource):
    """
    What ``/`` shows when no static directory is served.
    """

    isLeaf = False

    def __init__(self, ws_path: str) -> None:
        super().__init__()
        self._ws_path = ws_path

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        if path == b"":
            return self
        return resource.NoResource("No such resource.")

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            "wsfabric is running. WebSocket endpoint: "
            f"{self._ws_path}; browser client: /wsfabric.js\n"
        ).encode()


def make_site(ws_path: str, static_dir: str | None, clock: IReactorTime) -> Site:
    """
    :param ws_path: the WebSocket path (shown on the home page).
    :param static_dir: a directory to serve at ``/``, or ``None``.
    :param clock: the reactor (for the site's timeouts).
    :return: the HTTP site of the client listener.
    """
    root: resource.Resource
    if static_dir is not None:
        root = _StaticFiles(static_dir)
    else:
        root = _Home(ws_path)
    root.putChild(
        b"wsfabric.js",
        static.File(str(client_script_path()), defaultType="text/javascript"),
    )
    site = Site(root, reactor=clock)
    site.requestFactory = _Request
    site.displayTracebacks = False
    site.noisy = False
    # Plain HTTP clients get this long to be idle between requests.
    site.timeOut = 30
    return site
