"""
:func:`connect`: the :class:`~wsfabric.interfaces.IFabric` of a cluster for
any Python process that is not part of it (a Django or Flask app, a cron
job, a notebook).

The process joins Redis only, as a client: it registers no lease, holds no
clients and sweeps nothing. Its fabric is the same
:class:`~wsfabric.fabric.Fabric` the backends use, with other collaborators:

- sends to groups, uids and everyone are one ``PUBLISH`` each, as on a
  backend;
- queries read the Redis index, as on a backend;
- per-client commands (``send_to_client``, ``bind_uid``, ``join_group``,
  ``set_info``, ``close_client``, ...) go to the gate that owns the client
  over its control channel (:mod:`wsfabric.gate.control`), signed with the
  cluster secret, and wait for the gate's answer: read-your-writes holds as
  for a backend. A gate that is not listening (dead) makes a mutation fail
  with :class:`~wsfabric.errors.ClientNotFound` and a send a no-op;
- :meth:`~wsfabric.interfaces.IFabric.call` and ``notify`` reach the
  services as from a backend (:mod:`wsfabric.rpc`).

Every method returns a Twisted ``Deferred`` on the running reactor. From
asyncio code use :func:`wsfabric.aio.connect`; from synchronous code (a WSGI
view) :func:`wsfabric.blocking.connect`. docs/services.md has the guide.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from wsfabric.errors import ClientNotFound, ClusterUnavailable, InvalidArgument
from wsfabric.fabric import Fabric
from wsfabric.gate.control import control_channel, control_reply_channel, encode_message
from wsfabric.ids import new_gate_id
from wsfabric.interfaces import IBus, IGateControl
from wsfabric.rpc import MAX_SKEW, cluster_rpc, seal, unseal

#: Seconds a per-client command waits for the owning gate's answer.
DEFAULT_TIMEOUT = 10.0


class RemoteGates:
    """
    Sends per-client commands to gates over their control channels and
    matches the answers.

    :param clock: for timeouts and message ages.
    :param bus: the cluster bus (it must offer ``publish_counted``).
    :param node_id: this process's id (its reply channel).
    :param secret: the cluster secret.
    :param timeout: seconds a command waits for its answer.
    """

    _log = Logger()

    def __init__(
        self, clock: IReactorTime, bus: IBus, node_id: str, secret: bytes, timeout: float
    ) -> None:
        self._clock = clock
        self._bus = bus
        self.node_id = node_id
        self._secret = secret
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Deferred[None], Any]] = {}
        self._replies: Any = None

    def locate(self, gate_id: str) -> IGateControl:
        """
        :return: the gate ``gate_id`` as an
            :class:`~wsfabric.interfaces.IGateControl` (whether it is alive
            is known when a command is sent).
        """
        return RemoteGate(self, gate_id)

    def start(self) -> Deferred[None]:
        """
        Subscribe to the reply channel (once); fires when it is ready.
        """
        if self._replies is None:
            self._replies = self._bus.subscribe(control_reply_channel(self.node_id), self._received)
        return self._replies.when_ready()

    def stop(self) -> None:
        """
        Unsubscribe; waiting commands fail with ClusterUnavailable.
        """
        if self._replies is not None:
            self._replies.cancel()
            self._replies = None
        pending, self._pending = self._pending, {}
        for deferred, timer in pending.values():
            if timer.active():
                timer.cancel()
            deferred.errback(ClusterUnavailable("the connection to the cluster was closed"))

    def command(
        self, gate_id: str, op: str, args: dict[str, Any], mutation: bool
    ) -> Deferred[None]:
        """
        Run ``op`` on gate ``gate_id``.

        :param mutation: whether a dead gate is ClientNotFound (else a no-op).
        """
        request_id = next(self._ids)
        body = {
            "id": request_id,
            "from": self.node_id,
            "op": op,
            "args": args,
            "ts": self._clock.seconds(),
        }
        try:
            payload = seal(self._secret, json.dumps(body, allow_nan=False).encode("utf-8"))
        except (TypeError, ValueError) as e:
            return fail(InvalidArgument(f"not JSON-serialisable: {e}"))
        result: Deferred[None] = Deferred()
        timer = self._clock.callLater(self.timeout, self._expire, request_id, gate_id)
        self._pending[request_id] = (result, timer)

        def sent(count: int) -> None:
            if count:
                return
            # No gate listens on that channel: it is gone, and so are its clients.
            entry = self._pending.pop(request_id, None)
            if entry is None:
                return
            if entry[1].active():
                entry[1].cancel()
            if mutation:
                entry[0].errback(ClientNotFound(str(args.get("client_id"))))
            else:
                entry[0].callback(None)

        def failed(failure: Any) -> None:
            entry = self._pending.pop(request_id, None)
            if entry is not None:
                if entry[1].active():
                    entry[1].cancel()
                entry[0].errback(failure)

        self.start().addCallback(
            lambda _: self._bus.publish_counted(control_channel(gate_id), payload)  # type: ignore[attr-defined]
        ).addCallbacks(sent, failed)
        return result

    def _expire(self, request_id: int, gate_id: str) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[0].errback(
                ClusterUnavailable(f"gate {gate_id} did not answer within {self.timeout:g} s")
            )

    def _received(self, channel: str, payload: bytes) -> None:
        try:
            reply = json.loads(unseal(self._secret, payload))
            if abs(self._clock.seconds() - float(reply["ts"])) > MAX_SKEW:
                raise ValueError("too old")
        except (ValueError, KeyError, TypeError) as e:
            self._log.warn("dropped a control reply: {why}", why=str(e))
            return
        entry = self._pending.pop(reply.get("id"), None)
        if entry is None:
            return
        deferred, timer = entry
        if timer.active():
            timer.cancel()
        error = reply.get("error")
        if not error:
            deferred.callback(None)
        elif error.get("code") == "not_found":
            deferred.errback(ClientNotFound(str(error.get("message"))))
        elif error.get("code") == "invalid":
            deferred.errback(InvalidArgument(str(error.get("message"))))
        else:
            deferred.errback(ClusterUnavailable(f"the gate failed: {error.get('message')}"))


@implementer(IGateControl)
class RemoteGate:
    """
    One gate, reached over its control channel.
    """

    def __init__(self, gates: RemoteGates, gate_id: str) -> None:
        self._gates = gates
        self.gate_id = gate_id

    def _do(self, op: str, mutation: bool = True, **args: Any) -> Deferred[None]:
        return self._gates.command(self.gate_id, op, args, mutation)

    def send_to_clients(self, client_ids: Any, message: Any) -> Deferred[None]:
        """
        Send ``message`` to the gate's ``client_ids``.
        """
        return self._do(
            "send_to_clients", False, client_ids=list(client_ids), message=encode_message(message)
        )

    def close_client(self, client_id: str, code: int, reason: str) -> Deferred[None]:
        """
        Close a client.
        """
        return self._do("close_client", False, client_id=client_id, code=code, reason=reason)

    def bind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind a uid.
        """
        return self._do("bind_uid", client_id=client_id, uid=uid)

    def unbind_uid(self, client_id: str, uid: str) -> Deferred[None]:
        """
        Unbind a uid.
        """
        return self._do("unbind_uid", client_id=client_id, uid=uid)

    def join_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Join a group.
        """
        return self._do("join_group", client_id=client_id, group=group)

    def leave_group(self, client_id: str, group: str) -> Deferred[None]:
        """
        Leave a group.
        """
        return self._do("leave_group", client_id=client_id, group=group)

    def set_info(self, client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Replace the info.
        """
        return self._do("set_info", client_id=client_id, info=info)

    def update_info(self, client_id: str, partial: dict[str, Any]) -> Deferred[None]:
        """
        Merge into the info.
        """
        return self._do("update_info", client_id=client_id, info=partial)


