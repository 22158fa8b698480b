"""
The options of the admin listener and of logging, shared by every role.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from wsfabric.admin.api import ApiKeys, read_key_file
from wsfabric.admin.logs import JsonLogObserverFactory

#: Where each role's admin listener binds unless ``--admin`` says otherwise.
#: A gate and a backend on one machine do not collide; two of the same role
#: need an ``--admin`` each.
DEFAULT_ADMIN = {
    "standalone": "tcp:8081:interface=127.0.0.1",
    "gate": "tcp:8081:interface=127.0.0.1",
    "backend": "tcp:8082:interface=127.0.0.1",
}

LOG_FORMATS = ("text", "json")


def _log_format(value: str) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return value


_log_format.coerceDoc = "text or json."  # type: ignore[attr-defined]


def admin_parameters(role: str) -> list[list[Any]]:
    """
    :param role: ``"standalone"``, ``"gate"`` or ``"backend"``.
    :return: the admin and logging options of ``role``, for ``optParameters``.
    """
    return [
        [
            "admin",
            None,
            None,
            "Endpoint of the admin listener (health, metrics, HTTP API, dashboard), "
            f"or none (default: {DEFAULT_ADMIN[role]}).",
        ],
        [
            "api-key-file",
            None,
            None,
            "File of HTTP API keys, one per line; without it /api/v1 answers 403.",
        ],
        ["log-format", None, "text", "Log lines as text, or json (one object per line).",
         _log_format],
    ]


def check_admin_options(options: usage.Options, role: str) -> None:
    """
    Resolve the admin options of a parsed role: ``admin-endpoint`` (the
    endpoint string, or ``None`` when disabled), ``admin-explicit`` (whether
    ``--admin`` was given), ``api-keys`` (:class:`ApiKeys`), and
    ``log-observer-factory`` (with ``--log-format json`` under twistd, what
    makes the JSON observer; else ``None``).

    :raises usage.UsageError: naming the bad option.
    """
    given = options["admin"]
    endpoint = given if given is not None else DEFAULT_ADMIN[role]
    if not endpoint.strip():
        raise usage.UsageError("--admin needs an endpoint, e.g. tcp:8081:interface=127.0.0.1, "
                               "or none")
    options["admin-endpoint"] = None if endpoint.strip().lower() == "none" else endpoint
    options["admin-explicit"] = given is not None
    path = options["api-key-file"]
    keys: list[str] = []
    if path is not None:
        try:
            keys = read_key_file(path)
        except ValueError as e:
            raise usage.UsageError(f"--api-key-file {path}: {e}") from None
    options["api-keys"] = ApiKeys(keys)
    parent = getattr(options, "parent", None)
    options["log-observer-factory"] = None
    if options["log-format"] == "json" and parent is not None:
        if parent.get("syslog"):
            raise usage.UsageError("--log-format json cannot go to --syslog")
        if parent.get("logger"):
            raise usage.UsageError("--log-format json and twistd's --logger exclude each other")
        options["log-observer-factory"] = JsonLogObserverFactory(parent)
