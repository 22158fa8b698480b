"""
Which browser origins may open a WebSocket.

A browser sends the page's origin (``scheme://host[:port]``) with every
WebSocket handshake; checking it is the defence against cross-site WebSocket
hijacking. Users write origins the way browsers show them
(``https://app.example.com``), so patterns are normalised with the scheme's
default port before matching, and the incoming origin is normalised the same
way. A ``*`` in the host part matches any run of characters
(``https://*.example.com``); ``*`` alone allows every origin.

With no patterns configured, only same-origin pages may connect: the origin's
host and port must equal the ``Host`` header's. Clients that send no
``Origin`` header are not browsers and are always let through: the origin
check is not authentication.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from urllib.parse import urlsplit

from wsfabric.errors import ConfigurationError

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split(origin: str) -> tuple[str, str, int] | None:
    """
    :return: ``(scheme, host, port)`` of ``origin`` with the default port
        filled in, lower case, or ``None`` if it is not an origin.
    """
    try:
        parts = urlsplit(origin.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if not scheme or not host or parts.path not in ("", "/") or parts.query:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            return None
    return scheme, host, port


def normalise_origin(pattern: str) -> str:
    """
    :param pattern: an allowed origin as a user wrote it, e.g.
        ``https://app.example.com``, ``http://localhost:3000``,
        ``https://*.example.com``, ``*`` or ``null``.
    :return: the pattern as ``scheme://host:port`` (``*`` and ``null`` as
        they are).
    :raises ConfigurationError: if it is not an origin.
    """
    pattern = pattern.strip()
    if pattern in ("*", "null"):
        return pattern
    # urlsplit cannot parse a wildcard in the host; stand one in.
    parts = _split(pattern.replace("*", "wildcard-placeholder"))
    if parts is None:
        raise ConfigurationError(
            f"not an origin: {pattern!r} (expected scheme://host[:port], "
            "e.g. https://app.example.com)"
        )
    scheme, host, port = parts
    return f"{scheme}://{host.replace('wildcard-placeholder', '*')}:{port}"


class OriginPolicy:
    """
    Decides whether a handshake's ``Origin`` is allowed.

    :param patterns: allowed origins as users write them; empty means
        same-origin only.
    :raises ConfigurationError: if a pattern is not an origin.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [normalise_origin(pattern) for pattern in patterns]
        self._any = "*" in self.patterns

    def allows(self, origin: str | None, host: str | None) -> bool:
        """
        :param origin: the ``Origin`` header, or ``None`` if absent.
        :param host: the ``Host`` header, or ``None`` if absent.
        :return: whether the handshake may proceed.
        """
        if origin is None:
            return True
        if self._any:
            return True
        origin = origin.strip()
        if origin == "null":
            return "null" in self.patterns
        parts = _split(origin)
        if parts is None:
            return False
        scheme, origin_host, port = parts
        if not self.patterns:
            return _same_origin(origin_host, port, host, scheme)
        normal = f"{scheme}://{origin_host}:{port}"
        return any(
            pattern != "null" and fnmatch.fnmatchcase(normal, pattern)
            for pattern in self.patterns
        )


def _same_origin(origin_host: str, origin_port: int, host: str | None, scheme: str) -> bool:
    if not host:
        return False
    parts = _split(f"{scheme}://{host}")
    return parts is not None and parts[1:] == (origin_host, origin_port)
