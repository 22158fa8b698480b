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
