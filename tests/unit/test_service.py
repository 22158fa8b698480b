"""
The root service of every role.
"""

from __future__ import annotations

import gc

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsfabric.service import NodeService


class SlowStop(Service):
    def __init__(self) -> None:
        self.stopping: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stopping


class ShutdownTests(SynchronousTestCase):
    def test_no_garbage_collection_while_stopping(self) -> None:
        """
        While a node stops (closing thousands of clients) the cyclic garbage
        collector is off; it is on again once the node has stopped.
        """
        self.addCleanup(gc.enable)
        root = NodeService(Clock())
        child = SlowStop()
        child.setServiceParent(root)
        root.startService()
        self.assertTrue(gc.isenabled())
        stopped = root.stopService()
        self.assertFalse(gc.isenabled())
        self.assertNoResult(stopped)
        child.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertTrue(gc.isenabled())
