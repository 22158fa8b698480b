"""
``twistd wsfabric-backend``: not yet available (the cluster roles land with
the cluster issue); running it reports that in one line.
"""

from twisted.python import usage


class Options(usage.Options):
    """
    Options of ``twistd wsfabric-backend``.
    """

    def parseOptions(self, options=None):
        """
        Report that the role is not available yet.
        """
        raise SystemExit("twistd wsfabric-backend: not yet available in this version")


def makeService(options):
    """
    Never reached: option parsing ends the command.
    """
    raise SystemExit("twistd wsfabric-backend: not yet available in this version")
