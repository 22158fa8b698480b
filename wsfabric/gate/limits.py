"""
Connection and message limits of the client listener.

- **Per-address connection cap** (``--max-connections-per-ip``): a client
  over it gets HTTP 429 before the upgrade. The address is the TCP peer's,
  or, when the peer is a trusted reverse proxy (``--trusted-proxy``), the
  one it reports in ``X-Forwarded-For``. The header is ignored from anybody
  else: a client could otherwise claim any address and dodge the cap.
- **Per-uid connection cap** (``--max-connections-per-uid``): counts the
  connections whose uid authentication bound, on this gate; over it, HTTP
  429 before the upgrade.
- **Per-connection message rate** (``--rate-limit`` messages per second,
  ``--rate-burst``): a token bucket per connection; a client that sends
  faster is closed with 1008 "rate limit" and the drop is counted.

Every limit is off (0) by default: a gate behind a load balancer that is not
declared a trusted proxy sees one address for everybody, and a cap there
would refuse real users. docs/security.md lists the values to start from on
the public internet.

The objects here know nothing of WebSocket or HTTP, so that every transport
(WebSocket and raw TCP) applies the same limits: call
:meth:`ConnectionLimits.admit` when a client arrives, :meth:`Ticket.bind`
once its uid is known, :meth:`Ticket.release` when it goes, and
:meth:`TokenBucket.take` for each message.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from wsfabric.errors import ConfigurationError, LimitExceeded
from wsfabric.options import non_negative_float, non_negative_int

#: Options of the limits, for ``optParameters`` (``--trusted-proxy`` is
#: repeatable: each role's Options has an ``opt_trusted_proxy``).
LIMIT_PARAMETERS: list[list[Any]] = [
    [
        "max-connections-per-ip",
        None,
        0,
        "Most connections from one client address (0: no limit); over it, "
        "handshakes get HTTP 429.",
        non_negative_int,
    ],
    [
        "max-connections-per-uid",
        None,
        0,
        "Most connections of one authenticated uid on this gate (0: no limit); "
        "over it, handshakes get HTTP 429.",
        non_negative_int,
    ],
    [
        "rate-limit",
        None,
        0.0,
        "Messages per second a client may send on average (0: no limit); a "
        "faster client is closed with 1008 'rate limit'.",
        non_negative_float,
    ],
    [
        "rate-burst",
        None,
        0,
        "Messages a client may send at once above --rate-limit (0: one "
        "second's worth of --rate-limit).",
        non_negative_int,
    ],
]

TRUSTED_PROXY_HELP = (
    "Address or CIDR of a reverse proxy whose X-Forwarded-For header gives "
    "the client address (repeatable), e.g. 10.0.0.0/8."
)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_address(text: str) -> _Address | None:
    """
    :return: the IP address in ``text`` (a bare address, ``[v6]``,
        ``v4:port`` or ``[v6]:port``), or ``None``.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """
    The reverse proxies whose ``X-Forwarded-For`` is believed.

    :param specs: addresses or CIDR blocks, e.g. ``"127.0.0.1"``,
        ``"10.0.0.0/8"``, ``"::1"``.
    :raises ConfigurationError: if one is neither.
    """

    def __init__(self, specs: Iterable[str] = ()) -> None:
        networks: list[_Network] = []
        for spec in specs:
            try:
                networks.append(ipaddress.ip_network(spec.strip(), strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"not an address or CIDR block: {spec!r} (e.g. 10.0.0.1 or 10.0.0.0/8)"
                ) from None
        self.networks = networks

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: _Address) -> bool:
        """
        :return: whether ``address`` is one of the trusted proxies.
        """
        return any(address in network for network in self.networks)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """
        The address of the client behind the connection from ``peer``.

        The ``X-Forwarded-For`` list is read from the right (each proxy
        appends the address it received the request from); hops that are
        trusted proxies are skipped and the first one that is not is the
        client. An entry that is not an address ends the walk: the hop
        before it is used.

        :param peer: the TCP peer's address.
        :param forwarded_for: the ``X-Forwarded-For`` header, or ``None``.
        :return: the client's address as text.
        """
        if not forwarded_for or not self.networks:
            return peer
        hop = _parse_address(peer)
        if hop is None or not self.trusts(hop):
            return peer
        for entry in reversed(forwarded_for.split(",")):
            address = _parse_address(entry)
            if address is None:
                break
            hop = address
            if not self.trusts(address):
                break
        return str(hop)


