"""
wsfabric: real-time WebSocket systems on Twisted, from one process to a
cluster of gates and backends.

Applications implement :class:`wsfabric.interfaces.IApplication` and call the
cluster API :class:`wsfabric.interfaces.IFabric`; see the docs/ directory.
"""

__version__ = "0.1.0"
