"""
RedisService's settings that need no running Redis.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsfabric.errors import ConfigurationError


class ProbeIntervalTests(SynchronousTestCase):
    def service(self, **options):  # type: ignore[no-untyped-def]
        from wsfabric.cluster.redis import RedisService

        return RedisService(Clock(), "redis://127.0.0.1:1/0", "n", **options)

    def test_default_follows_a_short_lease(self) -> None:
        """
        The probe interval defaults to 1 s, or a quarter of the lease when
        that is shorter, so that ``--lease 2`` (which the node commands
        accept) does not stop every node at start-up.
        """
        self.assertEqual(self.service().probe_interval, 1.0)
        self.assertEqual(self.service(lease=2.0).probe_interval, 0.5)
        self.assertEqual(self.service(lease=10.0).probe_interval, 1.0)

    def test_explicit_interval_is_still_checked(self) -> None:
        """
        An explicit probe interval longer than a quarter of the lease is
        refused.
        """
        with self.assertRaises(ConfigurationError):
            self.service(lease=2.0, probe_interval=1.0)
