"""
Command-line options shared by the ``twistd`` plugins.

Every option of every role may also come from a TOML file given with
``--config FILE``; the command line wins over the file. Keys are the long
option names (``max-message-size`` or ``max_message_size``); repeatable
options take a list; flags take ``true``/``false``.

A wrong option ends the command with a one-line error and exit status 1,
rather than twistd's full usage text.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

from twisted.python import usage

from wsfabric.errors import ConfigurationError


def positive_int(value: str) -> int:
    """
    :raises ValueError: unless ``value`` is an integer > 0.
    """
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def non_negative_int(value: str) -> int:
    """
    :raises ValueError: unless ``value`` is an integer >= 0.
    """
    number = int(value)
    if number < 0:
        raise ValueError("must be zero or a positive integer")
    return number


def non_negative_float(value: str) -> float:
    """
    :raises ValueError: unless ``value`` is a number >= 0.
    """
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be zero or a positive number")
    return number


def positive_float(value: str) -> float:
    """
    :raises ValueError: unless ``value`` is a number > 0.
    """
    number = non_negative_float(value)
    if number == 0:
        raise ValueError("must be more than 0")
    return number


positive_int.coerceDoc = "Must be a positive integer."  # type: ignore[attr-defined]
non_negative_int.coerceDoc = "Must be 0 or a positive integer."  # type: ignore[attr-defined]
non_negative_float.coerceDoc = "Must be 0 or a positive number of seconds."  # type: ignore[attr-defined]
positive_float.coerceDoc = "Must be a positive number of seconds."  # type: ignore[attr-defined]


class WsfabricOptions(usage.Options):
    """
    Base class of the plugins' options: ``--config`` files, repeatable
    options, one-line errors.

    Subclasses name their repeatable options in :attr:`repeatable`; each is a
    list under its name, and the subclass's ``opt_<name>`` handler calls
    :meth:`append`.
    """

    #: The twistd subcommand, for error messages.
    command = "wsfabric"
    #: The names of the repeatable options.
    repeatable: tuple[str, ...] = ()

    optParameters: list[Sequence[Any]] = [
        ["config", None, None, "Read options from this TOML file; the command line wins."],
    ]

    def __init__(self) -> None:
        super().__init__()
        for name in self.repeatable:
            self[name] = []
        self._from_file: set[str] = set()
        # Twisted's coercion errors do not say which option was wrong.
        for name, handler in list(self._dispatch.items()):
            if type(handler) is usage.CoerceParameter:
                self._dispatch[name] = _NamedCoerceParameter(self, handler.coerce)

    def append(self, name: str, value: str) -> None:
        """
        Add ``value`` to the repeatable option ``name``. The first occurrence
        on the command line replaces the list a ``--config`` file gave.
        """
        if name in self._from_file:
            self._from_file.discard(name)
            self[name] = []
        self[name].append(value)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse ``options`` (after those of a ``--config`` file); on error, exit
        with a one-line message.
        """
        if options is None:
            options = sys.argv[1:]
        try:
            arguments = list(options)
            path = _config_path(arguments)
            if path is not None:
                file_arguments, file_lists = self._config_arguments(path)
                for name, values in file_lists.items():
                    self[name] = values
                self._from_file = set(file_lists)
                arguments = file_arguments + arguments
            super().parseOptions(arguments)
        except (usage.UsageError, ConfigurationError) as e:
            raise SystemExit(f"wsfabric: error: {e}") from None

    def _config_arguments(self, path: str) -> tuple[list[str], dict[str, list[str]]]:
        """
        :return: the options of the TOML file ``path``: single-valued ones as
            command-line arguments, repeatable ones as lists by name.
        """
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except OSError as e:
            raise usage.UsageError(f"cannot read --config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise usage.UsageError(f"--config {path} is not valid TOML: {e}") from None
        known = {name.rstrip("="): name.endswith("=") for name in self.longOpt}
        arguments = []
        lists: dict[str, list[str]] = {}
        for key, value in table.items():
            name = key.replace("_", "-")
            if name not in known or name in ("config", "help", "version"):
                raise usage.UsageError(f"unknown option {key!r} in {path}")
            takes_value = known[name]
            if not takes_value:
                if not isinstance(value, bool):
                    raise usage.UsageError(f"{key} in {path} must be true or false")
                if value:
                    arguments.append(f"--{name}")
            elif name in self.repeatable:
                items = value if isinstance(value, list) else [value]
                lists[name] = [_scalar(path, key, item) for item in items]
            elif isinstance(value, list):
                raise usage.UsageError(f"{key} in {path} takes one value, not a list")
            else:
                arguments.append(f"--{name}={_scalar(path, key, value)}")
        return arguments, lists

    def postOptions(self) -> None:
        """
        Under ``twistd -n``, do not write ``twistd.pid`` unless ``--pidfile``
        asks for it: a gate and a backend started from one directory would
        otherwise refuse to run side by side.
        """
        parent = getattr(self, "parent", None)
        if (
            parent is not None
            and parent.get("nodaemon")
            and parent.get("pidfile") == "twistd.pid"
            and not any(arg.startswith("--pidfile") for arg in sys.argv)
        ):
            parent["pidfile"] = ""


class _NamedCoerceParameter(usage.CoerceParameter):
    """
    A coerced parameter whose errors name the option and the value.
    """

    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None:
            raise usage.UsageError(f"--{parameterName} requires a value")
        try:
            self.options.opts[parameterName] = self.coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{parameterName} {value!r}: {e}") from None


def _config_path(arguments: list[str]) -> str | None:
    path = None
    for index, argument in enumerate(arguments):
        if argument == "--config" and index + 1 < len(arguments):
            path = arguments[index + 1]
        elif argument.startswith("--config="):
            path = argument.split("=", 1)[1]
    return path


def _scalar(path: str, key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise usage.UsageError(f"{key} in {path} must be a string or a number")
    return str(value)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def load_app_factory(spec: str, app_dir: str = ".") -> Callable[..., Any]:
    """
    Find the application callable named by ``--app``.

    :param spec: ``module.path:Name`` (``module.path.Name`` also works).
    :param app_dir: a directory searched for the module before the installed
        packages (as gunicorn and uvicorn do), the current one by default.
    :return: the callable.
    :raises usage.UsageError: naming what is wrong.
    """
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
    else:
        module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise usage.UsageError(f"--app must look like module.path:Name, not {spec!r}")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    if ":" not in spec and _is_module(spec):
        raise usage.UsageError(
            f"--app {spec!r} names a module; name the application in it: {spec}:Name"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise usage.UsageError(f"--app {spec}: cannot import {module_name!r}: {e}") from None
    except Exception as e:
        raise usage.UsageError(
            f"--app {spec}: importing {module_name!r} failed: {type(e).__name__}: {e}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise usage.UsageError(
                f"--app {spec}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise usage.UsageError(f"--app {spec}: {attribute!r} is not callable")
    return target