class RemoteFabric(Fabric):
    """
    The :class:`~wsfabric.fabric.Fabric` of an outside process; see
    :func:`connect`. Besides every IFabric method it has
    :meth:`when_ready` and :meth:`close`.
    """

    def __init__(self, redis: Any, gates: RemoteGates) -> None:
        super().__init__(redis.index, redis.bus, gates.locate)
        self.redis = redis
        self.gates = gates

    def when_ready(self, timeout: float = 10.0) -> Deferred[RemoteFabric]:
        """
        :return: fires with this fabric once Redis is connected and the
            reply channels are subscribed; fails with
            :class:`~wsfabric.errors.ClusterUnavailable` after ``timeout``.
        """
        connected = self.redis.when_connected(timeout=timeout)
        connected.addCallback(lambda _: self.gates.start())
        connected.addCallback(lambda _: self.rpc.start())
        return connected.addCallback(lambda _: self)

    def close(self) -> Deferred[None]:
        """
        Disconnect from Redis; calls still waiting fail.
        """
        self.gates.stop()
        stopping = self.rpc.stop()
        stopped = self.redis.stopService() if self.redis.running else succeed(None)
        return stopping.addCallback(lambda _: stopped).addCallback(lambda _: None)


def connect(
    redis_url: str,
    namespace: str = "wsfabric",
    cluster_secret: str | bytes | None = None,
    *,
    reactor: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    redis_timeout: float = 2.0,
) -> RemoteFabric:
    """
    An :class:`~wsfabric.interfaces.IFabric` of the cluster at ``redis_url``
    for this process. It starts connecting at once, on the running Twisted
    reactor; ``await fabric.when_ready()`` (or yield it) before the first
    call, or let early calls fail with ClusterUnavailable.

    :param redis_url: the cluster's Redis (``redis://`` or ``rediss://``).
    :param namespace: the cluster's ``--namespace``.
    :param cluster_secret: the cluster secret (``str`` or ``bytes``); by
        default ``$WSFABRIC_CLUSTER_SECRET``. Gates drop unsigned commands,
        so per-client commands and calls need it.
    :param reactor: the reactor (default: the global one).
    :param timeout: seconds a per-client command waits for its gate.
    :param redis_timeout: seconds a Redis command may take.
    :raises wsfabric.errors.ConfigurationError: for a bad URL or namespace.
    """
    import os

    from wsfabric.cluster.redis import RedisService

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if cluster_secret is None:
        cluster_secret = os.environ.get("WSFABRIC_CLUSTER_SECRET", "")
    secret = cluster_secret.encode("utf-8") if isinstance(cluster_secret, str) else cluster_secret
    node_id = new_gate_id()
    redis = RedisService(
        reactor,
        redis_url,
        node_id,
        namespace=namespace,
        command_timeout=redis_timeout,
        sweep=False,
    )
    gates = RemoteGates(reactor, redis.bus, node_id, secret, timeout)
    fabric = RemoteFabric(redis, gates)
    fabric.rpc = cluster_rpc(reactor, redis, node_id, secret)
    redis.startService()
    return fabric


__all__ = ["DEFAULT_TIMEOUT", "RemoteFabric", "RemoteGate", "RemoteGates", "connect"]
