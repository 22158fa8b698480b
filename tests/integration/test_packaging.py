"""
The package as users install it: a wheel built from this tree, installed
(not editable) into a fresh virtual environment, gives twistd its three
plugins and ships the browser client.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from tests.integration.support import PROJECT, IntegrationTestCase, async_test


def run(argv: list[str], cwd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{argv} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


class WheelTests(IntegrationTestCase):
    timeout = 600

    @async_test(timeout=560)
    async def test_wheel_in_fresh_venv(self) -> None:
        """
        After a plain pip install of the wheel into a new venv, twistd lists
        wsfabric, wsfabric-gate and wsfabric-backend; the wheel has no
        __init__.py under twisted/ and carries wsfabric.js.
        """
        work = tempfile.mkdtemp(prefix="wsfabric-wheel-")
        self.addCleanup(shutil.rmtree, work, True)
        wheels = os.path.join(work, "wheels")
        await asyncio.to_thread(
            run,
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, PROJECT],
            work,
        )
        (wheel,) = glob.glob(os.path.join(wheels, "wsfabric-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/wsfabric_plugins.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("wsfabric/static/wsfabric.js", names)

        venv = os.path.join(work, "venv")
        await asyncio.to_thread(run, [sys.executable, "-m", "venv", venv], work)
        await asyncio.to_thread(
            run, [os.path.join(venv, "bin", "pip"), "install", "-q", wheel], work, 540
        )
        # Run from an empty directory, so nothing of the source tree is found.
        listing = await asyncio.to_thread(
            run, [os.path.join(venv, "bin", "twistd"), "--help"], work
        )
        for name in ("wsfabric ", "wsfabric-gate", "wsfabric-backend"):
            self.assertIn(name, listing.stdout)
        standalone = await asyncio.to_thread(
            run, [os.path.join(venv, "bin", "twistd"), "wsfabric", "--help"], work
        )
        self.assertIn("--max-message-size", standalone.stdout)
        for role in ("wsfabric-gate", "wsfabric-backend"):
            result = await asyncio.to_thread(
                subprocess.run,
                [os.path.join(venv, "bin", "twistd"), role, "--help"],
                cwd=work, capture_output=True, text=True, timeout=60,
            )
            self.assertNotIn("Traceback", result.stdout + result.stderr, role)
