"""
Django Channels group server with channels_redis: a P3 peer, served by daphne.

Run two (or more) daphne processes on different ports with one Redis;
clients spread over them are in one Channels group::

    cd bench/peers && BENCH_REDIS_PORT=6390 BENCH_CHANNEL_LAYER=pubsub \\
        daphne -b 127.0.0.1 -p 9001 channels_group:application

Every client joins group ``g`` in ``connect``; a text message goes to the
group with ``group_send``, and each member's ``group_message`` handler sends
it on (the sender included, once).

``BENCH_CHANNEL_LAYER`` picks the layer: ``pubsub`` for
``channels_redis.pubsub.RedisPubSubChannelLayer`` (one Redis PUBLISH per group
send: the fast one) or ``core`` for ``channels_redis.core.RedisChannelLayer``
(the default in Channels' documentation). Django runs with its production
settings: ``DEBUG = False``, no database, no middleware, no sessions.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

GROUP = "g"

_LAYERS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        INSTALLED_APPS=["channels"],
        DATABASES={},
        MIDDLEWARE=[],
        ROOT_URLCONF=__name__,
        SECRET_KEY="bench-only-not-secret",
        USE_TZ=True,
        LOGGING_CONFIG=None,
        ASGI_APPLICATION=f"{__name__}.application",
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": _LAYERS[os.environ.get("BENCH_CHANNEL_LAYER", "pubsub")],
                "CONFIG": {
                    "hosts": [("127.0.0.1", int(os.environ.get("BENCH_REDIS_PORT", "6379")))]
                },
            }
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

urlpatterns: list[object] = []


class GroupConsumer(AsyncWebsocketConsumer):
    """A member of group ``g`` while connected; its messages go to the group."""

    async def connect(self) -> None:
        """Join the group, then accept."""
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        """Leave the group."""
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send the message to every member of the group."""
        await self.channel_layer.group_send(
            GROUP, {"type": "group.message", "text": text_data, "bytes": bytes_data}
        )

    async def group_message(self, event: dict) -> None:
        """One group message: on to this member's WebSocket."""
        await self.send(text_data=event["text"], bytes_data=event["bytes"])


application = ProtocolTypeRouter(
    {"websocket": URLRouter([path("ws", GroupConsumer.as_asgi())])}
)
