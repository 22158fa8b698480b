"""
The Redis side of a wsfabric node: the only module that imports txredisapi.

One :class:`RedisService` per process holds two connections to Redis (one
for commands, one subscribed to channels) and offers

- :class:`RedisBus`, an :class:`~wsfabric.interfaces.IBus` on Redis pub/sub,
  with a liveness probe and gap reporting;
- :class:`RedisIndex`, an :class:`~wsfabric.interfaces.IIndex` on Redis sets
  and hashes that gives exactly the answers of
  :class:`~wsfabric.cluster.memory.MemoryIndex`;
- :class:`RedisRegistry`, the node registry with leases, data-loss detection
  and the sweeper that removes the clients of dead gates.

Wiring, in short::

    redis = RedisService(reactor, "redis://127.0.0.1:6379/0", node_id=gate_id)
    redis.add_listener(on_gap=..., on_data_lost=..., on_lease_lost=...)
    redis.setServiceParent(multi_service)          # or redis.startService()
    yield redis.when_connected(timeout=10)         # fail start-up if unreachable
    yield redis.registry.register(gate_id, "gate", {})
    gate = Gate(gate_id, redis.index, redis.bus, ...)

Importing this module imports txredisapi, which imports (and so installs) the
global reactor; import it only once ``twistd`` has installed its reactor
(inside ``makeService``), never from a plugin file.

Why txredisapi's protocols but not its connection handling
-----------------------------------------------------------
txredisapi 1.6.0 is the Redis library of wsfabric. Its protocol classes
(``txredisapi.RedisProtocol``: the RESP parser, in C when hiredis is
installed, and the connection's lifecycle) are used as they are. Its
*factories and connection handlers* are not, because they do what wsfabric
must not (see shared/research/reliability.md section 4.3): they queue
commands while disconnected and send them late, reconnect with a backoff of
up to 10 s, forget subscriptions after a reconnect, never notice a hung
server, and on a reply timeout they abort the connection and fail the
command, though the command can still run later. The 1.6.0 protocol reaches
into its factory only when given a password or a database, so this module
sends ``AUTH`` and ``SELECT`` itself and the protocols never touch a
factory. Connection handling is this module's own (:class:`_Link`): fail at
once while disconnected, a timeout on every command, jittered backoff capped
at ``max_reconnect_delay``, and a handshake (``AUTH``, ``SELECT``,
``SCRIPT LOAD``, ``TIME``) that must finish before a connection counts as
up. Twisted's ``ClientService`` was tried and not used: it leaves a
connection open when ``prepareConnection`` fails, and a connection lost
during preparation has no transition in its state machine.

Commands are not sent with ``execute_command``: it costs 40-60 µs per
command here (a slow encoder, three Deferreds per command, and a reply
queue whose ``pop(0)`` grows with the commands in flight, so a burst of
20,000 publishes took longer to issue than the timeout). Commands are
encoded here and their replies taken, in order, from ``replyReceived``.
The pure-Python parser (used without hiredis) resumes after every bulk
reply with ``callLater(0)`` on the *global* reactor and pauses the
transport meanwhile; here it keeps parsing in a loop instead. hiredis is
recommended for gates: the subscriber connection then receives about five
times more messages per second.

Commands never run late
-----------------------
Aborting the connection after a timeout does *not* keep a hung Redis from
running the command later: the bytes already sit in the server's socket
buffer, and a SIGSTOPped Redis reads and runs them after SIGCONT even though
the client has reset the connection (measured on Linux and Redis 7.0.15).
So every command with an effect (``PUBLISH`` included) is a Lua script whose
first argument is a deadline in Redis's own clock: the script compares it
with ``TIME`` and refuses to act once it has passed. The deadline is the
local timeout converted with the clock offset measured on connect (and
refreshed by the probe), accurate to half a round trip. A write whose
connection is lost is reported as failed only at its deadline, so a failure,
once reported, is final: the command can no longer run. Reads have no
effect and fail as soon as their connection is lost.

Key layout (``{ns}`` is the namespace, ``wsfabric`` by default)
------------------------------------------------------------------
============================== ===========================================
``{ns}:client:{cid}``          hash: ``gate``, ``uid``, ``info`` (JSON text)
``{ns}:cgroups:{cid}``         set: the groups of the client
``{ns}:gate:{gid}:clients``    set: the clients of gate ``gid``
``{ns}:uid:{uid}``             set: the clients bound to ``uid``
``{ns}:group:{g}``             set: the members of group ``g``
``{ns}:uids``                  set: the uids with at least one client
``{ns}:groups``                set: the groups with at least one member
``{ns}:clients``               set: every client id
``{ns}:nodes``                 hash: node id -> JSON ``{"role", "info"}``
``{ns}:lease:{node}``          string with a TTL: the node's lease
``{ns}:epoch``                 string: random, set once (``SET NX``); a new
                               value means Redis lost its data
``{ns}:sweeping``              set: dead gates whose clients are being removed
``{ns}:clock``                 hash: ``last``, ``since``: Redis's activity
                               clock (milliseconds of its ``TIME``)
============================== ===========================================

Channels: ``{ns}:ch:{channel}`` for bus channels, ``{ns}:probe:{node}`` for
the node's liveness probe. Scripts build key names from their arguments, so
this works with a single Redis server (with or without replicas), not with
Redis Cluster. Redis 5.0 or later is needed (scripts call ``TIME`` before
writing).

Leases, fencing and the sweeper
-------------------------------
Every index write is one atomic script that first checks the writing gate's
lease ``{ns}:lease:{gid}`` (else :class:`Fenced`) and that the client is
recorded for that gate (else :class:`~wsfabric.errors.ClientNotFound`).
``remove_client`` checks ownership only: removing its own client can never
resurrect anything, and a gate declared dead must still be able to clean up.

A gate is *declared dead* when a sweeper finds its lease gone: one script
removes its registry entry and adds it to ``{ns}:sweeping``, then batches of
at most ``sweep_batch`` clients are removed (``SPOP``, so concurrent sweepers
share the work and each client is reported once). A batch that finds the
lease back (the gate re-registered) stops the sweep.

Redis keeps its clock running while it hangs, so when a hung Redis resumes,
every lease has expired at once, and a sweep script that was already in its
buffer (sent before anyone noticed the hang, deadline not yet passed) would
declare every live gate dead. So the scripts keep Redis's own activity
clock, ``{ns}:clock`` (``last``: when a node last ran a probe, renew or
sweep; ``since``: the start of the current run of activity without a pause
longer than ``lease / 2``), and a sweep declares nobody dead until Redis has
been active without such a pause for a whole lease. By then every live node
has reconnected and renewed. The same holds after Redis restarts, or after a
partition that cut every node off.

The heartbeat renews each registered node's lease every ``lease / 3``; the
renew script tells apart

- ``ok``: renewed;
- ``renewed``: the lease had expired but nobody declared the node dead (its
  registry entry is still there), so the lease is simply re-created;
- ``lost``: the epoch key is missing or changed, so Redis lost its data; the
  script re-creates the lease and registry entry, and listeners hear
  ``on_data_lost()`` (a gate then rewrites its entries with
  :meth:`RedisIndex.resync_gate`);
- ``dead``: the registry entry is gone while the epoch is unchanged, so the
  node was declared dead; listeners hear ``on_lease_lost(node_id)``.
"""

from __future__ import annotations

import hashlib
import json
import random as _random
import re
import secrets
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import txredisapi
from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.errors import ClientNotFound, ClusterUnavailable, ConfigurationError
from wsfabric.interfaces import IBus, IIndex, ISubscription

Receiver = Callable[[str, bytes], object]

#: The roles a node registers with.
ROLES = ("gate", "backend")

# Channels per SUBSCRIBE command when resubscribing after a reconnect.
_SUBSCRIBE_BATCH = 500
# Clients per script when rewriting or removing many clients.
_WRITE_BATCH = 500
# An upper bound on sweep batches for one gate in one sweep (10 million
# clients at the default batch size): every loop here is bounded.
_MAX_SWEEP_BATCHES = 10_000
# A probe whose round trip took longer than this does not update the clock
# offset: the offset's error is half the round trip.
_OFFSET_MAX_RTT = 0.1

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
_ERROR_CODE = re.compile(r"WSFABRIC_([A-Z]+) ?(.*)", re.S)


# -- errors ---------------------------------------------------------------------


class Fenced(ClusterUnavailable):
    """
    An index write was refused because the writing gate no longer holds its
    lease: it was declared dead, or Redis lost its data and the lease has not
    been re-created yet. A gate declared dead must never write again under
    its id.

    :param gate_id: the gate whose write was refused.
    """

    def __init__(self, gate_id: str) -> None:
        super().__init__(gate_id)
        self.gate_id = gate_id

    def __str__(self) -> str:
        return (
            f"gate {self.gate_id!r} holds no lease (declared dead, or Redis lost "
            "its data); the write was refused"
        )


class _NoScript(ClusterUnavailable):
    """
    Redis does not know the script (``NOSCRIPT``); it was not run.
    """


def _map_error(error: BaseException) -> Exception:
    """
    Translate an error reply of Redis into wsfabric's exceptions.
    """
    text = str(error).strip()
    match = _ERROR_CODE.search(text)
    if match is not None:
        code, rest = match.groups()
        if code == "FENCED":
            return Fenced(rest)
        if code == "NOTFOUND":
            return ClientNotFound(rest)
        if code == "LATE":
            return ClusterUnavailable(
                "the command reached Redis after its deadline and was not run"
            )
    if text.startswith("NOSCRIPT"):
        return _NoScript(text)
    return ClusterUnavailable(f"Redis refused the command: {text}")


# -- the URL --------------------------------------------------------------------


