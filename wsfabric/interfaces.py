"""
The interfaces of wsfabric.

Two of them are public contracts that applications see:

- :class:`IApplication`, which an application implements, and
- :class:`IFabric`, the cluster API an application calls.

The others are the seams between wsfabric's own parts. They exist so that the
same gate and backend logic runs in one process (standalone mode, with the
in-memory implementations of :mod:`wsfabric.cluster.memory`) and across a
cluster (Redis and AMP):

- :class:`IBus` and :class:`ISubscription`: publish/subscribe fan-out;
- :class:`IIndex`: the queryable index of clients, uids, groups and info,
  written only by the gate that owns a client;
- :class:`IGateControl`: the per-client commands a gate carries out for the
  clients it owns;
- :class:`IClientEvents`: the client events a gate hands to the backend side;
- :class:`IClientConnection`: one client's connection, as the gate sees it.
- :class:`IAuthenticator`: who a connecting client is (pluggable, ``--authenticator``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from wsfabric.message import ConnectRequest, SharedMessage, Variants

class IApplication(Interface):
    """
    A wsfabric application. The ``--app`` option names a callable that takes
    the :class:`IFabric` provider and returns a provider of this interface.

    Every hook may return a plain value, a ``Deferred``, or be an
    ``async def`` coroutine. The events of one client reach the application
    one at a time, in the order the client sent them, and ``on_close`` comes
    last. An exception raised by a hook is logged with its traceback and the
    client id; it never harms another client, the cluster links or the
    process.
    """

    def on_connect(client_id: str, request: ConnectRequest) -> Any:
        """
        A client has connected.

        :param client_id: the cluster-unique id of the new client.
        :param request: what the handshake knew (peer, path, params, headers,
            subprotocol, uid, claims).
        :raises wsfabric.errors.Reject: to refuse the client; it is closed
            with the given code and ``on_close`` is not called for it.
        """

    def on_message(client_id: str, message: str | bytes) -> Any:
        """
        A client sent a message.

        :param client_id: the sending client.
        :param message: ``str`` for a text frame, ``bytes`` for a binary one.
        """

    def on_close(client_id: str) -> Any:
        """
        A client has gone. By the time this runs the client has left its
        groups, its uid binding and info are dropped, and no query reports it.

        :param client_id: the client that closed.
        """


class IFabric(Interface):
    """
    The cluster API. Every method returns a ``Deferred`` (awaitable from
    ``async def`` hooks). The semantics are the same in standalone mode and
    in a cluster of any size:

    - sends to clients, uids or groups with nobody online are no-ops;
    - mutations of a client that is not online fail with
      :class:`wsfabric.errors.ClientNotFound`;
    - once a mutation's ``Deferred`` has fired, every later call from any
      node sees it;
    - messages from one sender to one group or client arrive in the order
      sent; delivery is at-most-once and detectable losses are counted;
    - when the cluster state cannot be reached, calls fail within a bounded
      time with :class:`wsfabric.errors.ClusterUnavailable`.

    A ``message`` is ``str`` (a text frame), ``bytes`` (a binary frame) or a
    :class:`wsfabric.message.Variants` (one form per kind of client, as the
    routing layer's pushes are; each client receives the form of its codec).
    """

    def send_to_client(client_id: str, message: str | bytes | Variants) -> Deferred[None]:
        """
        Send ``message`` to one client.
        """

    def send_to_clients(
        client_ids: Iterable[str], message: str | bytes | Variants
    ) -> Deferred[None]:
        """
        Send ``message`` to each of ``client_ids``.
        """

    def send_to_all(
        message: str | bytes, exclude: Iterable[str] = ()
    ) -> Deferred[None]:
        """
        Send ``message`` to every client of the cluster except those in
        ``exclude``.
        """

    def send_to_uid(uid: str, message: str | bytes | Variants) -> Deferred[None]:
        """
        Send ``message`` to every client bound to ``uid``.
        """

    def send_to_group(
        group: str, message: str | bytes, exclude: Iterable[str] = ()
    ) -> Deferred[None]:
        """
        Send ``message`` to every member of ``group`` except those in
        ``exclude``.
        """

    def bind_uid(client_id: str, uid: str) -> Deferred[None]:
        """
        Bind ``client_id`` to ``uid``, replacing an earlier binding.
        """

    def unbind_uid(client_id: str, uid: str) -> Deferred[None]:
        """
        Remove the binding of ``client_id`` to ``uid`` (a no-op when the
        client is bound to another uid or to none).
        """

    def is_uid_online(uid: str) -> Deferred[bool]:
        """
        Whether any client is bound to ``uid``.
        """

    def get_uid_by_client_id(client_id: str) -> Deferred[str | None]:
        """
        The uid ``client_id`` is bound to, or ``None``.
        """

    def get_client_ids_by_uid(uid: str) -> Deferred[list[str]]:
        """
        The clients bound to ``uid``.
        """

    def join_group(client_id: str, group: str) -> Deferred[None]:
        """
        Add ``client_id`` to ``group``.
        """

    def leave_group(client_id: str, group: str) -> Deferred[None]:
        """
        Remove ``client_id`` from ``group``.
        """

    def ungroup(group: str) -> Deferred[None]:
        """
        Make every member leave ``group``.
        """

    def get_client_count_by_group(group: str) -> Deferred[int]:
        """
        The number of clients in ``group``.
        """

    def get_uid_count_by_group(group: str) -> Deferred[int]:
        """
        The number of distinct uids bound to members of ``group``.
        """

    def get_client_ids_by_group(group: str) -> Deferred[list[str]]:
        """
        The clients in ``group``.
        """

    def get_uids_by_group(group: str) -> Deferred[list[str]]:
        """
        The distinct uids bound to members of ``group``.
        """

    def get_all_uids() -> Deferred[list[str]]:
        """
        Every uid that has at least one client bound to it.
        """

    def get_all_groups() -> Deferred[list[str]]:
        """
        Every group that has at least one member.
        """

    def get_all_client_count() -> Deferred[int]:
        """
        The number of clients online in the whole cluster.
        """

    def is_online(client_id: str) -> Deferred[bool]:
        """
        Whether ``client_id`` is online.
        """

    def close_client(
        client_id: str, code: int = 1000, reason: str = ""
    ) -> Deferred[None]:
        """
        Close a client's connection with ``code`` and ``reason`` (a no-op when
        it is not online).
        """

    def get_info(client_id: str) -> Deferred[dict[str, Any]]:
        """
        The info stored for ``client_id`` (``{}`` when none).
        """

    def set_info(client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Replace the info of ``client_id`` with ``info`` (a JSON-serialisable
        dict).
        """

    def update_info(client_id: str, partial: dict[str, Any]) -> Deferred[None]:
        """
        Merge the top-level keys of ``partial`` into the info of
        ``client_id``.
        """

    def call(service: str, route: str, data: Any = None, timeout: float = 10.0) -> Deferred[Any]:
        """
        Call ``route`` on one live backend of ``service`` (round robin) and
        return its handler's result. Fails with
        :class:`wsfabric.errors.RemoteError` carrying the remote code
        (``service_unavailable`` when the service has no live backend), or
        :class:`wsfabric.errors.RequestTimeout`. See docs/services.md.
        """

    def notify(service: str, route: str, data: Any = None) -> Deferred[None]:
        """
        Run ``route`` on one live backend of ``service`` without waiting for
        its result.
        """


