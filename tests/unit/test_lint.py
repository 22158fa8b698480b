"""
The code is ruff-clean (the rules are in pyproject.toml).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LintTests(SynchronousTestCase):
    def test_ruff(self) -> None:
        """
        ruff finds nothing in the package, tests, examples, plugins or bench.
        """
        ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
        if not os.path.exists(ruff):
            raise SkipTest("ruff is not installed (pip install -e '.[test]')")
        result = subprocess.run(
            [ruff, "check", "wsfabric", "tests", "examples", "twisted", "bench"],
            cwd=PROJECT, capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-5000:])
