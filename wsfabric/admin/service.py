"""
The admin listener: its HTTP resources and the service that binds it.

===============  ==============================================================
``/health/live``   200 while the reactor runs
``/health/ready``  200, or 503 with a JSON reason (see :mod:`.health`)
``/metrics``       Prometheus text format (see :mod:`.prometheus`)
``/api/v1/...``    the server HTTP API (see :mod:`.api`)
``/admin/state``   the JSON the dashboard polls (see :mod:`.state`)
``/dashboard``     the dashboard page
===============  ==============================================================
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.http import Request

from wsfabric.admin.api import ApiKeys, ApiResource, write_json
from wsfabric.admin.health import BusProbe, readiness
from wsfabric.admin.node import AdminNode
from wsfabric.admin.prometheus import make_registry
from wsfabric.admin.state import cluster_state, local_state
from wsfabric.service import fatal

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: The dashboard's files: URL name, file name, content type.
DASHBOARD_FILES = {
    b"": ("dashboard.html", b"text/html; charset=utf-8"),
    b"app.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"style.css": ("dashboard.css", b"text/css; charset=utf-8"),
}

# Everything the page loads comes from this listener; nothing runs inline.
_CSP = b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"

_log = Logger()


class AdminSite(server.Site):
    """
    The admin listener's site: no access log (Prometheus and the dashboard
    poll it every few seconds).
    """

    noisy = False

    def log(self, request: Request) -> None:
        """
        Do not log requests.
        """


class _Json(resource.Resource):
    """
    A leaf that answers GET with a JSON document computed per request.
    """

    isLeaf = True

    def __init__(self, compute: Any) -> None:
        super().__init__()
        self._compute = compute

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        status, value = self._compute()
        return write_json(request, status, value)


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return write_json(request, 404, {"error": {
            "code": "not_found",
            "message": f"no admin resource at {request.path.decode('utf-8', 'replace')}",
        }})


class _Tree(resource.Resource):
    """
    A resource with named children and JSON 404s for the rest.
    """

    def getChild(self, path: bytes, request: Request) -> resource.Resource:  # noqa: N802
        return _NotFound()


class AdminRoot(_Tree):
    """
    The root of the admin listener.

    :param node: the node.
    :param keys: the HTTP API keys.
    :param clock: the reactor (for readiness ages).
    :param probe: a standalone node's bus probe, or ``None``.
    """

    def __init__(
        self, node: AdminNode, keys: ApiKeys, clock: IReactorTime, probe: BusProbe | None = None
    ) -> None:
        super().__init__()
        self.node = node
        self._clock = clock
        self._probe = probe
        self._started = time.time()
        self.registry = make_registry(node, lambda: self.readiness()["status"] == "ready")
        health = _Tree()
        health.putChild(b"live", _Json(lambda: (200, {"status": "live"})))
        health.putChild(b"ready", _Json(self._ready))
        self.putChild(b"health", health)
        self.putChild(b"metrics", _Metrics(self.registry))
        api = _Tree()
        api.putChild(b"v1", ApiResource(lambda: node.fabric, keys))
        self.putChild(b"api", api)
        admin = _Tree()
        admin.putChild(b"state", _State(self))
        self.putChild(b"admin", admin)
        self.putChild(b"dashboard", _Dashboard())

    def readiness(self) -> dict[str, Any]:
        """
        :return: the node's readiness now.
        """
        return readiness(self.node, self._probe, self._clock)

    def _ready(self) -> tuple[int, dict[str, Any]]:
        ready = self.readiness()
        return (200 if ready["status"] == "ready" else 503), ready

    def state(self) -> Any:
        """
        :return: a Deferred of the dashboard's state document.
        """
        local = local_state(self.node, self.readiness(), self._started)

        def combine(cluster: dict[str, Any]) -> dict[str, Any]:
            return {"time": time.time(), "node": local, "cluster": cluster}

        return cluster_state(self.node).addCallback(combine)

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        """
        ``/``: where everything is.
        """
        if request.postpath not in ([], [b""]):
            return _NotFound().render(request)
        return write_json(request, 200, {
            "role": self.node.role,
            "id": self.node.node_id,
            "endpoints": ["/health/live", "/health/ready", "/metrics", "/api/v1/openapi.json",
                          "/api/v1/<method>", "/admin/state", "/dashboard"],
        })


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class _State(resource.Resource):
    isLeaf = True

    def __init__(self, root: AdminRoot) -> None:
        super().__init__()
        self._root = root

    def render_GET(self, request: Request) -> int:  # noqa: N802
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def answer(state: dict[str, Any]) -> None:
            if not finished[0]:
                request.write(write_json(request, 200, state))
                request.finish()

        def failed(failure: Failure) -> None:
            _log.failure("could not build the admin state", failure)
            if not finished[0]:
                request.write(write_json(request, 500, {"error": {
                    "code": "internal_error", "message": failure.getErrorMessage()}}))
                request.finish()

        self._root.state().addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class _Dashboard(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        name = b"/".join(request.postpath)
        if name == b"" and not request.path.endswith(b"/"):
            # Relative URLs in the page resolve under /dashboard/.
            request.redirect(b"/dashboard/")
            return b""
        found = DASHBOARD_FILES.get(name)
        if found is None:
            return _NotFound().render(request)
        filename, content_type = found
        with open(os.path.join(STATIC, filename), "rb") as f:
            body = f.read()
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        return body


class AdminListenerService(StreamServerEndpointService):
    """
    Binds the admin listener. When ``--admin`` was given, failing to listen
    ends the process with a one-line error; when the role's default endpoint
    is taken (a second node of the same role on one machine), the node runs
    on without an admin listener and logs an error saying how to give it one.

    :param description: the endpoint string.
    :param explicit: whether ``--admin`` named it.
    :param daemon: whether twistd daemonizes.
    """

    def __init__(
        self, description: str, endpoint: Any, factory: Any, explicit: bool, daemon: bool = False
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.explicit = explicit
        self.daemon = daemon
        self.listening = False
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """
        Listen now.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = e.socketError.strerror if e.socketError is not None else str(e)
            if self.explicit:
                fatal(f"cannot listen on --admin {self.description}: {reason}", self.daemon)
            _log.error(
                "no admin listener: cannot listen on the default {endpoint} ({reason}); "
                "give this node its own --admin ENDPOINT, or --admin none",
                endpoint=self.description,
                reason=reason,
            )
            return
        self.listening = True
        _log.info("admin listener on {endpoint}", endpoint=self.description)