class IPresenceListener(Interface):
    """
    Optionally provided by an application to hear presence events from the
    whole cluster (docs/services.md). Each event reaches one backend of each
    listening service; the events of one group (or uid) reach the same
    backend, in order, while the service's membership is stable.
    """

    def on_group_join(group: str, client_id: str) -> Any:
        """
        ``client_id`` joined ``group``.
        """

    def on_group_leave(group: str, client_id: str) -> Any:
        """
        ``client_id`` left ``group`` (by ``leave_group``, ``ungroup``, its
        close, or the sweep of its dead gate).
        """

    def on_uid_online(uid: str) -> Any:
        """
        The first client was bound to ``uid``.
        """

    def on_uid_offline(uid: str) -> Any:
        """
        The last client bound to ``uid`` went away (unbound, closed or
        swept).
        """


class ISubscription(Interface):
    """
    A subscription of one receiver to one bus channel. It stays wanted until
    cancelled: if the bus loses its connection, it restores the subscription
    when it reconnects.
    """

    channel = Attribute("The channel name (str), without any namespace prefix.")

    def when_ready() -> Deferred[None]:
        """
        Fires once the bus has confirmed the subscription, so that every
        publish accepted after that point is received; fails with
        :class:`wsfabric.errors.ClusterUnavailable` if the bus cannot confirm
        it within a bounded time (the subscription stays wanted). Each call
        returns a new ``Deferred``.
        """

    def cancel() -> Deferred[None]:
        """
        Stop receiving messages of this channel. Cancelling twice is harmless.
        """


