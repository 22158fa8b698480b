"""
Run the whole test suite and end with one line ``N passed, N failed``.

Usage: ``python -m tests.run [trial arguments]`` (default: every test under
``tests``). Trial runs with the asyncio reactor, which the integration tests
need for their asyncio WebSocket clients; unit tests use no reactor at all.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

_SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)\s*$")


def summarise(line: str) -> tuple[int, int, int] | None:
    """
    :param line: a line of trial's output.
    :return: ``(passed, failed, skipped)`` if it is trial's final summary.
    """
    match = _SUMMARY.match(line)
    if match is None:
        return None
    counts = {
        key.strip(): int(value)
        for key, value in (item.split("=") for item in match.group(2).split(",") if "=" in item)
    }
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0)
    failed += counts.get("unexpectedSuccesses", 0)
    return passed, failed, counts.get("skips", 0)


def main(arguments: list[str]) -> int:
    """
    Run trial and print the summary line last.

    :return: the exit status: 0 only if nothing failed.
    """
    command = [
        sys.executable, "-m", "twisted.trial", "--reactor=asyncio", *(arguments or ["tests"])
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    summary = None
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        summary = summarise(line) or summary
    status = process.wait()
    elapsed = time.monotonic() - started
    if summary is None:
        # Trial itself broke down before it could count anything.
        passed, failed, skipped = 0, 1, 0
    else:
        passed, failed, skipped = summary
    if status != 0 and failed == 0:
        failed = 1
    print(f"{skipped} skipped; the suite took {elapsed:.0f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
