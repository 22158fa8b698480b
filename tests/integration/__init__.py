"""
Integration tests: real ``twistd`` processes, a real ``redis-server``, and
WebSocket clients wsfabric did not write (the ``websockets`` package).

They run under trial with the asyncio reactor (``trial --reactor=asyncio``),
so that asyncio clients and Twisted share one loop.
"""