def make_admin_service(
    options: Any, node: AdminNode, reactor: Any, daemon: bool = False
) -> MultiService | None:
    """
    Build the admin listener of a node.

    :param options: the role's parsed options (see
        :func:`~wsfabric.admin.options.check_admin_options`).
    :param node: the node.
    :param reactor: the reactor.
    :param daemon: whether twistd daemonizes.
    :return: the service (add it to the root first: it starts first and
        stops last, so health answers while the node drains), or ``None``
        with ``--admin none``.
    :raises SystemExit: if ``--admin`` is not a valid endpoint.

    It also hands the node's root service the ``--log-format`` observer.
    """
    if options.get("log-observer-factory") is not None and node.service is not None:
        node.service.log_observer_factory = options["log-observer-factory"]
    description = options["admin-endpoint"]
    if description is None:
        return None
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:  # ssl: endpoints also fail on unreadable key files
        fatal(f"--admin {description}: not a valid endpoint ({e})", daemon)
    services = MultiService()
    probe = None
    if node.bus is not None:
        probe = BusProbe(node.bus, reactor)
        probe.setServiceParent(services)
    root = AdminRoot(node, options["api-keys"], reactor, probe)
    site = AdminSite(root, reactor=reactor)
    listener = AdminListenerService(
        description, endpoint, site, options["admin-explicit"], daemon
    )
    listener.setServiceParent(services)
    services.admin_root = root  # type: ignore[attr-defined]
    services.listener = listener  # type: ignore[attr-defined]
    return services
