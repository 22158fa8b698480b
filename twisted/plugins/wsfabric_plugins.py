"""
The ``twistd`` plugins of wsfabric: ``wsfabric`` (standalone),
``wsfabric-gate`` and ``wsfabric-backend``.

This file only names the modules that hold each role's ``Options`` and
``makeService``; ``twistd`` imports them when the role is run, so listing the
plugins stays cheap. (There is deliberately no ``__init__.py`` under
``twisted/``: this directory extends Twisted's own plugin package.)
"""

from twisted.application.service import ServiceMaker

wsfabric_standalone = ServiceMaker(
    "wsfabric",
    "wsfabric.standalone",
    "Run a wsfabric application standalone (clients, application and "
    "IFabric in one process; no Redis).",
    "wsfabric",
)

wsfabric_gate = ServiceMaker(
    "wsfabric gate",
    "wsfabric.gate.tap",
    "Run a wsfabric gate: hold client connections, route their events to "
    "backends over AMP, deliver fan-out from Redis.",
    "wsfabric-gate",
)

wsfabric_backend = ServiceMaker(
    "wsfabric backend",
    "wsfabric.backend.tap",
    "Run a wsfabric backend: host the application, reached by gates over AMP.",
    "wsfabric-backend",
)