def _redact(url: str) -> str:
    # Never show a password in a message or a log line.
    return re.sub(r"//[^@/?#]*@", "//***@", url) if isinstance(url, str) else repr(url)


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is and how to log in, parsed from a ``redis://`` or
    ``rediss://`` URL by :func:`parse_redis_url`.

    :ivar host: the host name or address.
    :ivar port: the TCP port.
    :ivar db: the database number.
    :ivar password: the password, or ``None``.
    :ivar username: the ACL user name, or ``None`` (the default user).
    :ivar tls: whether to connect with TLS (``rediss://``).
    :ivar ca_file: a PEM file with the CA certificate that signed the
        server's (``?ca=PATH``); ``None`` trusts the platform's CAs.
    """

    host: str
    port: int = 6379
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False
    ca_file: str | None = None

    def __str__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.password is not None:
            auth = (self.username or "") + ":***@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def endpoint(self, reactor: Any, timeout: float) -> IStreamClientEndpoint:
        """
        :param reactor: the reactor to connect with.
        :param timeout: the TCP connect timeout, in seconds.
        :return: the client endpoint for this address; with TLS, the server
            certificate is verified against ``host``.
        :raises ConfigurationError: if the CA file cannot be read.
        """
        tcp = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if not self.tls:
            return tcp
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        trust = None
        if self.ca_file:
            try:
                with open(self.ca_file, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            except Exception as e:
                raise ConfigurationError(
                    f"cannot read the Redis CA certificate {self.ca_file!r}: {e}"
                ) from None
        return wrapClientTLS(optionsForClientTLS(self.host, trustRoot=trust), tcp)


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse ``redis://[[user]:password@]host[:port][/db][?ca=PATH]`` (or
    ``rediss://`` for TLS).

    :param url: the URL.
    :return: the address.
    :raises ConfigurationError: with a one-line message naming the problem
        (the password is never shown).
    """
    usage = "expected redis://[:password@]host:port/db or rediss://..."
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"the Redis URL is empty; {usage}")
    shown = _redact(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ConfigurationError(f"bad Redis URL {shown}: bad port ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"bad Redis URL {shown}: the scheme must be redis:// or rediss://; {usage}"
        )
    host = parts.hostname
    if not host:
        raise ConfigurationError(f"bad Redis URL {shown}: it names no host; {usage}")
    if port == 0:
        raise ConfigurationError(f"bad Redis URL {shown}: port 0 is not a port")
    path = parts.path
    if path in ("", "/"):
        db = 0
    else:
        match = re.fullmatch(r"/(\d{1,6})", path)
        if match is None:
            raise ConfigurationError(
                f"bad Redis URL {shown}: the path must be /DB, a database number, not {path!r}"
            )
        db = int(match.group(1))
    if parts.fragment:
        raise ConfigurationError(f"bad Redis URL {shown}: it must not have a #fragment")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    if username is not None and password is None:
        raise ConfigurationError(
            f"bad Redis URL {shown}: give the password as :password@ or user:password@"
        )
    ca_file = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ca" and scheme == "rediss" and value:
            ca_file = value
        else:
            raise ConfigurationError(
                f"bad Redis URL {shown}: unknown or misplaced parameter {name!r} "
                "(only ?ca=PATH, with rediss://)"
            )
    return RedisAddress(
        host=host,
        port=port or 6379,
        db=db,
        password=password,
        username=username,
        tls=scheme == "rediss",
        ca_file=ca_file,
    )


# -- Lua ------------------------------------------------------------------------




def check_reachable(url: str, timeout: float = 5.0) -> None:
    """
    Check, blocking, that Redis at ``url`` answers: connect (with TLS for
    ``rediss://``), log in if the URL has a password, and PING. Meant for
    start-up, before the reactor runs, so that an unreachable Redis is a
    one-line error rather than a node that never becomes ready.

    :param url: the Redis URL.
    :param timeout: seconds for the whole check.
    :raises ConfigurationError: if the URL is not usable.
    :raises ClusterUnavailable: naming why Redis did not answer.
    """
    address = parse_redis_url(url)
    try:
        connection = socket.create_connection((address.host, address.port), timeout)
    except OSError as e:
        raise ClusterUnavailable(e.strerror or str(e)) from None
    try:
        connection.settimeout(timeout)
        if address.tls:
            context = ssl.create_default_context(cafile=address.ca_file)
            connection = context.wrap_socket(connection, server_hostname=address.host)
        commands: list[tuple[bytes, ...]] = []
        if address.password is not None:
            login = (address.username, address.password) if address.username else (
                address.password,
            )
            commands.append((b"AUTH", *(part.encode() for part in login)))
        commands.append((b"PING",))
        connection.sendall(b"".join(_resp(command) for command in commands))
        replies = connection.makefile("rb")
        for _ in commands:
            line = replies.readline()
            if not line:
                raise ClusterUnavailable("Redis closed the connection")
            if line.startswith(b"-"):
                raise ClusterUnavailable(line[1:].strip().decode("utf-8", "replace"))
    except (OSError, ssl.SSLError) as e:
        raise ClusterUnavailable(getattr(e, "strerror", None) or str(e)) from None
    finally:
        connection.close()


def _resp(command: tuple[bytes, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for part in command:
        parts.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(parts)
class _Script:
    """
    A Lua script, run with ``EVALSHA`` (``EVAL`` when Redis lost it).
    """

    __slots__ = ("name", "source", "sha")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


# Every write script starts with this: ARGV[1] is the deadline in Redis's
# clock (milliseconds), ARGV[2] the namespace.
_WRITE_PROLOGUE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if now_ms > tonumber(ARGV[1]) then
  return redis.error_reply('WSFABRIC_LATE')
end
local ns = ARGV[2]
"""

# What remove_client does, shared by every script that drops clients.
_LUA_LIB = """
-- Presence events (wsfabric.presence), published only while a node wants
-- them ({ns}:presence exists), in the order of the changes.
local quiet = false
local function presence(e, g, c, u)
  if quiet or redis.call('EXISTS', ns .. ':presence') == 0 then return end
  redis.call('PUBLISH', ns .. ':ch:presence', cjson.encode({e = e, g = g, c = c, u = u or nil}))
end
local function unbind(cid, ckey)
  local uid = redis.call('HGET', ckey, 'uid')
  if uid then
    local ukey = ns .. ':uid:' .. uid
    redis.call('SREM', ukey, cid)
    if redis.call('EXISTS', ukey) == 0 then
      redis.call('SREM', ns .. ':uids', uid)
      presence('offline', nil, nil, uid)
    end
    redis.call('HDEL', ckey, 'uid')
  end
  return uid
end
local function leave(cid, group, uid)
  local key = ns .. ':group:' .. group
  if redis.call('SREM', key, cid) == 1 then presence('leave', group, cid, uid) end
  if redis.call('EXISTS', key) == 0 then redis.call('SREM', ns .. ':groups', group) end
end
local function remove(cid, gid)
  local ckey = ns .. ':client:' .. cid
  local gkey = ns .. ':cgroups:' .. cid
  local groups = redis.call('SMEMBERS', gkey)
  local bound = redis.call('HGET', ckey, 'uid')
  for _, group in ipairs(groups) do leave(cid, group, bound) end
  local uid = unbind(cid, ckey)
  redis.call('DEL', gkey, ckey)
  redis.call('SREM', ns .. ':gate:' .. gid .. ':clients', cid)
  redis.call('SREM', ns .. ':clients', cid)
  return uid, groups
end
local function fenced(gid)
  return redis.call('EXISTS', ns .. ':lease:' .. gid) == 0
end
-- Redis's activity clock: returns since when Redis has run scripts without
-- a pause longer than gap_ms.
local function tick(gap_ms)
  local key = ns .. ':clock'
  local last = tonumber(redis.call('HGET', key, 'last') or '0')
  local since = tonumber(redis.call('HGET', key, 'since') or '0')
  if now_ms - last > tonumber(gap_ms) or since == 0 then
    since = now_ms
    redis.call('HSET', key, 'since', since)
  end
  redis.call('HSET', key, 'last', now_ms)
  return since
end
"""

# ARGV[3] gate id, ARGV[4] client id: fenced, and the client must be the gate's.
_OWNED = """
local gid, cid = ARGV[3], ARGV[4]
if fenced(gid) then return redis.error_reply('WSFABRIC_FENCED ' .. gid) end
local ckey = ns .. ':client:' .. cid
if redis.call('HGET', ckey, 'gate') ~= gid then
  return redis.error_reply('WSFABRIC_NOTFOUND ' .. cid)
end
"""


def _write_script(name: str, body: str, owned: bool = False) -> _Script:
    return _Script(name, _WRITE_PROLOGUE + _LUA_LIB + (_OWNED if owned else "") + body)


_PUBLISH = _Script(
    "publish",
    _WRITE_PROLOGUE + "return redis.call('PUBLISH', ARGV[3], ARGV[4])\n",
)

# ARGV[3] probe channel, ARGV[4] nonce, ARGV[5] the clock's gap (ms).
_PROBE = _write_script(
    "probe",
    "tick(ARGV[5])\nreturn {redis.call('PUBLISH', ARGV[3], ARGV[4]), now[1], now[2]}\n",
)

_ADD_CLIENT = _write_script(
    "add_client",
    """
local gid, cid = ARGV[3], ARGV[4]
if fenced(gid) then return redis.error_reply('WSFABRIC_FENCED ' .. gid) end
local ckey = ns .. ':client:' .. cid
local old = redis.call('HGET', ckey, 'gate')
if old then remove(cid, old) end
redis.call('HSET', ckey, 'gate', gid)
redis.call('SADD', ns .. ':gate:' .. gid .. ':clients', cid)
redis.call('SADD', ns .. ':clients', cid)
return 1
""",
)

_REMOVE_CLIENTS = _write_script(
    "remove_clients",
    """
local gid = ARGV[3]
local n = 0
for i = 4, #ARGV do
  local cid = ARGV[i]
  if redis.call('HGET', ns .. ':client:' .. cid, 'gate') == gid then
    remove(cid, gid)
    n = n + 1
  end
end
return n
""",
)

_BIND_UID = _write_script(
    "bind_uid",
    """
local uid = ARGV[5]
if redis.call('HGET', ckey, 'uid') ~= uid then
  unbind(cid, ckey)
  redis.call('HSET', ckey, 'uid', uid)
  redis.call('SADD', ns .. ':uid:' .. uid, cid)
  if redis.call('SADD', ns .. ':uids', uid) == 1 then presence('online', nil, nil, uid) end
end
return 1
""",
    owned=True,
)

_UNBIND_UID = _write_script("unbind_uid", "unbind(cid, ckey)\nreturn 1\n", owned=True)

_JOIN_GROUP = _write_script(
    "join_group",
    """
local group = ARGV[5]
redis.call('SADD', ns .. ':cgroups:' .. cid, group)
if redis.call('SADD', ns .. ':group:' .. group, cid) == 1 then
  presence('join', group, cid, redis.call('HGET', ckey, 'uid'))
end
redis.call('SADD', ns .. ':groups', group)
return 1
""",
    owned=True,
)

_LEAVE_GROUP = _write_script(
    "leave_group",
    """
if redis.call('SREM', ns .. ':cgroups:' .. cid, ARGV[5]) == 1 then
  leave(cid, ARGV[5], redis.call('HGET', ckey, 'uid'))
end
return 1
""",
    owned=True,
)

_SET_INFO = _write_script(
    "set_info",
    """
if ARGV[5] == '' then
  redis.call('HDEL', ckey, 'info')
else
  redis.call('HSET', ckey, 'info', ARGV[5])
end
return 1
""",
    owned=True,
)

# ARGV[4..]: one JSON record per client, {"c": cid, "u": uid, "g": [groups],
# "i": "info as JSON text"} (u, g, i optional). Each client is rewritten from
# scratch, so the result equals the gate's own state whatever Redis held.
_RESTORE_CLIENTS = _write_script(
    "restore_clients",
    """
local gid = ARGV[3]
if fenced(gid) then return redis.error_reply('WSFABRIC_FENCED ' .. gid) end
quiet = true  -- a rewrite of the gate's own state is no presence change
for i = 4, #ARGV do
  local r = cjson.decode(ARGV[i])
  local cid = r.c
  local ckey = ns .. ':client:' .. cid
  local old = redis.call('HGET', ckey, 'gate')
  if old then remove(cid, old) end
  redis.call('HSET', ckey, 'gate', gid)
  redis.call('SADD', ns .. ':gate:' .. gid .. ':clients', cid)
  redis.call('SADD', ns .. ':clients', cid)
  if type(r.u) == 'string' then
    redis.call('HSET', ckey, 'uid', r.u)
    redis.call('SADD', ns .. ':uid:' .. r.u, cid)
    redis.call('SADD', ns .. ':uids', r.u)
  end
  if type(r.g) == 'table' then
    for _, group in ipairs(r.g) do
      redis.call('SADD', ns .. ':cgroups:' .. cid, group)
      redis.call('SADD', ns .. ':group:' .. group, cid)
      redis.call('SADD', ns .. ':groups', group)
    end
  end
  if type(r.i) == 'string' then redis.call('HSET', ckey, 'info', r.i) end
end
return #ARGV - 3
""",
)

# Read-only scripts take the namespace as ARGV[1]: a late read is harmless.
_UIDS_BY_GROUP = _Script(
    "uids_by_group",
    """
local ns = ARGV[1]
local seen, out = {}, {}
for _, cid in ipairs(redis.call('SMEMBERS', ns .. ':group:' .. ARGV[2])) do
  local uid = redis.call('HGET', ns .. ':client:' .. cid, 'uid')
  if uid and not seen[uid] then
    seen[uid] = true
    out[#out + 1] = uid
  end
end
return out
""",
)

_LIVE_NODES = _Script(
    "live_nodes",
    """
local ns = ARGV[1]
local nodes = redis.call('HGETALL', ns .. ':nodes')
local out = {}
for i = 1, #nodes, 2 do
  if redis.call('EXISTS', ns .. ':lease:' .. nodes[i]) == 1 then
    out[#out + 1] = nodes[i]
    out[#out + 1] = nodes[i + 1]
  end
end
return out
""",
)

# ARGV[3] node id, ARGV[4] lease in ms, ARGV[5] registry entry (JSON),
# ARGV[6] a fresh epoch, used if Redis has none. Returns the epoch.
_REGISTER = _write_script(
    "register",
    """
local node = ARGV[3]
local epoch = redis.call('GET', ns .. ':epoch')
if not epoch then
  redis.call('SET', ns .. ':epoch', ARGV[6])
  epoch = ARGV[6]
end
redis.call('HSET', ns .. ':nodes', node, ARGV[5])
redis.call('SET', ns .. ':lease:' .. node, '1', 'PX', ARGV[4])
redis.call('SREM', ns .. ':sweeping', node)
return epoch
""",
)

# ARGV[3] node id, ARGV[4] lease in ms, ARGV[5] the epoch the node knows,
# ARGV[6] registry entry, ARGV[7] a fresh epoch, ARGV[8] the clock's gap.
# Returns {status, epoch}.
_RENEW = _write_script(
    "renew",
    """
tick(ARGV[8])
local node = ARGV[3]
local lease = ns .. ':lease:' .. node
local epoch = redis.call('GET', ns .. ':epoch')
if epoch ~= ARGV[5] then
  if not epoch then
    redis.call('SET', ns .. ':epoch', ARGV[7])
    epoch = ARGV[7]
  end
  redis.call('HSET', ns .. ':nodes', node, ARGV[6])
  redis.call('SET', lease, '1', 'PX', ARGV[4])
  redis.call('SREM', ns .. ':sweeping', node)
  return {'lost', epoch}
end
if redis.call('PEXPIRE', lease, ARGV[4]) == 1 then return {'ok', epoch} end
if redis.call('HEXISTS', ns .. ':nodes', node) == 1 then
  redis.call('SET', lease, '1', 'PX', ARGV[4])
  return {'renewed', epoch}
end
return {'dead', epoch}
""",
)

# ARGV[3] node id. A gate that still has clients is left to the sweepers.
_UNREGISTER = _write_script(
    "unregister",
    """
local node = ARGV[3]
redis.call('DEL', ns .. ':lease:' .. node)
redis.call('HDEL', ns .. ':nodes', node)
if redis.call('EXISTS', ns .. ':gate:' .. node .. ':clients') == 1 then
  redis.call('SADD', ns .. ':sweeping', node)
end
return 1
""",
)

# Declare dead every registered node whose lease is gone: a backend's entry
# is dropped; a gate's entry is dropped and the gate queued for sweeping.
# ARGV[3] the lease (ms), ARGV[4] the clock's gap (ms). Returns {active,
# marked}: nobody is declared dead (active = 0) until Redis has been active
# for a whole lease.
_SWEEP_MARK = _write_script(
    "sweep_mark",
    """
local marked = {}
if now_ms - tick(ARGV[4]) < tonumber(ARGV[3]) then return {0, marked} end
local nodes = redis.call('HGETALL', ns .. ':nodes')
for i = 1, #nodes, 2 do
  local node = nodes[i]
  if redis.call('EXISTS', ns .. ':lease:' .. node) == 0 then
    local ok, entry = pcall(cjson.decode, nodes[i + 1])
    redis.call('HDEL', ns .. ':nodes', node)
    if not (ok and type(entry) == 'table' and entry.role == 'backend') then
      redis.call('SADD', ns .. ':sweeping', node)
      marked[#marked + 1] = node
    end
  end
end
return {1, marked}
""",
)

# ARGV[3] gate id, ARGV[4] batch size. Returns {done, {{cid, uid, {groups}}...}}.
_SWEEP_BATCH = _write_script(
    "sweep_batch",
    """
local gid = ARGV[3]
if not fenced(gid) then
  redis.call('SREM', ns .. ':sweeping', gid)
  return {1, {}}
end
local set = ns .. ':gate:' .. gid .. ':clients'
local out = {}
for _, cid in ipairs(redis.call('SPOP', set, tonumber(ARGV[4]))) do
  if redis.call('HGET', ns .. ':client:' .. cid, 'gate') == gid then
    local uid, groups = remove(cid, gid)
    out[#out + 1] = {cid, uid, groups}
  end
end
if redis.call('EXISTS', set) == 0 then
  redis.call('SREM', ns .. ':sweeping', gid)
  return {1, out}
end
return {0, out}
""",
)

_SCRIPTS = (
    _PUBLISH,
    _PROBE,
    _ADD_CLIENT,
    _REMOVE_CLIENTS,
    _BIND_UID,
    _UNBIND_UID,
    _JOIN_GROUP,
    _LEAVE_GROUP,
    _SET_INFO,
    _RESTORE_CLIENTS,
    _UIDS_BY_GROUP,
    _LIVE_NODES,
    _REGISTER,
    _RENEW,
    _UNREGISTER,
    _SWEEP_MARK,
    _SWEEP_BATCH,
)


# -- protocols ------------------------------------------------------------------

_PURE_PARSER = txredisapi.RedisProtocol is txredisapi.BaseRedisProtocol


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc,name-defined]
    """
    txredisapi's protocol (hiredis or pure Python) made to answer in bytes,
    to use the injected reactor, and to report to its :class:`_Link`.
    """

    def __init__(self, link: _Link) -> None:
        # charset=None and convertNumbers=False: replies stay bytes (payloads
        # are binary, and "123" must not turn into an int).
        super().__init__(charset=None, convertNumbers=False)
        self.link = link
        # txredisapi binds callLater to the global reactor at import time.
        self.callLater = link.clock.callLater
        self.abort_reason: str | None = None
        # The commands sent, in order: Redis answers them in this order.
        self.calls: deque[_Call] = deque()
        # How many of them are still unsettled.
        self.pending = 0
        self._extra: bytes | None = None

    def connectionMade(self) -> None:
        """
        Switch off Nagle (commands are small and latency matters) and turn on
        keep-alive.
        """
        super().connectionMade()
        transport: Any = self.transport
        for _ in range(3):
            if transport is None:
                break
            if hasattr(transport, "setTcpNoDelay"):
                try:
                    transport.setTcpNoDelay(True)
                    transport.setTcpKeepAlive(True)
                except Exception:
                    pass
                break
            transport = getattr(transport, "transport", None)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """
        Tell the link, which settles what waits on this connection.
        """
        super().connectionLost(reason)
        self.link.lost(self, reason)

    def send(self, call: _Call, data: bytes) -> None:
        """
        Write one encoded command; its reply goes to ``call``.
        """
        self.calls.append(call)
        self.pending += 1
        self.transport.write(data)

    def replyReceived(self, reply: Any) -> None:
        """
        The reply to the oldest command in flight.
        """
        if self.calls:
            self.link.replied(self.calls.popleft(), reply)
        elif not isinstance(reply, txredisapi.ConnectionError):
            self.link._log.warn(
                "unexpected reply from Redis on the {link} connection: {reply!r}",
                link=self.link.name,
                reply=reply,
            )

    if _PURE_PARSER:

        def setLineMode(self, extra: bytes = b"") -> None:  # noqa: D102
            # Leftover bytes after a bulk reply: keep parsing in the loop of
            # dataReceived instead of a callLater(0) per reply.
            self.line_mode = 1
            if extra:
                self._extra = extra

        def dataReceived(self, data: bytes, unpause: bool = False) -> None:  # noqa: D102
            feed = super().dataReceived
            feed(data)
            while self._extra is not None and self.abort_reason is None:
                extra, self._extra = self._extra, None
                feed(extra)
            self._extra = None


class _SubscriberProtocol(_Protocol):
    """
    The protocol of the subscriber connection: pub/sub replies go to the
    link, command replies (``AUTH``, ``PING``) to the reply queue.
    """

    link: _SubscriberLink

    def replyReceived(self, reply: Any) -> None:
        """
        Dispatch one reply.
        """
        if type(reply) is list and len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                self.link.message(reply[1], reply[2])
                return
            if kind == b"subscribe" or kind == b"unsubscribe":
                self.link.acknowledged(kind, reply[1])
                return
        # A command's reply (AUTH, PING), or an error answering SUBSCRIBE
        # (an ACL refusal, say), which is logged as unexpected.
        super().replyReceived(reply)


def _encode(args: Sequence[Any]) -> bytes:
    """
    Encode one command in RESP (txredisapi's encoder costs several times
    more per command).
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif not isinstance(arg, bytes):
            arg = str(arg).encode("utf-8")
        out.append(b"$%d\r\n" % len(arg))
        out.append(arg)
        out.append(b"\r\n")
    return b"".join(out)


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Protocol:
        return self.link.protocol_class(self.link)


class _Call:
    """
    One command in flight.
    """

    __slots__ = ("proto", "deferred", "timer", "write", "name", "timeout", "lost", "done")

    def __init__(self, proto: _Protocol, name: str, write: bool, timeout: float) -> None:
        self.proto = proto
        self.deferred: Deferred[Any] = Deferred()
        self.timer: Any = None
        self.write = write
        self.name = name
        self.timeout = timeout
        self.lost = False
        self.done = False


# -- connections ------------------------------------------------------------------


class _Link:
    """
    One connection to Redis that reconnects by itself: a handshake before it
    counts as up, a timeout on every command, and commands refused at once
    while it is down.
    """

    _log = Logger()
    protocol_class: type[_Protocol] = _Protocol

    def __init__(self, service: RedisService, name: str) -> None:
        self.service = service
        self.name = name
        self.clock = service.reactor
        self.protocol: _Protocol | None = None
        self.ready = False
        self.ready_since: float | None = None
        self.running = False
        self.last_error: str | None = None
        self.readies = 0
        self._failures = 0
        self._retry: Any = None
        self._attempt: Deferred[Any] | None = None
        self._unsettled: set[_Call] = set()
        self._stop_waiters: list[Deferred[None]] = []

    # -- connecting

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        # Started again while the last connection is still closing: its
        # lost() schedules the reconnect.
        if self.protocol is None and self._attempt is None:
            self._connect()

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        try:
            attempt = self.service.endpoint.connect(_LinkFactory(self))
        except Exception:
            attempt = fail()
        self._attempt = attempt
        attempt.addCallbacks(self._made, self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self.running:
            self._check_stopped()
            return
        self._note_error(f"cannot connect: {failure.getErrorMessage()}")
        self._schedule_retry()

    def _made(self, proto: _Protocol) -> None:
        self._attempt = None
        self.protocol = proto
        if not self.running:
            # Stopped while connecting: lost() finishes the stop.
            self.abort(proto, "stopped")
            return
        try:
            shaking = self.handshake(proto)
        except Exception:
            shaking = fail()
        shaking.addCallbacks(
            self._handshaken,
            self._handshake_failed,
            callbackArgs=(proto,),
            errbackArgs=(proto,),
        )

    def _handshaken(self, _: object, proto: _Protocol) -> None:
        if proto is not self.protocol or proto.abort_reason is not None or not self.running:
            return
        self.ready = True
        self.ready_since = self.clock.seconds()
        self._failures = 0
        self.last_error = None
        self.readies += 1
        self._log.info(
            "Redis {link} connection up ({address})",
            link=self.name,
            address=str(self.service.address),
        )
        self.became_ready(proto, reconnected=self.readies > 1)

    def _handshake_failed(self, failure: Failure, proto: _Protocol) -> None:
        self._note_error(f"handshake failed: {failure.getErrorMessage()}")
        self.abort(proto, "handshake failed")

    def _note_error(self, error: str) -> None:
        # Log each distinct error once per outage, not once per attempt.
        if error != self.last_error:
            self._log.warn(
                "Redis {link} connection to {address}: {error}; retrying",
                link=self.name,
                address=str(self.service.address),
                error=error,
            )
        self.last_error = error

    def _schedule_retry(self) -> None:
        # Jittered exponential backoff: 50-100 ms after losing a good
        # connection, doubling per failed attempt, capped at max_delay.
        delay = min(self.service.max_reconnect_delay, 0.1 * 2 ** min(self._failures, 16))
        delay *= 0.5 + 0.5 * self.service.random.random()
        self._failures += 1
        self._retry = self.clock.callLater(delay, self._connect)

    def lost(self, proto: _Protocol, reason: Failure) -> None:
        """
        ``proto``'s connection is gone.
        """
        why = proto.abort_reason or reason.getErrorMessage()
        calls, proto.calls = proto.calls, deque()
        for call in calls:
            self._connection_lost(call, why)
        if proto is not self.protocol:
            self._check_stopped()
            return
        was_ready = self.ready
        self.protocol = None
        self.ready = False
        self.ready_since = None
        if was_ready:
            self._log.warn("Redis {link} connection lost: {why}", link=self.name, why=why)
            self.went_down(why)
        if self.running:
            self._schedule_retry()
        else:
            self._check_stopped()

    def abort(self, proto: _Protocol | None, reason: str) -> None:
        """
        Drop the connection at once (RST); it reconnects unless stopped.
        """
        proto = proto or self.protocol
        if proto is None or proto.transport is None:
            return
        if proto.abort_reason is None:
            proto.abort_reason = reason
        proto.transport.abortConnection()

    # -- stopping

    def stop(self) -> Deferred[None]:
        """
        Stop reconnecting; let the commands in flight settle, then close.
        Fires once closed and every command has settled.
        """
        self.running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        self._check_stopped()
        return waiter

    def _check_stopped(self) -> None:
        if self.running:
            return
        proto = self.protocol
        if proto is not None and not proto.pending:
            self.ready = False
            self.abort(proto, "stopped")
            return
        if proto is None and self._attempt is None and not self._unsettled:
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    # -- commands

    def execute(
        self,
        args: Sequence[Any],
        *,
        write: bool = False,
        timeout: float | None = None,
        proto: _Protocol | None = None,
    ) -> Deferred[Any]:
        """
        Send one command.

        :param args: the command and its arguments.
        :param write: whether the command has effects; a write whose
            connection is lost is reported failed only at its timeout (its
            deadline), when it can no longer run.
        :param timeout: seconds to wait for the reply (the service's command
            timeout by default); on a timeout the connection is aborted.
        :param proto: the connection to use (during the handshake).
        :return: the reply; fails with ClusterUnavailable (or a subclass, or
            ClientNotFound) at once when not connected, or on a timeout or an
            error reply.
        """
        if proto is None:
            # New commands are refused once stopping, while the ones in
            # flight drain.
            proto = self.protocol if self.ready and self.running else None
            if proto is None:
                return fail(self._unavailable())
        if timeout is None:
            timeout = self.service.command_timeout
        name = args[0] if isinstance(args[0], str) else args[0].decode()
        if proto.abort_reason is not None or proto.transport is None:
            return fail(self._unavailable())
        try:
            data = _encode(args)
        except Exception as e:
            return fail(ClusterUnavailable(f"cannot encode {name} for Redis: {e}"))
        call = _Call(proto, name, write, timeout)
        call.timer = self.clock.callLater(timeout, self._timed_out, call)
        self._unsettled.add(call)
        proto.send(call, data)
        return call.deferred

    def _unavailable(self) -> ClusterUnavailable:
        detail = f" ({self.last_error})" if self.last_error else ""
        if not self.running:
            detail = " (stopped)"
        return ClusterUnavailable(f"not connected to Redis at {self.service.address}{detail}")

    def _settle(self, call: _Call) -> None:
        call.done = True
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        call.proto.pending -= 1
        self._unsettled.discard(call)
        if not self.running:
            self._check_stopped()

    def replied(self, call: _Call, value: Any) -> None:
        """
        Redis answered ``call``.
        """
        if call.done:
            return
        self._settle(call)
        if isinstance(value, Exception):
            call.deferred.errback(_map_error(value))
        else:
            call.deferred.callback(value)

    def _connection_lost(self, call: _Call, why: str) -> None:
        if call.done:
            return
        if call.write:
            # Redis may still hold the command; it can run until its
            # deadline, so its failure is reported then (by the timer).
            call.lost = True
            return
        self._settle(call)
        call.deferred.errback(
            ClusterUnavailable(f"the connection to Redis was lost during {call.name} ({why})")
        )

    def _timed_out(self, call: _Call) -> None:
        call.timer = None
        if call.done:
            return
        self._settle(call)
        if call.lost:
            message = (
                f"the connection to Redis was lost during {call.name}; its "
                "deadline has passed, so it will not run"
            )
        else:
            message = f"Redis did not answer {call.name} within {call.timeout:g} s"
        call.deferred.errback(ClusterUnavailable(message))
        # The connection may be stuck (a hung Redis): drop it and reconnect.
        if not call.lost:
            self.abort(call.proto, f"{call.name} timed out")

    # -- hooks for the two kinds of link

    def handshake(self, proto: _Protocol) -> Deferred[Any]:
        raise NotImplementedError()

    def became_ready(self, proto: _Protocol, reconnected: bool) -> None:
        self.service._link_up(self, reconnected)

    def went_down(self, reason: str) -> None:
        self.service._link_down(self, reason)

    @inlineCallbacks
    def _login(self, proto: _Protocol) -> Any:
        address = self.service.address
        if address.password is not None:
            args = ["AUTH", address.password]
            if address.username:
                args.insert(1, address.username)
            yield self.execute(args, proto=proto)


class _CommandLink(_Link):
    """
    The connection for commands and scripts.
    """

    def __init__(self, service: RedisService) -> None:
        super().__init__(service, "command")
        self.offset_ms = 0.0

    @inlineCallbacks
    def handshake(self, proto: _Protocol) -> Any:
        yield self._login(proto)
        if self.service.address.db:
            yield self.execute(["SELECT", self.service.address.db], proto=proto)
        # Load every script now: a script error shows at once, and EVALSHA
        # finds them (EVAL remains the fallback after a SCRIPT FLUSH).
        yield gatherResults(
            [self.execute(["SCRIPT", "LOAD", s.source], proto=proto) for s in _SCRIPTS],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        # Measure the clock offset last, once Redis has answered: a TIME
        # sent to a hung Redis would come back with a skewed offset.
        sent = self.clock.seconds()
        now = yield self.execute(["TIME"], proto=proto)
        self.offset(sent, self.clock.seconds(), now[0], now[1])

    def offset(self, sent: float, received: float, seconds: Any, micros: Any) -> None:
        """
        Record the offset of Redis's clock from ours, measured by one round
        trip that read Redis's ``TIME``.
        """
        redis_ms = int(seconds) * 1000 + int(micros) / 1000
        self.offset_ms = redis_ms - (sent + received) * 500

    def run_script(
        self,
        script: _Script,
        args: Sequence[Any],
        *,
        write: bool,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Run ``script``. A write script gets its deadline and the namespace
        as ``ARGV[1]`` and ``ARGV[2]``, a read script the namespace as
        ``ARGV[1]``; ``args`` follow.
        """
        if not (self.ready and self.running):
            return fail(self._unavailable())
        if timeout is None:
            timeout = self.service.command_timeout
        end = self.clock.seconds() + timeout
        ns = self.service.namespace
        if write:
            argv: tuple[Any, ...] = (int(end * 1000 + self.offset_ms), ns, *args)
        else:
            argv = (ns, *args)
        running = self.execute(["EVALSHA", script.sha, 0, *argv], write=write, timeout=timeout)
        running.addErrback(self._eval, script, argv, write, end)
        return running

    def _eval(
        self, failure: Failure, script: _Script, argv: tuple[Any, ...], write: bool, end: float
    ) -> Deferred[Any]:
        failure.trap(_NoScript)
        remaining = end - self.clock.seconds()
        if remaining <= 0:
            return fail(ClusterUnavailable(f"Redis did not run {script.name} in time"))
        return self.execute(["EVAL", script.source, 0, *argv], write=write, timeout=remaining)


class _Channel:
    """
    One Redis channel wanted by the subscriber link.
    """

    __slots__ = ("subscriptions", "waiters", "confirmed")

    def __init__(self) -> None:
        self.subscriptions: list[RedisSubscription] = []
        self.waiters: list[tuple[RedisSubscription, Deferred[None], Any]] = []
        self.confirmed = False


class _SubscriberLink(_Link):
    """
    The subscribed connection: keeps the set of wanted channels and restores
    it after every reconnect.
    """

    protocol_class = _SubscriberProtocol

    def __init__(self, service: RedisService) -> None:
        super().__init__(service, "subscriber")
        self.channels: dict[bytes, _Channel] = {}
        # SUBSCRIBE/UNSUBSCRIBE sent and not yet acknowledged, per channel: a
        # channel is confirmed only when its last command was a SUBSCRIBE
        # and Redis has acknowledged everything sent for it.
        self._inflight: dict[bytes, int] = {}

    @inlineCallbacks
    def handshake(self, proto: _Protocol) -> Any:
        yield self._login(proto)
        # A hung Redis accepts TCP connections; only an answer proves it up.
        yield self.execute(["PING"], proto=proto)

    def became_ready(self, proto: _Protocol, reconnected: bool) -> None:
        names = list(self.channels)
        for start in range(0, len(names), _SUBSCRIBE_BATCH):
            self._send(proto, b"SUBSCRIBE", names[start : start + _SUBSCRIBE_BATCH])
        super().became_ready(proto, reconnected)

    def went_down(self, reason: str) -> None:
        self._inflight.clear()
        for channel in self.channels.values():
            channel.confirmed = False
        super().went_down(reason)

    def _send(self, proto: _Protocol, command: bytes, names: Sequence[bytes]) -> None:
        inflight = self._inflight
        for name in names:
            inflight[name] = inflight.get(name, 0) + 1
        proto.transport.write(_encode((command, *names)))

    # -- wanted channels

    def add(self, name: bytes, subscription: RedisSubscription) -> None:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = _Channel()
            if self.ready and self.protocol is not None:
                self._send(self.protocol, b"SUBSCRIBE", (name,))
        channel.subscriptions.append(subscription)

    def remove(self, name: bytes, subscription: RedisSubscription) -> None:
        channel = self.channels.get(name)
        if channel is None or subscription not in channel.subscriptions:
            return
        channel.subscriptions.remove(subscription)
        # A cancelled subscription needs no confirmation any more.
        keep = []
        for waiter in channel.waiters:
            if waiter[0] is subscription:
                self._resolve(waiter, None)
            else:
                keep.append(waiter)
        channel.waiters = keep
        if not channel.subscriptions:
            del self.channels[name]
            if self.ready and self.protocol is not None:
                self._send(self.protocol, b"UNSUBSCRIBE", (name,))

    def when_ready(self, name: bytes, subscription: RedisSubscription) -> Deferred[None]:
        channel = self.channels.get(name)
        if channel is None or subscription not in channel.subscriptions:
            return succeed(None)
        if channel.confirmed:
            return succeed(None)
        if not self.ready:
            return fail(self._unavailable())
        waiting: Deferred[None] = Deferred()
        timer = self.clock.callLater(self.service.command_timeout, self._expire, name, waiting)
        channel.waiters.append((subscription, waiting, timer))
        return waiting

    def _expire(self, name: bytes, waiting: Deferred[None]) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            channel.waiters = [w for w in channel.waiters if w[1] is not waiting]
        if not waiting.called:
            waiting.errback(
                ClusterUnavailable(
                    f"Redis did not confirm the subscription to {name.decode(errors='replace')}"
                    f" within {self.service.command_timeout:g} s (it stays wanted)"
                )
            )

    def _resolve(self, waiter: tuple[RedisSubscription, Deferred[None], Any], _: None) -> None:
        _, waiting, timer = waiter
        if timer is not None and timer.active():
            timer.cancel()
        if not waiting.called:
            waiting.callback(None)

    # -- replies

    def acknowledged(self, kind: bytes, name: bytes) -> None:
        left = self._inflight.get(name, 0) - 1
        if left > 0:
            self._inflight[name] = left
            return
        self._inflight.pop(name, None)
        channel = self.channels.get(name)
        if channel is None or kind != b"subscribe" or channel.confirmed:
            return
        channel.confirmed = True
        waiters, channel.waiters = channel.waiters, []
        for waiter in waiters:
            self._resolve(waiter, None)

    def message(self, name: bytes, payload: bytes) -> None:
        channel = self.channels.get(name)
        if channel is None:
            return
        for subscription in tuple(channel.subscriptions):
            try:
                subscription.receiver(subscription.channel, payload)
            except Exception:
                self._log.failure(
                    "bus receiver failed on channel {channel}", channel=subscription.channel
                )


# -- the service ------------------------------------------------------------------


class SweptClient(NamedTuple):
    """
    A client of a dead gate that a sweep removed.

    :ivar client_id: the client.
    :ivar gate_id: its gate.
    :ivar uid: the uid it was bound to, or ``None``.
    :ivar groups: the groups it was in.
    """

    client_id: str
    gate_id: str
    uid: str | None
    groups: tuple[str, ...]


def _restore_entry(record: ClientRecord) -> str:
    entry: dict[str, Any] = {"c": record.client_id}
    if record.uid is not None:
        entry["u"] = record.uid
    groups = list(record.groups or ())
    if groups:
        entry["g"] = groups
    if record.info:
        entry["i"] = json.dumps(record.info, separators=(",", ":"), allow_nan=False)
    return json.dumps(entry, separators=(",", ":"))


class ClientRecord(NamedTuple):
    """
    What a gate holds about one of its clients, for
    :meth:`RedisIndex.resync_gate`.

    :ivar client_id: the client.
    :ivar uid: its uid, or ``None``.
    :ivar groups: its groups.
    :ivar info: its info, or ``None``/``{}`` for none.
    """

    client_id: str
    uid: str | None = None
    groups: Iterable[str] = ()
    info: dict[str, Any] | None = None


_EVENTS = (
    "on_connected",
    "on_disconnected",
    "on_gap",
    "on_data_lost",
    "on_lease_lost",
    "on_swept",
)


class RedisService(Service):
    """
    The Redis connections of one node, with its bus, index and registry.

    Start it (``startService``, or as the child of a ``MultiService``) before
    use; every call fails at once with ClusterUnavailable while the needed
    connection is down.

    :param reactor: the reactor (TCP, time and name resolution).
    :param url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...``.
    :param node_id: this node's id (a gate id or a backend id); names its
        probe channel.
    :param namespace: the prefix of every key and channel
        (``[A-Za-z0-9_.-]{1,64}``).
    :param command_timeout: seconds a command may take (default 2).
    :param connect_timeout: seconds a TCP connect may take (default: the
        command timeout).
    :param probe_interval: seconds between liveness probes (default 1, or a
        quarter of the lease when that is shorter).
    :param probe_timeout: seconds a probe may take to come back (default 2).
    :param max_reconnect_delay: the cap of the reconnect backoff (default 2).
    :param lease: seconds a registered node's lease lasts (default 5); it is
        renewed every third of that. Use one value across the deployment:
        it also sets how long Redis must have been active before a sweep
        declares anyone dead. ``probe_interval`` must be at most a quarter
        of it (the probes keep Redis's activity clock ticking).
    :param sweep_interval: seconds between sweeps (default ``lease / 2``).
    :param sweep_batch: most clients one sweep script removes (default 1000).
    :param sweep: whether this node runs the periodic sweeper (default yes).
    :param random: the source of jitter (a ``random.Random``).

    :ivar bus: the :class:`RedisBus`.
    :ivar index: the :class:`RedisIndex`.
    :ivar registry: the :class:`RedisRegistry`.
    :ivar gaps: how many pub/sub gaps (subscriber connection lost or probe
        failed) there have been.
    :ivar reconnects: how many times a connection came back after being up.
    :ivar last_probe_ok: when (reactor seconds) a probe last came back, or
        ``None``.
    :ivar probe_rtt: the round trip of the last probe, in seconds.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        node_id: str,
        *,
        namespace: str = "wsfabric",
        command_timeout: float = 2.0,
        connect_timeout: float | None = None,
        probe_interval: float | None = None,
        probe_timeout: float = 2.0,
        max_reconnect_delay: float = 2.0,
        lease: float = 5.0,
        sweep_interval: float | None = None,
        sweep_batch: int = 1000,
        sweep: bool = True,
        random: _random.Random | None = None,
    ) -> None:
        self.address = parse_redis_url(url)
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            raise ConfigurationError(
                f"bad namespace {namespace!r}: use 1-64 letters, digits, '_', '.' or '-'"
            )
        if not isinstance(node_id, str) or not node_id:
            raise ConfigurationError("the Redis node id must be a non-empty string")
        if probe_interval is None:
            # A short lease (``--lease 2``) needs faster probes: they keep
            # Redis's activity clock ticking (see the module docstring).
            probe_interval = min(1.0, lease / 4) if lease > 0 else 1.0
        for name, value in (
            ("command_timeout", command_timeout),
            ("probe_interval", probe_interval),
            ("probe_timeout", probe_timeout),
            ("max_reconnect_delay", max_reconnect_delay),
            ("lease", lease),
        ):
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, not {value!r}")
        if sweep_batch < 1:
            raise ConfigurationError(f"sweep_batch must be at least 1, not {sweep_batch!r}")
        if probe_interval > lease / 4:
            raise ConfigurationError(
                f"probe_interval ({probe_interval:g} s) must be at most a quarter of the "
                f"lease ({lease:g} s)"
            )
        self.reactor = reactor
        self.node_id = node_id
        self.namespace = namespace
        self.command_timeout = command_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.max_reconnect_delay = max_reconnect_delay
        self.random = random or _random.Random()
        self.endpoint = self.address.endpoint(
            reactor, connect_timeout if connect_timeout is not None else command_timeout
        )
        self.gaps = 0
        self.reconnects = 0
        self.last_probe_ok: float | None = None
        self.probe_rtt: float | None = None
        self._listeners: list[dict[str, Callable[..., object]]] = []
        self._connected_waiters: list[Deferred[None]] = []
        self._probe_loop: task.LoopingCall | None = None
        self._probe: tuple[bytes, float, Any] | None = None
        self.command = _CommandLink(self)
        self.subscriber = _SubscriberLink(self)
        self._probe_name = f"{namespace}:probe:{node_id}".encode()
        self._probe_subscription = RedisSubscription(
            self.subscriber, self._probe_name, "probe", self._probe_received
        )
        self.subscriber.add(self._probe_name, self._probe_subscription)
        self.bus = RedisBus(self)
        self.index = RedisIndex(self)
        self.registry = RedisRegistry(
            self,
            lease=lease,
            sweep_interval=sweep_interval if sweep_interval is not None else lease / 2,
            sweep_batch=sweep_batch,
            sweep=sweep,
        )

    # -- lifecycle

    def startService(self) -> None:
        """
        Connect (and keep reconnecting), probe, heartbeat and sweep.
        """
        super().startService()
        self.command.start()
        self.subscriber.start()
        loop = self._probe_loop = task.LoopingCall(self._probe_tick)
        loop.clock = self.reactor
        loop.start(self.probe_interval, now=False)
        self.registry._start()

    def stopService(self) -> Deferred[None]:
        """
        Stop probing, heartbeating and sweeping; let the commands in flight
        settle; close both connections. Registered nodes are not
        unregistered (call :meth:`RedisRegistry.unregister` first for a
        graceful exit). Fires once everything has stopped.
        """
        super().stopService()
        if self._probe_loop is not None and self._probe_loop.running:
            self._probe_loop.stop()
        self._probe_loop = None
        self._clear_probe()
        stopped = [self.registry._stop(), self.command.stop(), self.subscriber.stop()]
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.errback(ClusterUnavailable("the Redis service was stopped"))
        return gatherResults(stopped, consumeErrors=True).addCallback(lambda _: None)

    @property
    def connected(self) -> bool:
        """
        Whether both connections are up.
        """
        return self.command.ready and self.subscriber.ready

    def healthy(self) -> bool:
        """
        :return: whether a probe came back recently (within one probe
            interval plus the probe timeout): what ``/health/ready`` needs.
        """
        if self.last_probe_ok is None or not self.connected:
            return False
        age = self.reactor.seconds() - self.last_probe_ok
        return age <= self.probe_interval + self.probe_timeout

    def when_connected(self, timeout: float | None = None) -> Deferred[None]:
        """
        :param timeout: seconds to wait, or ``None`` to wait as long as the
            service runs.
        :return: fires once both connections are up; fails with
            ClusterUnavailable naming the last connection error after
            ``timeout``.
        """
        if self.connected:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._connected_waiters.append(waiting)
        if timeout is not None:
            timer = self.reactor.callLater(timeout, self._connect_timed_out, waiting, timeout)
            waiting.addBoth(_cancel_timer, timer)
        return waiting

    def _connect_timed_out(self, waiting: Deferred[None], timeout: float) -> None:
        if waiting in self._connected_waiters:
            self._connected_waiters.remove(waiting)
        error = self.command.last_error or self.subscriber.last_error or "no answer"
        waiting.errback(
            ClusterUnavailable(
                f"could not reach Redis at {self.address} within {timeout:g} s: {error}"
            )
        )

    # -- listeners

    def add_listener(self, **callbacks: Callable[..., object]) -> Callable[[], None]:
        """
        Register callbacks for the events of this node's Redis side. Each is
        optional; an exception in one is logged.

        - ``on_connected(link, reconnected)``: connection ``link``
          (``"command"`` or ``"subscriber"``) is up; ``reconnected`` is
          false the first time.
        - ``on_disconnected(link, reason)``: connection ``link`` went down.
        - ``on_gap(reason)``: pub/sub messages may have been lost (the
          subscriber connection was lost or the probe failed); the bus
          resubscribes by itself.
        - ``on_data_lost()``: Redis lost its data; leases and registry
          entries are already re-created; a gate must rewrite its clients
          (:meth:`RedisIndex.resync_gate`).
        - ``on_lease_lost(node_id)``: ``node_id`` was declared dead; a gate
          must close its clients and never write under that id again; a
          backend may simply register again.
        - ``on_swept(removed)``: a sweep removed the clients of dead gates
          (a list of :class:`SweptClient`), for presence events.

        :return: a callable that removes these callbacks.
        """
        unknown = set(callbacks) - set(_EVENTS)
        if unknown:
            raise TypeError(f"unknown Redis events: {', '.join(sorted(unknown))}")
        entry = dict(callbacks)
        self._listeners.append(entry)

        def remove() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)

        return remove

    def _emit(self, event: str, *args: object) -> None:
        for entry in tuple(self._listeners):
            callback = entry.get(event)
            if callback is None:
                continue
            try:
                callback(*args)
            except Exception:
                self._log.failure("Redis listener {event} failed", event=event)

    # -- link events

    def _link_up(self, link: _Link, reconnected: bool) -> None:
        if reconnected:
            self.reconnects += 1
        self._emit("on_connected", link.name, reconnected)
        if link is self.command:
            self.registry._command_up()
        if self.connected:
            waiters, self._connected_waiters = self._connected_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _link_down(self, link: _Link, reason: str) -> None:
        self._emit("on_disconnected", link.name, reason)
        if link is self.subscriber:
            self._clear_probe()
            if self.running:
                self.gaps += 1
                self._log.warn(
                    "Redis pub/sub gap #{gaps}: {reason}; messages published until "
                    "the subscriptions are restored are lost",
                    gaps=self.gaps,
                    reason=reason,
                )
                self._emit("on_gap", reason)

    # -- the liveness probe

    def _probe_tick(self) -> None:
        if self._probe is not None:
            return
        sub = self.subscriber
        if not sub.ready or sub.ready_since is None:
            return
        now = self.reactor.seconds()
        channel = sub.channels.get(self._probe_name)
        if channel is None or not channel.confirmed:
            if now - sub.ready_since > self.probe_timeout:
                sub.abort(None, "Redis did not confirm the probe subscription")
            return
        if not self.command.ready:
            return
        nonce = b"%016x" % self.random.getrandbits(64)
        timer = self.reactor.callLater(self.probe_timeout, self._probe_expired, nonce)
        self._probe = (nonce, now, timer)
        published = self.command.run_script(
            _PROBE,
            (self._probe_name, nonce, self.registry.clock_gap_ms),
            write=True,
            timeout=self.probe_timeout,
        )
        published.addCallbacks(self._probe_published, _ignore, callbackArgs=(nonce, now))

    def _probe_published(self, reply: Any, nonce: bytes, sent: float) -> None:
        received = self.reactor.seconds()
        receivers, seconds, micros = reply
        if received - sent <= _OFFSET_MAX_RTT:
            self.command.offset(sent, received, seconds, micros)
        if receivers == 0 and self._probe is not None and self._probe[0] == nonce:
            self._probe_failed("the probe reached Redis but this node was not subscribed")

    def _probe_received(self, channel: str, payload: bytes) -> None:
        probe = self._probe
        if probe is None or probe[0] != payload:
            return
        now = self.reactor.seconds()
        self._clear_probe()
        self.last_probe_ok = now
        self.probe_rtt = now - probe[1]

    def _probe_expired(self, nonce: bytes) -> None:
        if self._probe is not None and self._probe[0] == nonce:
            self._probe = (nonce, self._probe[1], None)
            self._probe_failed(f"no probe came back within {self.probe_timeout:g} s")

    def _probe_failed(self, reason: str) -> None:
        self._clear_probe()
        self._log.warn("Redis liveness probe failed: {reason}", reason=reason)
        # Both connections go to the same Redis: treat both as dead.
        self.subscriber.abort(None, "liveness probe failed: " + reason)
        self.command.abort(None, "liveness probe failed: " + reason)

    def _clear_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and probe[2] is not None and probe[2].active():
            probe[2].cancel()


def _cancel_timer(result: object, timer: Any) -> object:
    if timer.active():
        timer.cancel()
    return result


def _ignore(failure: Failure) -> None:
    return None


def _none(_: object) -> None:
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _texts(values: Iterable[Any]) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


# -- the bus ------------------------------------------------------------------------


@implementer(ISubscription)
class RedisSubscription:
    """
    One receiver subscribed to one channel of a :class:`RedisBus`.

    :ivar channel: the channel, without the namespace prefix.
    :ivar receiver: the callable that receives ``(channel, payload)``.
    """

    __slots__ = ("_link", "_name", "channel", "receiver", "cancelled")

    def __init__(self, link: _SubscriberLink, name: bytes, channel: str, receiver: Receiver):
        self._link = link
        self._name = name
        self.channel = channel
        self.receiver = receiver
        self.cancelled = False

    def when_ready(self) -> Deferred[None]:
        """
        Fires once Redis has confirmed the subscription on the current
        connection; fails with ClusterUnavailable at once while the
        subscriber connection is down, or after the command timeout (the
        subscription stays wanted and is restored on reconnect). Fires at
        once for a cancelled subscription.
        """
        if self.cancelled:
            return succeed(None)
        return self._link.when_ready(self._name, self)

    def cancel(self) -> Deferred[None]:
        """
        Stop receiving; when the last subscription of the channel goes, the
        node unsubscribes. Cancelling twice is harmless.
        """
        if not self.cancelled:
            self.cancelled = True
            self._link.remove(self._name, self)
        return succeed(None)


@implementer(IBus)
class RedisBus:
    """
    Fan-out over Redis pub/sub: a channel ``c`` is the Redis channel
    ``{ns}:ch:c``; the subscriptions of one node to one channel share one
    Redis subscription.

    :param service: the :class:`RedisService` it belongs to.
    """

    def __init__(self, service: RedisService) -> None:
        self._service = service
        self._prefix = f"{service.namespace}:ch:"

    def publish(self, channel: str, payload: bytes) -> Deferred[None]:
        """
        One ``PUBLISH`` (in a script that refuses to run after the
        deadline). Fires once Redis has taken it; fails with
        ClusterUnavailable at once when disconnected, or after the command
        timeout, after which it never runs.
        """
        return self._service.command.run_script(
            _PUBLISH, (self._prefix + channel, payload), write=True
        ).addCallback(_none)

    def publish_counted(self, channel: str, payload: bytes) -> Deferred[int]:
        """
        :meth:`publish`, firing with the number of subscribers that took the
        message (``wsfabric.rpc`` skips a backend that no longer listens).
        """
        return self._service.command.run_script(
            _PUBLISH, (self._prefix + channel, payload), write=True
        ).addCallback(int)

    def subscribe(self, channel: str, receiver: Receiver) -> ISubscription:
        """
        Call ``receiver(channel, payload)`` for every message on ``channel``
        from the moment the subscription is ready (see
        :meth:`RedisSubscription.when_ready`).
        """
        name = (self._prefix + channel).encode("utf-8")
        subscription = RedisSubscription(self._service.subscriber, name, channel, receiver)
        self._service.subscriber.add(name, subscription)
        return subscription

    def channels(self) -> list[str]:
        """
        :return: the channels this node is subscribed to (for tests and the
            dashboard).
        """
        cut = len(self._prefix)
        prefix = self._prefix.encode("utf-8")
        return [
            name[cut:].decode("utf-8")
            for name in self._service.subscriber.channels
            if name.startswith(prefix)
        ]

    @property
    def gaps(self) -> int:
        """
        How many pub/sub gaps there have been (see :class:`RedisService`).
        """
        return self._service.gaps

    @property
    def last_probe_ok(self) -> float | None:
        """
        When a liveness probe last came back (reactor seconds), or ``None``.
        """
        return self._service.last_probe_ok


# -- the index ----------------------------------------------------------------------


@implementer(IIndex)
class RedisIndex:
    """
    The cluster index in Redis (see the module docstring for the keys).
    Every write is one fenced script; reads are single commands (or one
    read-only script).

    :param service: the :class:`RedisService` it belongs to.
    """

    def __init__(self, service: RedisService) -> None:
        self._service = service
        self._p = service.namespace + ":"
        # remove_client calls of one reactor turn, by gate, sent together.
        self._removals: dict[str, list[tuple[str, Deferred[None]]]] = {}
        self._removals_flush: Any = None

    def _write(self, script: _Script, *args: Any) -> Deferred[None]:
        return self._service.command.run_script(script, args, write=True).addCallback(_none)

    def _read(self, *args: Any) -> Deferred[Any]:
        return self._service.command.execute(args)

    # -- writes

    def add_client(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Record ``client_id`` as online on ``gate_id`` (anything recorded
        under that id before is dropped first).
        """
        return self._write(_ADD_CLIENT, gate_id, client_id)

    def remove_client(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Remove ``client_id`` with its uid binding, groups and info (a no-op
        unless it is recorded on ``gate_id``; not fenced by the lease).

        The removals asked for during one reactor turn go to Redis together,
        at its end, at most 500 clients per script: a gate that closes
        thousands of clients at once (on SIGTERM, or when they all drop)
        sends a few scripts, not thousands of round trips that a busy gate
        could not read back within the command timeout.
        """
        waiting: Deferred[None] = Deferred()
        self._removals.setdefault(gate_id, []).append((client_id, waiting))
        if self._removals_flush is None:
            self._removals_flush = self._service.reactor.callLater(0, self._flush_removals)
        return waiting

    def _flush_removals(self) -> None:
        self._removals_flush = None
        removals, self._removals = self._removals, {}
        for gate_id, waiting in removals.items():
            for start in range(0, len(waiting), _WRITE_BATCH):
                part = waiting[start : start + _WRITE_BATCH]
                ids = tuple(client_id for client_id, _ in part)
                try:
                    sent = self._service.command.run_script(
                        _REMOVE_CLIENTS, (gate_id, *ids), write=True
                    )
                except Exception:
                    sent = fail()
                sent.addCallbacks(
                    _fire_all, _fail_all, callbackArgs=(part,), errbackArgs=(part,)
                )

    def bind_uid(self, gate_id: str, client_id: str, uid: str) -> Deferred[None]:
        """
        Bind ``client_id`` to ``uid``, replacing an earlier binding.
        """
        return self._write(_BIND_UID, gate_id, client_id, uid)

    def unbind_uid(self, gate_id: str, client_id: str) -> Deferred[None]:
        """
        Remove the uid binding of ``client_id``, if any.
        """
        return self._write(_UNBIND_UID, gate_id, client_id)

    def join_group(self, gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Add ``client_id`` to ``group``.
        """
        return self._write(_JOIN_GROUP, gate_id, client_id, group)

    def leave_group(self, gate_id: str, client_id: str, group: str) -> Deferred[None]:
        """
        Remove ``client_id`` from ``group``.
        """
        return self._write(_LEAVE_GROUP, gate_id, client_id, group)

    def set_info(self, gate_id: str, client_id: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Replace the info of ``client_id`` (an empty dict removes it).
        """
        try:
            text = json.dumps(info, separators=(",", ":"), allow_nan=False) if info else ""
        except (TypeError, ValueError) as e:
            return fail(ValueError(f"info must be JSON-serialisable: {e}"))
        return self._write(_SET_INFO, gate_id, client_id, text)

    @inlineCallbacks
    def resync_gate(
        self,
        gate_id: str,
        records: Iterable[ClientRecord] | Callable[[Iterable[str] | None], Iterable[ClientRecord]],
    ) -> Any:
        """
        Make the index hold exactly the gate's clients: each is rewritten
        from scratch (in scripts of at most 500 clients), and any other
        client recorded for the gate is removed. A gate calls this after
        ``on_data_lost``, or to repair the index after writes failed.

        :param records: the gate's clients, or better a callable that returns
            the records of the given client ids (all of them for ``None``) as
            they are *now*: it is called again right before each batch is
            sent, so that a gate that keeps changing (clients joining,
            leaving, closing) while this runs is never rewritten with stale
            entries. Redis runs each batch in order with the gate's own
            writes, which go through the same connection.
        :return: a Deferred firing with ``(rewritten, removed)`` counts;
            fails with :class:`Fenced` if the gate holds no lease.
        """
        if callable(records):
            current = records
        else:
            fixed = {record.client_id: record for record in records}

            def current(ids: Iterable[str] | None) -> Iterable[ClientRecord]:
                if ids is None:
                    return list(fixed.values())
                return [fixed[i] for i in ids if i in fixed]

        command = self._service.command
        client_ids = [record.client_id for record in current(None)]
        rewritten = 0
        for start in range(0, len(client_ids), _WRITE_BATCH):
            batch = [
                _restore_entry(record)
                for record in current(client_ids[start : start + _WRITE_BATCH])
            ]
            if batch:
                yield command.run_script(_RESTORE_CLIENTS, (gate_id, *batch), write=True)
                rewritten += len(batch)
        recorded = yield self._read("SMEMBERS", f"{self._p}gate:{gate_id}:clients")
        wanted = {record.client_id for record in current(None)}
        extra = [cid for cid in _texts(recorded) if cid not in wanted]
        removed = 0
        for start in range(0, len(extra), _WRITE_BATCH):
            removed += yield command.run_script(
                _REMOVE_CLIENTS, (gate_id, *extra[start : start + _WRITE_BATCH]), write=True
            )
        return (rewritten, removed)

    def gate_client_ids(self, gate_id: str) -> Deferred[list[str]]:
        """
        :return: the clients recorded for ``gate_id``.
        """
        return self._read("SMEMBERS", f"{self._p}gate:{gate_id}:clients").addCallback(_texts)

    # -- reads

    def is_online(self, client_id: str) -> Deferred[bool]:
        """
        Whether ``client_id`` is recorded.
        """
        return self._read("EXISTS", self._p + "client:" + client_id).addCallback(bool)

    def get_gate(self, client_id: str) -> Deferred[str | None]:
        """
        The gate of ``client_id``, or ``None``.
        """
        return self._read("HGET", self._p + "client:" + client_id, "gate").addCallback(
            _optional_text
        )

    def get_uid(self, client_id: str) -> Deferred[str | None]:
        """
        The uid of ``client_id``, or ``None``.
        """
        return self._read("HGET", self._p + "client:" + client_id, "uid").addCallback(
            _optional_text
        )

    def get_info(self, client_id: str) -> Deferred[dict[str, Any]]:
        """
        The info of ``client_id`` (``{}`` when none).
        """
        return self._read("HGET", self._p + "client:" + client_id, "info").addCallback(
            lambda raw: json.loads(raw) if raw else {}
        )

    def get_client_ids_by_uid(self, uid: str) -> Deferred[list[str]]:
        """
        The clients bound to ``uid``.
        """
        return self._read("SMEMBERS", self._p + "uid:" + uid).addCallback(_texts)

    def get_client_ids_by_group(self, group: str) -> Deferred[list[str]]:
        """
        The members of ``group``.
        """
        return self._read("SMEMBERS", self._p + "group:" + group).addCallback(_texts)

    def get_client_count_by_group(self, group: str) -> Deferred[int]:
        """
        The number of members of ``group``.
        """
        return self._read("SCARD", self._p + "group:" + group).addCallback(int)

    def get_uids_by_group(self, group: str) -> Deferred[list[str]]:
        """
        The distinct uids of the members of ``group`` (one round trip).
        """
        return self._service.command.run_script(_UIDS_BY_GROUP, (group,), write=False).addCallback(
            _texts
        )

    def get_all_uids(self) -> Deferred[list[str]]:
        """
        Every uid bound to at least one client.
        """
        return self._read("SMEMBERS", self._p + "uids").addCallback(_texts)

    def get_all_groups(self) -> Deferred[list[str]]:
        """
        Every group with at least one member.
        """
        return self._read("SMEMBERS", self._p + "groups").addCallback(_texts)

    def get_all_client_count(self) -> Deferred[int]:
        """
        The number of clients online.
        """
        return self._read("SCARD", self._p + "clients").addCallback(int)


def _fire_all(_: object, waiting: list[tuple[str, Deferred[None]]]) -> None:
    for _, deferred in waiting:
        deferred.callback(None)


def _fail_all(failure: Failure, waiting: list[tuple[str, Deferred[None]]]) -> None:
    for _, deferred in waiting:
        deferred.errback(Failure(failure.value, failure.type, failure.getTracebackObject()))


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


# -- the registry ---------------------------------------------------------------------


class _Registration:
    __slots__ = ("role", "entry", "epoch")

    def __init__(self, role: str, entry: str, epoch: str) -> None:
        self.role = role
        self.entry = entry
        self.epoch = epoch


class RedisRegistry:
    """
    The nodes of the cluster: registration with a lease renewed by a
    heartbeat, data-loss and declared-dead detection, and the sweeper of
    dead gates (see the module docstring).

    :param service: the :class:`RedisService` it belongs to.
    :param lease: seconds a lease lasts.
    :param sweep_interval: seconds between periodic sweeps.
    :param sweep_batch: most clients one sweep script removes.
    :param sweep: whether to sweep periodically.

    :ivar epoch: the epoch of the Redis data this node knows, or ``None``
        before the first registration.
    """

    _log = Logger()

    def __init__(
        self,
        service: RedisService,
        *,
        lease: float,
        sweep_interval: float,
        sweep_batch: int,
        sweep: bool,
    ) -> None:
        self._service = service
        self.lease = lease
        self.sweep_interval = sweep_interval
        # A pause of Redis longer than this restarts its activity clock.
        self.clock_gap_ms = int(lease * 500)
        self.sweep_batch = sweep_batch
        self._sweep_enabled = sweep
        self.epoch: str | None = None
        self._nodes: dict[str, _Registration] = {}
        self._heartbeat: task.LoopingCall | None = None
        self._sweeper: task.LoopingCall | None = None
        self._renewing: Deferred[None] | None = None
        self._renew_again = False
        self._p = service.namespace + ":"

    @property
    def _ttl_ms(self) -> int:
        return int(self.lease * 1000)

    # -- lifecycle (driven by the service)

    def _start(self) -> None:
        clock = self._service.reactor
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._heartbeat.start(self.lease / 3, now=False)
        if self._sweep_enabled:
            self._sweeper = task.LoopingCall(self._sweep_tick)
            self._sweeper.clock = clock
            self._sweeper.start(self.sweep_interval, now=False)

    def _stop(self) -> Deferred[None]:
        waits = []
        for loop in (self._heartbeat, self._sweeper):
            if loop is not None and loop.running:
                # A LoopingCall waiting on a Deferred stops once it fires.
                waits.append(loop.deferred)
                loop.stop()
        self._heartbeat = self._sweeper = None
        return gatherResults(waits, consumeErrors=True).addBoth(_none)

    def _command_up(self) -> None:
        # After any (re)connect, renew at once: after Redis hung or
        # restarted, this re-creates expired leases (or notices the data
        # loss) long before Redis's activity clock lets anyone sweep. A
        # renewal still in flight from before is stale: renew again after it.
        if not self._nodes:
            return
        if self._renewing is None:
            self._beat()
        else:
            self._renew_again = True

    def _beat(self) -> Deferred[None]:
        if self._renewing is not None or not self._nodes or self._heartbeat is None:
            return succeed(None)
        renewing = self._renewing = self.renew()
        renewing.addErrback(self._heartbeat_failed)
        renewing.addBoth(self._renewed_all)
        return renewing

    def _renewed_all(self, result: object) -> None:
        self._renewing = None
        if self._renew_again:
            self._renew_again = False
            self._beat()

    def _heartbeat_failed(self, failure: Failure) -> None:
        self._log.warn(
            "could not renew the lease in Redis: {error}", error=failure.getErrorMessage()
        )

    # -- registration

    def register(self, node_id: str, role: str, info: dict[str, Any]) -> Deferred[None]:
        """
        Register ``node_id`` (or register it again after ``on_lease_lost``):
        write its registry entry and its lease, and renew the lease every
        ``lease / 3`` from then on.

        :param node_id: the node's id.
        :param role: ``"gate"`` or ``"backend"``.
        :param info: JSON data other nodes read with :meth:`live_nodes`
            (e.g. ``{"amp": "tcp:host=10.0.0.5:port=7000", "service":
            "default"}``).
        :return: fires once registered; fails with ClusterUnavailable.
        """
        if role not in ROLES:
            return fail(ValueError(f"role must be one of {ROLES}, not {role!r}"))
        try:
            entry = json.dumps({"role": role, "info": info}, separators=(",", ":"), sort_keys=True)
        except (TypeError, ValueError) as e:
            return fail(ValueError(f"node info must be JSON-serialisable: {e}"))
        registering = self._service.command.run_script(
            _REGISTER, (node_id, self._ttl_ms, entry, secrets.token_hex(8)), write=True
        )

        def registered(epoch: Any) -> None:
            epoch = _text(epoch)
            self._nodes[node_id] = _Registration(role, entry, epoch)
            if self.epoch is None:
                self.epoch = epoch
            self._log.info(
                "registered {role} {node_id} in Redis (lease {lease:g} s)",
                role=role,
                node_id=node_id,
                lease=self.lease,
            )

        return registering.addCallback(registered)

    def unregister(self, node_id: str) -> Deferred[None]:
        """
        Remove ``node_id``'s lease and registry entry and stop renewing it (a
        graceful exit: a gate removes its clients first; any it left are
        swept).
        """
        self._nodes.pop(node_id, None)
        return self._service.command.run_script(_UNREGISTER, (node_id,), write=True).addCallback(
            _none
        )

    def registered(self) -> list[str]:
        """
        :return: the node ids this registry renews.
        """
        return list(self._nodes)

    @inlineCallbacks
    def renew(self) -> Any:
        """
        Renew the lease of every registered node now (the heartbeat does this
        every ``lease / 3``), and report data loss (``on_data_lost``) or a
        node declared dead (``on_lease_lost``). Fires once done; fails with
        ClusterUnavailable.
        """
        nodes = list(self._nodes.items())
        command = self._service.command
        renewals = [
            command.run_script(
                _RENEW,
                (
                    node_id,
                    self._ttl_ms,
                    reg.epoch,
                    reg.entry,
                    secrets.token_hex(8),
                    self.clock_gap_ms,
                ),
                write=True,
            )
            for node_id, reg in nodes
        ]
        results = yield gatherResults(renewals, consumeErrors=True).addErrback(
            lambda f: f.value.subFailure
        )
        data_lost = False
        dead = []
        for (node_id, reg), (status, epoch) in zip(nodes, results, strict=True):
            status, epoch = _text(status), _text(epoch)
            if self._nodes.get(node_id) is not reg:
                continue
            if status == "renewed":
                self._log.warn(
                    "the lease of {node_id} had expired but it was not declared dead; renewed it",
                    node_id=node_id,
                )
            elif status == "lost":
                reg.epoch = epoch
                if self.epoch != epoch:
                    self.epoch = epoch
                    data_lost = True
            elif status == "dead":
                del self._nodes[node_id]
                dead.append(node_id)
        if data_lost:
            self._log.warn(
                "Redis lost its data (new epoch {epoch}); leases re-created, entries must "
                "be rewritten",
                epoch=self.epoch,
            )
            self._service._emit("on_data_lost")
        for node_id in dead:
            self._log.error(
                "{node_id} was declared dead (its lease expired and it was swept)",
                node_id=node_id,
            )
            self._service._emit("on_lease_lost", node_id)

    @inlineCallbacks
    def live_nodes(self, role: str) -> Any:
        """
        :param role: ``"gate"`` or ``"backend"``.
        :return: a Deferred firing with ``{node_id: info}`` for the nodes of
            ``role`` whose lease exists. (Registry entries of dead backends
            are pruned by the sweeper.)
        """
        flat = yield self._service.command.run_script(_LIVE_NODES, (), write=False)
        nodes = {}
        for i in range(0, len(flat) - 1, 2):
            try:
                entry = json.loads(flat[i + 1])
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("role") == role:
                nodes[_text(flat[i])] = entry.get("info") or {}
        return nodes

    # -- the sweeper

    def _sweep_tick(self) -> Deferred[Any] | None:
        if not self._service.command.ready:
            return None
        return self.sweep_dead_gates().addErrback(self._sweep_failed)

    def _sweep_failed(self, failure: Failure) -> None:
        self._log.warn("sweep of dead gates failed: {error}", error=failure.getErrorMessage())

    @inlineCallbacks
    def sweep_dead_gates(self) -> Any:
        """
        Declare dead every registered node whose lease is gone (a backend's
        registry entry is dropped), unless Redis has been paused, restarted
        or cut off from every node within the last lease (see the module
        docstring), and remove the clients of every dead gate,
        at most ``sweep_batch`` per script, exactly as ``remove_client``
        would, then the gate's remaining keys. Safe to run on several nodes
        at once: each client is removed, and reported, by one sweeper.

        :return: a Deferred firing with the list of :class:`SweptClient`
            this call removed (``on_swept`` listeners hear it too).
        """
        command = self._service.command
        active, marked = yield command.run_script(
            _SWEEP_MARK, (self._ttl_ms, self.clock_gap_ms), write=True
        )
        if not active:
            self._log.debug("Redis was paused or restarted less than a lease ago: no sweep")
        for gate_id in _texts(marked):
            self._log.warn(
                "gate {gate_id} is dead (its lease expired); removing its clients",
                gate_id=gate_id,
            )
        sweeping = yield command.execute(["SMEMBERS", self._p + "sweeping"])
        removed: list[SweptClient] = []
        for gate_id in _texts(sweeping):
            for _ in range(_MAX_SWEEP_BATCHES):
                done, batch = yield command.run_script(
                    _SWEEP_BATCH, (gate_id, self.sweep_batch), write=True
                )
                for client_id, uid, groups in batch:
                    removed.append(
                        SweptClient(
                            _text(client_id),
                            gate_id,
                            _optional_text(uid),
                            tuple(_texts(groups)),
                        )
                    )
                if done:
                    break
        if removed:
            self._log.info("swept {count} clients of dead gates", count=len(removed))
            self._service._emit("on_swept", removed)
        return removed


__all__ = [
    "ClientRecord",
    "Fenced",
    "RedisAddress",
    "RedisBus",
    "RedisIndex",
    "RedisRegistry",
    "RedisService",
    "RedisSubscription",
    "SweptClient",
    "parse_redis_url",
]
