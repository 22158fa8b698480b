"""
Build the C load generator ``bench/loadgen/wsload.c`` into ``bench/build/``.

The binary is rebuilt when it is missing or older than its source (or than
this file, which holds the compiler flags). It is compiled to a temporary
name and renamed, so a concurrent run never executes a half-written file.

    python bench/build_wsload.py [--force]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SOURCE = BENCH_DIR / "loadgen" / "wsload.c"
BUILD_DIR = BENCH_DIR / "build"
BINARY = BUILD_DIR / "wsload"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")
LIBS = ("-lm",)


class BuildError(RuntimeError):
    """The load generator could not be compiled."""


def is_stale(binary: Path = BINARY) -> bool:
    """
    :param binary: the compiled load generator.
    :return: whether it is missing or older than its source or build rules.
    """
    if not binary.exists():
        return True
    built = binary.stat().st_mtime
    return any(src.stat().st_mtime > built for src in (SOURCE, Path(__file__)))


def ensure_wsload(force: bool = False) -> Path:
    """
    Compile wsload when missing or stale.

    :param force: rebuild even if the binary is up to date.
    :return: the path of the binary.
    :raises BuildError: if no C compiler is found or compilation fails.
    """
    if not force and not is_stale():
        return BINARY
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BuildError("no C compiler found (install gcc or set CC)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = BINARY.with_name(f"{BINARY.name}.tmp{os.getpid()}")
    cmd = [compiler, *CFLAGS, "-o", str(tmp), str(SOURCE), *LIBS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    if proc.stderr.strip():
        # Warnings are bugs waiting to happen in a tool whose numbers we trust.
        print(proc.stderr, file=sys.stderr)
    os.replace(tmp, BINARY)
    return BINARY


def main() -> None:
    """Command line: build (or ``--force`` rebuild) and print the binary's path."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    try:
        print(ensure_wsload(force=args.force))
    except BuildError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