class IBus(Interface):
    """
    Publish/subscribe fan-out between the nodes of one deployment. Channel
    names are wsfabric's own (``group:<name>``, ``uid:<uid>``, ``all``); an
    implementation adds its namespace prefix. Several subscriptions to one
    channel may coexist; each receives every message.

    Delivery is at-most-once and ordered per publisher and channel.
    """

    def publish(channel: str, payload: bytes) -> Deferred[None]:
        """
        Publish ``payload`` on ``channel``. Fires once the bus has accepted
        it, so that a later publish from the same node is ordered after it;
        fails with :class:`wsfabric.errors.ClusterUnavailable` if the bus
        cannot take it within a bounded time (it is then never sent later).
        """

    def subscribe(
        channel: str, receiver: Callable[[str, bytes], object]
    ) -> ISubscription:
        """
        Call ``receiver(channel, payload)`` for every message published on
        ``channel`` from the moment the subscription is ready.
        """


class IIndex(Interface):
    """
    The queryable index of the cluster: which clients are online and on which
    gate, their uid, groups and info. Only the gate that owns a client writes
    its entries (the write methods take that gate's id); every node may read.
    Every method returns a ``Deferred``; a write fires once every later read,
    from any node, sees it.
    """

    def add_client(gate_id: str, client_id: str) -> Deferred[None]:
        """
        Record that ``client_id`` is online on gate ``gate_id``.
        """

    def remove_client(gate_id: str, client_id: str) -> Deferred[None]:
        """
        Remove ``client_id`` with its uid binding, group memberships and info.
        """

    def bind_uid(gate_id: str, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind ``client_id`` to ``uid``, replacing any earlier binding.
        """

    def unbind_uid(gate_id: str, client_id: str) -> Deferred[None]:
        """
        Remove the uid binding of ``client_id``, if any.
        """

    def join_group(gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Add ``client_id`` to ``group``.
        """

    def leave_group(gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Remove ``client_id`` from ``group``.
        """

    def set_info(
        gate_id: str, client_id: str, info: dict[str, Any]
    ) -> Deferred[None]:
        """
        Replace the info of ``client_id`` (an empty dict removes it).
        """

    def is_online(client_id: str) -> Deferred[bool]:
        """
        Whether ``client_id`` is recorded as online.
        """

    def get_gate(client_id: str) -> Deferred[str | None]:
        """
        The id of the gate that owns ``client_id``, or ``None``.
        """

    def get_uid(client_id: str) -> Deferred[str | None]:
        """
        The uid of ``client_id``, or ``None``.
        """

    def get_info(client_id: str) -> Deferred[dict[str, Any]]:
        """
        The info of ``client_id`` (``{}`` when none).
        """

    def get_client_ids_by_uid(uid: str) -> Deferred[list[str]]:
        """
        The clients bound to ``uid``.
        """

    def get_client_ids_by_group(group: str) -> Deferred[list[str]]:
        """
        The members of ``group``.
        """

    def get_client_count_by_group(group: str) -> Deferred[int]:
        """
        The number of members of ``group``.
        """

    def get_uids_by_group(group: str) -> Deferred[list[str]]:
        """
        The distinct uids bound to members of ``group``.
        """

    def get_all_uids() -> Deferred[list[str]]:
        """
        Every uid bound to at least one client.
        """

    def get_all_groups() -> Deferred[list[str]]:
        """
        Every group with at least one member.
        """

    def get_all_client_count() -> Deferred[int]:
        """
        The number of clients online.
        """


class IGateControl(Interface):
    """
    The commands a gate carries out on the clients it owns. The fabric reaches
    the owning gate directly in standalone mode and over AMP in a cluster.
    Mutations of a client the gate does not hold fail with
    :class:`wsfabric.errors.ClientNotFound`; sends to such clients are no-ops.
    """

    def send_to_clients(
        client_ids: Sequence[str], message: str | bytes | Variants
    ) -> Deferred[None]:
        """
        Deliver ``message`` to each of ``client_ids`` that this gate holds.
        """

    def close_client(client_id: str, code: int, reason: str) -> Deferred[None]:
        """
        Close ``client_id`` with ``code`` and ``reason``.
        """

    def bind_uid(client_id: str, uid: str) -> Deferred[None]:
        """
        Bind ``client_id`` to ``uid``, replacing an earlier binding.
        """

    def unbind_uid(client_id: str, uid: str) -> Deferred[None]:
        """
        Unbind ``client_id`` from ``uid`` if it is bound to it.
        """

    def join_group(client_id: str, group: str) -> Deferred[None]:
        """
        Add ``client_id`` to ``group``.
        """

    def leave_group(client_id: str, group: str) -> Deferred[None]:
        """
        Remove ``client_id`` from ``group``.
        """

    def set_info(client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Replace the info of ``client_id``.
        """

    def update_info(client_id: str, partial: dict[str, Any]) -> Deferred[None]:
        """
        Merge ``partial`` into the info of ``client_id``.
        """


class IClientEvents(Interface):
    """
    Where a gate sends the events of its clients: the backend side, which
    runs the application. In standalone mode this is the dispatcher itself; in
    a cluster it is the AMP link to the client's backend.
    """

    def client_connected(client_id: str, request: ConnectRequest) -> Deferred[None]:
        """
        A client has connected. Fires once the application's ``on_connect``
        has finished; fails with :class:`wsfabric.errors.Reject` if the
        application refused the client, or with another error if
        ``on_connect`` raised.
        """

    def client_message(client_id: str, message: str | bytes) -> None:
        """
        A client sent ``message``; it is handed to the application after the
        client's earlier events.
        """

    def client_closed(client_id: str) -> None:
        """
        A client has gone; ``on_close`` runs after the client's earlier
        events.
        """


class IAuthenticator(Interface):
    """
    Decides who a connecting client is, from its handshake, before the
    WebSocket upgrade (``--authenticator module:Name`` names a callable,
    called with no arguments, that returns a provider). The built-in one
    verifies JWTs (:class:`wsfabric.gate.auth.JWTAuthenticator`).

    Transports call it with what the client presented: a WebSocket handshake
    gives its headers and query parameters; a token refresh gives
    ``params={"token": ...}`` and no headers.
    """

    def authenticate(headers: dict[str, str], params: dict[str, str]) -> Any:
        """
        :param headers: the request headers, names in lower case.
        :param params: the query parameters (first value of each).
        :return: ``(uid, claims)``, or a Deferred firing with it: the uid to
            bind (``None`` for an anonymous client) and the claims the
            application sees as ``request.claims``. A numeric ``exp`` claim
            (seconds since the epoch) is when the connection's credentials
            expire: it is closed with 4401 then unless refreshed.
        :raises wsfabric.errors.AuthenticationFailed: (or fail with it) to
            refuse the client with HTTP 401.
        """


class IClientConnection(Interface):
    """
    One client connection as the gate sees it: the WebSocket protocol (and,
    later, other transports) implement this.
    """

    client_id = Attribute("The client id (str) the gate assigned, or None before.")

    def deliver(message: str | bytes) -> None:
        """
        Queue ``message`` for the client, subject to the outbound byte bound.
        """

    def deliver_shared(shared: SharedMessage) -> None:
        """
        Queue a message shared by many recipients, framed once per transport.
        """

    def close(code: int, reason: str) -> None:
        """
        Close the connection with ``code`` and ``reason``.
        """

    def pause_reading() -> None:
        """
        Stop reading from the client (the backend side is behind).
        """

    def resume_reading() -> None:
        """
        Start reading from the client again.
        """
