"""
``--log-format json``: one JSON object per log event, one per line.

Each line has ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``text``
(the rendered message) and ``fields`` (the event's own fields, as JSON;
values JSON cannot carry are given as their ``repr``), plus ``traceback``
when the event carries a failure::

    {"time": "2024-05-01T12:00:00.123456Z", "level": "info",
     "namespace": "wsfabric.gate.backends.BackendPool",
     "text": "backend 3f... ready", "fields": {"backend_id": "3f..."}}
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, eventAsText
from twisted.python import logfile
from zope.interface import implementer

#: Keys of legacy (``twisted.python.log``) events that are not fields.
_NOT_FIELDS = frozenset(
    {"message", "isError", "system", "time", "format", "why", "failure", "printed"}
)


@implementer(ILogObserver)
class JsonLogObserver:
    """
    A log observer writing one JSON object per event to ``stream``.

    :param stream: a text stream (or a twistd ``LogFile``).
    """

    def __init__(self, stream: IO[str] | Any) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        """
        Write ``event``.
        """
        self._stream.write(format_json_event(event) + "\n")
        self._stream.flush()


def format_json_event(event: dict[str, Any]) -> str:
    """
    :return: ``event`` as one line of JSON (see the module docstring).
    """
    level = event.get("log_level")
    stamp = event.get("log_time") or event.get("time")
    when = (
        datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if isinstance(stamp, int | float)
        else None
    )
    try:
        text = eventAsText(
            event, includeTraceback=False, includeTimestamp=False, includeSystem=False
        )
    except Exception as e:  # a broken format string must not lose the event
        text = f"(unformattable event: {e!r})"
    if not text and event.get("message"):
        # A twisted.python.log event that did not pass through the publisher.
        text = " ".join(str(part) for part in event["message"])
    record: dict[str, Any] = {
        "time": when,
        "level": getattr(level, "name", "error" if event.get("isError") else "info"),
        "namespace": event.get("log_namespace") or event.get("system") or "-",
        "text": text,
        "fields": {
            key: value
            for key, value in event.items()
            if not key.startswith("log_") and key not in _NOT_FIELDS
        },
    }
    failure = event.get("log_failure") or event.get("failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    try:
        return json.dumps(record, default=repr, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        record["fields"] = {key: repr(value) for key, value in record["fields"].items()}
        return json.dumps(record, default=repr, ensure_ascii=False)


class JsonLogObserverFactory:
    """
    What ``--log-format json`` gives twistd as its ``--logger``: makes the
    observer when twistd starts logging, writing where twistd would have
    written text (standard output under ``-n`` without ``--logfile``, else
    ``--logfile``, by default ``twistd.log``).

    :param twistd_options: twistd's own options (``nodaemon``, ``logfile``).
    """

    def __init__(self, twistd_options: Any) -> None:
        self._options = twistd_options

    def __call__(self) -> JsonLogObserver:
        """
        :return: the observer.
        """
        path = self._options.get("logfile")
        if path == "-" or (not path and self._options.get("nodaemon")):
            return JsonLogObserver(sys.stdout)
        return JsonLogObserver(logfile.LogFile.fromFullPath(path or "twistd.log"))
