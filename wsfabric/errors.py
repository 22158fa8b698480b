"""
The one exception tree of wsfabric.

Every error that wsfabric raises on purpose derives from :class:`WsfabricError`,
so an application can catch them all with one ``except`` clause. Errors are
translated once at each boundary: into an AMP error code between gate and
backend, into a WebSocket close code or an HTTP status at the edge, and into a
one-line message on the command line.
"""

from __future__ import annotations


class WsfabricError(Exception):
    """
    The base class of every error wsfabric raises on purpose.
    """


class Reject(WsfabricError):
    """
    Raised by :meth:`wsfabric.interfaces.IApplication.on_connect` to refuse a
    client. The client is closed with ``code`` and ``reason`` and never counts
    as online; ``on_close`` is not called for it.

    :param code: the WebSocket close code sent to the client: 1000, or one of
        the application range 3000-4999 (other codes are reserved by RFC 6455
        and are replaced by 1008, "policy violation").
    :param reason: a short human-readable reason (at most 123 UTF-8 bytes are
        sent).
    """

    def __init__(self, code: int = 4000, reason: str = "rejected") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"client rejected with close code {self.code}: {self.reason}"


class ClientNotFound(WsfabricError, LookupError):
    """
    The client id names no client that is online, so a mutation of it
    (``bind_uid``, ``join_group``, ``set_info``, ...) cannot be applied.

    :param client_id: the client id that was not found.
    """

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.client_id = client_id

    def __str__(self) -> str:
        return f"client {self.client_id!r} is not online"


class ClusterUnavailable(WsfabricError):
    """
    The cluster state (Redis) cannot be reached within the configured time,
    so the call was not carried out. It is never replayed later.
    """


class InvalidArgument(WsfabricError, ValueError):
    """
    An argument given to an :class:`~wsfabric.interfaces.IFabric` method has
    the wrong type or value (for example an empty group name, or info that is
    not JSON-serialisable).
    """


class ConfigurationError(WsfabricError):
    """
    A command-line option, a configuration file or the ``--app`` callable is
    not usable. The command line reports it as a one-line error.
    """


class SlowConsumer(WsfabricError):
    """
    A client stopped reading and its outbound queue went over its byte bound;
    the client is closed with 1008 "slow consumer".
    """


class RouteError(WsfabricError):
    """
    Raised by a route handler of a :class:`wsfabric.routing.Router` to answer
    the request with an error of its own: the client receives
    ``{"code": code, "message": message}`` and the connection stays open.
    Nothing is logged (it is an answer, not a failure).

    :param code: a short stable code for clients to test, e.g.
        ``"not_allowed"``.
    :param message: a human-readable explanation.
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


class BadEnvelope(RouteError):
    """
    A routed message could not be read (or written) by a codec of
    :mod:`wsfabric.routing.codec`. ``code`` is ``"bad_request"`` for a
    malformed envelope. ``id`` and ``route`` are what could be read of the
    envelope before the problem was found, so that the error can still be
    addressed to the request (``None`` when unknown).

    :param code: the error code.
    :param message: what is wrong.
    :param id: the request id, if it could be read.
    :param route: the route (name or code), if it could be read.
    """

    def __init__(
        self,
        code: str,
        message: str,
        id: int | None = None,  # noqa: A002 (the envelope's own name)
        route: str | int | None = None,
    ) -> None:
        super().__init__(code, message)
        self.id = id
        self.route = route


class AuthenticationFailed(WsfabricError):
    """
    A client's credentials are missing or not valid (raised by an
    :class:`~wsfabric.interfaces.IAuthenticator`). Before the WebSocket
    upgrade the client gets HTTP 401 with ``{"error": "unauthorized",
    "reason": reason}``; a refresh that fails is answered with an error and
    the connection closes with 4401 when its current token expires.

    :param reason: why, for the client (never the token itself).
    """

    def __init__(self, reason: str = "authentication required") -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class LimitExceeded(WsfabricError):
    """
    A connection limit refused a client (too many connections from its
    address or for its uid): HTTP 429 before the WebSocket upgrade.

    :param reason: which limit, for the client.
    :param cause: a short stable name of the limit (``"ip_limit"``,
        ``"uid_limit"``), used as the metrics drop cause.
    """

    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(reason, cause)
        self.reason = reason
        self.cause = cause

    def __str__(self) -> str:
        return self.reason


class RemoteError(WsfabricError):
    """
    The server answered a request of :mod:`wsfabric.client` (or a notify)
    with an error response: the ``code`` is one of the stable codes of
    docs/wire-protocol.md (``bad_request``, ``not_found``, ``internal``,
    ``service_unavailable``) or the code of a :class:`RouteError` the handler
    raised.

    :param code: the error code.
    :param message: the server's explanation.
    :param route: the route of the request, when known.
    """

    def __init__(self, code: str, message: str = "", route: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.route = route

    def __str__(self) -> str:
        where = f" (route {self.route!r})" if self.route else ""
        return f"{self.code}: {self.message}{where}" if self.message else f"{self.code}{where}"


class RequestTimeout(WsfabricError, TimeoutError):
    """
    No response to a request of :mod:`wsfabric.client` came within its
    timeout. The request is forgotten: a late response is ignored.

    :param route: the route of the request.
    :param timeout: the timeout in seconds.
    """

    def __init__(self, route: str, timeout: float) -> None:
        super().__init__(route, timeout)
        self.route = route
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no response to {self.route!r} within {self.timeout:g} s"


class NotConnected(WsfabricError, ConnectionError):
    """
    A :mod:`wsfabric.client` client is not connected: a request or send made
    while it reconnects or after it closed, or a request whose connection
    was lost before the response came (it may or may not have run on the
    server).

    :param reason: what happened.
    """

    def __init__(self, reason: str = "not connected") -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ConnectFailed(WsfabricError, ConnectionError):
    """
    A :mod:`wsfabric.client` client could not connect and gave up (retries
    exhausted, connect timeout, or a refusal that retrying cannot fix, such
    as HTTP 401 or a close with 4401 or 1008 during the TCP hello).

    :param reason: why, with the last failure.
    :param code: the HTTP status or close code of the refusal, if any.
    """

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason, code)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return self.reason
