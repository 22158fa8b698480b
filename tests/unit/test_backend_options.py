"""
``twistd wsfabric-backend`` options: where gates are told to dial.
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from wsfabric.backend.tap import Options, advertised_endpoint

BASE = ["--app", "tests.unit.apps:RecordingApp", "--cluster-secret", "s3cret-for-tests"]


class AdvertiseTests(SynchronousTestCase):
    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions([*BASE, *arguments])
        return options

    def test_interface_is_advertised(self) -> None:
        """
        A backend listening on one interface tells gates to dial it there.
        """
        self.assertEqual(
            advertised_endpoint("tcp:7001:interface=10.0.0.5"), "tcp:host=10.0.0.5:port=7001"
        )
        self.assertEqual(
            advertised_endpoint("tcp:7001:interface=\\:\\:1"), "tcp:host=\\:\\:1:port=7001"
        )

    def test_every_interface_needs_advertise(self) -> None:
        """
        ``interface=0.0.0.0`` names no address gates could dial: a one-line
        usage error asks for --advertise.
        """
        with self.assertRaises(SystemExit) as raised:
            self.parse("--listen", "tcp:7001:interface=0.0.0.0")
        self.assertIn("give --advertise", str(raised.exception))
        self.assertTrue(str(raised.exception).startswith("wsfabric: error: --listen"))
        options = self.parse(
            "--listen", "tcp:7001:interface=0.0.0.0", "--advertise", "tcp:host=10.0.0.5:port=7001"
        )
        self.assertEqual(options["advertise"], "tcp:host=10.0.0.5:port=7001")

    def test_bare_port_warns(self) -> None:
        """
        ``tcp:7000`` (as in the contract's example) still works on one
        machine, advertising loopback, but says that gates elsewhere cannot
        reach it.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        options = self.parse("--listen", "tcp:7000")
        self.assertEqual(options["advertise"], "tcp:host=127.0.0.1:port=7000")
        warnings = [e for e in logged if "every interface" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["listen"], "tcp:7000")

    def test_explicit_interface_does_not_warn(self) -> None:
        """
        The default, loopback-only listener says nothing.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.parse("--listen", "tcp:7000:interface=127.0.0.1")
        self.assertEqual([e for e in logged if "every interface" in e.get("log_format", "")], [])
