"""
Hand-written Autobahn/Twisted + txredisapi group server: the Redis fan-out baseline (P3).

Run two (or more) of these on different ports with one Redis; clients spread
over them form one group. A message from any client is PUBLISHed on one
Redis channel; every process is SUBSCRIBEd to it and sends what arrives to
all of its own clients, framed once with ``prepareMessage`` (the sender gets
its copy back through Redis like everyone else). This is the wsfabric stack
with no framework: what perf-baseline.md section e measured (43k deliveries/s,
window 1, 2 processes + Redis on one core, 500 clients).

    python bench/peers/twisted_redis_group.py --port 9001 --redis-port 6390
    python bench/peers/twisted_redis_group.py --port 9002 --redis-port 6390

The process subscribes first and listens only once Redis has confirmed the
subscription, so a port that accepts means a member that receives.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import install_epoll_reactor, listen, raise_nofile  # noqa: E402

install_epoll_reactor()

import txredisapi  # noqa: E402
from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import defer, protocol, reactor  # noqa: E402
from twisted.python import log  # noqa: E402

CHANNEL = b"bench:group"
# One byte in front of the payload keeps the frame type across Redis.
_TEXT, _BINARY = b"t", b"b"


class GroupProtocol(WebSocketServerProtocol):
    """A member of the group while open; its messages go to Redis."""

    factory: GroupFactory

    def onOpen(self) -> None:  # noqa: N802
        """Join the local members."""
        self.factory.clients.add(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        """Leave the local members (also called for failed handshakes)."""
        self.factory.clients.discard(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        """Publish ``payload`` to every process of the group."""
        self.factory.publish(payload, isBinary)


class GroupFactory(WebSocketServerFactory):
    """The local members, the publishing connection, and local fan-out."""

    protocol = GroupProtocol

    def __init__(self, publisher: txredisapi.BaseRedisProtocol) -> None:
        """:param publisher: a txredisapi connection for PUBLISH."""
        super().__init__()
        self.clients: set[GroupProtocol] = set()
        self.publisher = publisher

    def publish(self, payload: bytes, is_binary: bool) -> None:
        """PUBLISH the message; a failure is logged (the connection is never dropped)."""
        flag = _BINARY if is_binary else _TEXT
        self.publisher.publish(CHANNEL, flag + payload).addErrback(log.err, "PUBLISH failed")

    def deliver(self, message: bytes) -> None:
        """Frame a message from Redis once and queue it on every local member."""
        prepared = self.prepareMessage(message[1:], message[:1] == _BINARY)
        for client in self.clients:
            client.sendPreparedMessage(prepared)


class Subscriber(txredisapi.SubscriberProtocol):
    """The SUBSCRIBEd connection: hands every message to :attr:`on_message`."""

    on_message = staticmethod(lambda message: None)

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:  # noqa: N802
        """One message published on the group's channel."""
        self.on_message(message)


@defer.inlineCallbacks
def start(port: int, redis_port: int) -> defer.Deferred[None]:
    """Connect to Redis twice (PUBLISH, SUBSCRIBE), subscribe, then listen."""
    options = {"charset": None, "convertNumbers": False}  # payloads stay bytes
    publisher = yield txredisapi.Connection("127.0.0.1", redis_port, reconnect=False, **options)
    subscriber = yield protocol.ClientCreator(reactor, Subscriber, **options).connectTCP(
        "127.0.0.1", redis_port
    )
    yield subscriber.whenConnected()
    factory = GroupFactory(publisher)
    subscriber.on_message = factory.deliver
    yield subscriber.subscribe([CHANNEL])  # a list: bytes would be iterated
    listen(factory, port, run=False)


def main() -> None:
    """Parse the ports, connect, serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="WebSocket port on 127.0.0.1")
    parser.add_argument("--redis-port", type=int, required=True, help="Redis on 127.0.0.1")
    args = parser.parse_args()
    raise_nofile()

    def failed(failure: object) -> None:
        log.err(failure, "start-up failed")
        reactor.stop()

    reactor.callWhenRunning(lambda: start(args.port, args.redis_port).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    log.startLogging(sys.stderr, setStdout=False)
    main()