@dataclass(frozen=True)
class LimitSettings:
    """
    The configured limits; 0 means no limit.

    :ivar per_ip: most connections from one client address.
    :ivar per_uid: most connections of one authenticated uid.
    :ivar rate: messages per second a client may send on average.
    :ivar burst: messages a client may send at once (its bucket's size).
    :ivar trusted: the proxies whose ``X-Forwarded-For`` is believed.
    """

    per_ip: int = 0
    per_uid: int = 0
    rate: float = 0.0
    burst: int = 0
    trusted: TrustedProxies = field(default_factory=TrustedProxies)

    @property
    def any_connection_cap(self) -> bool:
        """
        Whether a per-address or per-uid cap is set.
        """
        return bool(self.per_ip or self.per_uid)


def check_limit_options(options: usage.Options) -> LimitSettings:
    """
    :param options: parsed options with :data:`LIMIT_PARAMETERS` and the
        repeatable ``trusted-proxy``.
    :return: the limits they describe.
    :raises usage.UsageError: naming the bad option.
    """
    try:
        trusted = TrustedProxies(options.get("trusted-proxy") or ())
    except ConfigurationError as e:
        raise usage.UsageError(f"--trusted-proxy: {e}") from None
    rate = options["rate-limit"]
    burst = options["rate-burst"]
    if burst and not rate:
        raise usage.UsageError("--rate-burst needs --rate-limit")
    if rate and not burst:
        burst = max(1, math.ceil(rate))
    return LimitSettings(
        per_ip=options["max-connections-per-ip"],
        per_uid=options["max-connections-per-uid"],
        rate=rate,
        burst=burst,
        trusted=trusted,
    )


class Ticket:
    """
    One admitted connection's place in the counts of
    :class:`ConnectionLimits`; release it when the connection goes.

    :ivar address: the client's address.
    :ivar uid: the uid counted for it, or ``None``.
    """

    __slots__ = ("_limits", "address", "uid", "_released")

    def __init__(self, limits: ConnectionLimits, address: str) -> None:
        self._limits = limits
        self.address = address
        self.uid: str | None = None
        self._released = False

    def bind(self, uid: str) -> None:
        """
        Count the connection under ``uid`` as well.

        :raises LimitExceeded: if ``uid`` already has the most connections
            allowed (the connection is then not counted under it).
        """
        if self._released or self.uid is not None:
            return
        self._limits._count_uid(uid)
        self.uid = uid

    def release(self) -> None:
        """
        The connection has gone; harmless when called again.
        """
        if self._released:
            return
        self._released = True
        self._limits._uncount(self.address, self.uid)


class ConnectionLimits:
    """
    Counts connections by client address and by uid, and refuses those over
    the caps.

    :param per_ip: most connections per address (0: no limit).
    :param per_uid: most connections per uid (0: no limit).
    """

    def __init__(self, per_ip: int = 0, per_uid: int = 0) -> None:
        self.per_ip = per_ip
        self.per_uid = per_uid
        self._addresses: dict[str, int] = {}
        self._uids: dict[str, int] = {}

    def admit(self, address: str, uid: str | None = None) -> Ticket:
        """
        Admit a connection from ``address`` (and ``uid``, if already known).

        :return: the connection's ticket.
        :raises LimitExceeded: if a cap is reached; nothing is counted then.
        """
        if self.per_ip:
            count = self._addresses.get(address, 0)
            if count >= self.per_ip:
                raise LimitExceeded("too many connections from this address", "ip_limit")
            self._addresses[address] = count + 1
        ticket = Ticket(self, address)
        if uid is not None:
            try:
                ticket.bind(uid)
            except LimitExceeded:
                ticket.release()
                raise
        return ticket

    def connections_from(self, address: str) -> int:
        """
        :return: the connections counted for ``address`` (0 when the
            per-address cap is off: nothing is counted then).
        """
        return self._addresses.get(address, 0)

    def connections_of(self, uid: str) -> int:
        """
        :return: the connections counted for ``uid`` (0 when the per-uid cap
            is off).
        """
        return self._uids.get(uid, 0)

    def _count_uid(self, uid: str) -> None:
        if not self.per_uid:
            return
        count = self._uids.get(uid, 0)
        if count >= self.per_uid:
            raise LimitExceeded("too many connections for this user", "uid_limit")
        self._uids[uid] = count + 1

    def _uncount(self, address: str, uid: str | None) -> None:
        if self.per_ip:
            _decrement(self._addresses, address)
        if uid is not None and self.per_uid:
            _decrement(self._uids, uid)


def _decrement(counts: dict[str, int], key: str) -> None:
    # Entries go at zero, so the tables hold only live addresses and uids.
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)


class TokenBucket:
    """
    A token bucket: ``rate`` tokens a second, holding at most ``burst``;
    each message takes one.

    :param rate: tokens added per second.
    :param burst: the bucket's size (it starts full).
    :param clock: the time source.
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "_clock")

    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self) -> bool:
        """
        :return: whether a token was available (and is now taken).
        """
        now = self._clock.seconds()
        tokens = self._tokens + (now - self._stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
