"""
python-socketio group server with ``AsyncRedisManager``: a P3 peer.

Run two (or more) of these on different ports with one Redis; clients spread
over them are in one room. Served by aiohttp (``async_mode="aiohttp"``), as
python-socketio documents for production asyncio deployments, with its
Redis client manager for several processes::

    python bench/peers/socketio_group.py --port 9001 --redis-port 6390

The load generator speaks the Socket.IO protocol over a plain WebSocket
(``/socket.io/?EIO=4&transport=websocket``): it sends ``40`` on open (connect
to the default namespace; the server's ``0{...}``/``40{...}`` replies are
ignored), then every message as an event ``42["m","<payload>"]``. The
handler emits it to the room; each process gets it back from Redis and
sends it to its own members, the sender's process included, so the sender
receives its copy once.

Fair configuration: no logging of packets, no CORS checks (same origin),
the Engine.IO heartbeat lengthened past the run (the load generator does not
answer Engine.IO pings), everything else python-socketio's defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import resource

import socketio
from aiohttp import web

ROOM = "g"


def build(redis_port: int) -> web.Application:
    """:return: the aiohttp application with the Socket.IO server attached."""
    manager = socketio.AsyncRedisManager(f"redis://127.0.0.1:{redis_port}/0")
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=None,
        ping_interval=300,
        ping_timeout=300,
        logger=False,
        engineio_logger=False,
    )

    @sio.event
    async def connect(sid: str, environ: dict, auth: object = None) -> None:
        await sio.enter_room(sid, ROOM)

    @sio.on("m")
    async def message(sid: str, data: object) -> None:
        await sio.emit("m", data, room=ROOM)

    app = web.Application()
    sio.attach(app)
    return app


def main() -> None:
    """Parse the ports and serve on 127.0.0.1 until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="WebSocket port on 127.0.0.1")
    parser.add_argument("--redis-port", type=int, required=True, help="Redis on 127.0.0.1")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.set_event_loop(asyncio.new_event_loop())
    web.run_app(
        build(args.redis_port),
        host="127.0.0.1",
        port=args.port,
        backlog=1024,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
