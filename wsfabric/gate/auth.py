"""
Client authentication and admission, before the WebSocket upgrade.

A client presents a JWT in ``Authorization: Bearer <token>`` or in the
``?token=`` query parameter. :class:`JWTAuthenticator` verifies it (HS256
with a shared secret, or RS256/ES256 with a public key), checks ``exp``,
``nbf``, ``iss`` and ``aud``, and takes the uid from a configurable claim
(``sub`` by default). Any other scheme plugs in as an
:class:`~wsfabric.interfaces.IAuthenticator` (``--authenticator
module:Name``).

:class:`Gatekeeper` is what a transport asks when a client arrives: which
address it comes from, whether a connection cap refuses it
(:mod:`wsfabric.gate.limits`), who it is, and, once it is connected, when its
credentials expire (:class:`TokenLifetime`) and how fast it may send. It
knows nothing of HTTP or WebSocket, so the raw TCP transport can use it as
the WebSocket edge does.

Tokens are never logged and never reach the application: the ``token``
parameter and the ``authorization`` header are removed from the request the
application sees once an authenticator has read them; the application gets
the verified claims instead.

Token refresh: a connection whose token carries ``exp`` is closed with 4401
"token expired" at that time (plus the leeway) unless the client sends, in
a text frame, the routed message (docs/wire-protocol.md)::

    {"route": "wsfabric.refresh", "id": 1, "data": {"token": "<new JWT>"}}

The gate handles it itself; the application never sees it. The new token
must verify and name the same uid. The answer is ``{"id": 1, "data": {"exp":
<new exp or null>}}`` or ``{"id": 1, "error": {"code": "unauthorized",
"message": "..."}}`` (for a notify, without ``id``: nothing on success,
``{"route": "wsfabric.refresh", "error": {...}}`` on failure).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from wsfabric.errors import AuthenticationFailed, LimitExceeded
from wsfabric.gate.limits import ConnectionLimits, LimitSettings, Ticket, TokenBucket
from wsfabric.interfaces import IAuthenticator
from wsfabric.metrics import Metrics
from wsfabric.options import non_negative_float

#: The environment variable an HS256 secret may come from.
SECRET_VARIABLE = "WSFABRIC_JWT_SECRET"

#: The route of a token refresh message.
REFRESH_ROUTE = "wsfabric.refresh"

#: The close code of a connection whose credentials expired.
CLOSE_TOKEN_EXPIRED = 4401

#: The shortest HS256 secret accepted, in bytes (RFC 7518 section 3.2: at
#: least the size of the hash).
MIN_SECRET_BYTES = 32

# Cheap test, before any JSON parsing, for a text message that may be a
# refresh: every client message goes past it when authentication is on.
_REFRESH_MARK = b'"' + REFRESH_ROUTE.encode("ascii") + b'"'

#: Options of client authentication, for ``optParameters``.
AUTH_PARAMETERS: list[list[Any]] = [
    [
        "jwt-secret",
        None,
        None,
        f"HS256 secret that client JWTs are signed with (default: ${SECRET_VARIABLE}).",
    ],
    [
        "jwt-secret-file",
        None,
        None,
        "Read the HS256 secret from this file (keeps it out of the process list).",
    ],
    [
        "jwt-public-key",
        None,
        None,
        "PEM file of the public key that client JWTs are signed with "
        "(RSA: RS256; EC P-256: ES256).",
    ],
    ["jwt-issuer", None, None, "Required 'iss' claim of client JWTs."],
    ["jwt-audience", None, None, "Required 'aud' claim of client JWTs."],
    ["jwt-uid-claim", None, "sub", "The JWT claim whose value is bound as the client's uid."],
    [
        "jwt-leeway",
        None,
        0.0,
        "Seconds of clock skew allowed when checking 'exp' and 'nbf'.",
        non_negative_float,
    ],
    [
        "authenticator",
        None,
        None,
        "A custom authenticator: module.path:Name, a callable returning an "
        "IAuthenticator (instead of the --jwt-* options).",
    ],
]

#: Flags of client authentication, for ``optFlags``.
AUTH_FLAGS: list[list[Any]] = [
    [
        "allow-anonymous",
        None,
        "With authentication configured, still accept clients that present "
        "no token (as anonymous: no uid, no claims).",
    ],
]


def token_from(headers: dict[str, str], params: dict[str, str]) -> str | None:
    """
    :param headers: request headers, names in lower case.
    :param params: query parameters.
    :return: the bearer token of ``Authorization``, else the ``token``
        parameter, else ``None``.
    :raises AuthenticationFailed: if ``Authorization`` is not a bearer token.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
        return token
    return params.get("token") or None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _load_public_key(path: str) -> tuple[Any, list[str]]:
    """
    :return: the public key in the PEM file ``path`` and the JWT algorithm
        it verifies.
    :raises usage.UsageError: if it cannot be read or is of another kind.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise usage.UsageError(f"--jwt-public-key {path}: {e.strerror}") from None
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise usage.UsageError(
            f"--jwt-public-key {path}: not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise usage.UsageError(
                f"--jwt-public-key {path}: RSA keys must have at least 2048 bits"
            )
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            key.curve.name
        )
        if algorithm is not None:
            return key, [algorithm]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, ["EdDSA"]
    raise usage.UsageError(
        f"--jwt-public-key {path}: unsupported key type (use RSA, EC P-256/384/521 or Ed25519)"
    )


@implementer(IAuthenticator)
class JWTAuthenticator:
    """
    Verifies JSON Web Tokens (pyjwt).

    :param key: the HS256 secret (bytes) or a public key object.
    :param algorithms: the accepted ``alg`` values (one: the key's).
    :param clock: the time ``exp`` and ``nbf`` are checked against (the
        system clock if ``None``).
    :param issuer: the required ``iss``, or ``None``.
    :param audience: the required ``aud`` (the token's may be a list that
        contains it), or ``None`` to accept any.
    :param uid_claim: the claim bound as uid.
    :param leeway: seconds of clock skew allowed for ``exp`` and ``nbf``.
    :param allow_anonymous: accept clients that present no token.
    """

    def __init__(
        self,
        key: Any,
        algorithms: list[str],
        clock: IReactorTime | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        uid_claim: str = "sub",
        leeway: float = 0.0,
        allow_anonymous: bool = False,
    ) -> None:
        import jwt

        self._jwt = jwt
        self._key = key
        self.algorithms = list(algorithms)
        self._time = clock.seconds if clock is not None else time.time
        self.issuer = issuer
        self.audience = audience
        self.uid_claim = uid_claim
        self.leeway = leeway
        self.allow_anonymous = allow_anonymous
        required = [uid_claim]
        if issuer is not None:
            required.append("iss")
        if audience is not None:
            required.append("aud")
        self._options = {
            # exp and nbf are checked here against the reactor's clock: the
            # same clock that schedules the 4401 close at expiry.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": issuer is not None,
            "verify_aud": audience is not None,
            "require": required,
        }

    def authenticate(
        self, headers: dict[str, str], params: dict[str, str]
    ) -> tuple[str | None, dict[str, Any]]:
        """
        Verify the client's token.

        :return: ``(uid, claims)``; ``(None, {})`` for a client without a
            token when anonymous clients are allowed.
        :raises AuthenticationFailed: naming what is wrong.
        """
        token = token_from(headers, params)
        if token is None:
            if self.allow_anonymous:
                return None, {}
            raise AuthenticationFailed("a token is required")
        return self.verify(token)

    def verify(self, token: str) -> tuple[str, dict[str, Any]]:
        """
        :param token: a JWT.
        :return: the uid and the claims.
        :raises AuthenticationFailed: naming what is wrong.
        """
        jwt = self._jwt
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                options=self._options,
                issuer=self.issuer,
                audience=self.audience,
            )
        except jwt.MissingRequiredClaimError as e:
            raise AuthenticationFailed(f"the token has no {e.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailed("the token's issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("the token's audience is not accepted") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationFailed(
                f"the token's algorithm is not accepted (expected {', '.join(self.algorithms)})"
            ) from None
        except jwt.InvalidSignatureError:
            raise AuthenticationFailed("the token's signature is not valid") from None
        except jwt.DecodeError:
            raise AuthenticationFailed("the token is malformed") from None
        except jwt.InvalidTokenError as e:
            # Messages of pyjwt describe the problem, never the token.
            raise AuthenticationFailed(f"the token is not valid: {e}") from None
        now = self._time()
        expires = claims.get("exp")
        if expires is not None:
            if not _number(expires):
                raise AuthenticationFailed("the token's 'exp' claim is not a number")
            if now >= expires + self.leeway:
                raise AuthenticationFailed("the token has expired")
        not_before = claims.get("nbf")
        if not_before is not None:
            if not _number(not_before):
                raise AuthenticationFailed("the token's 'nbf' claim is not a number")
            if now < not_before - self.leeway:
                raise AuthenticationFailed("the token is not valid yet")
        uid = claims.get(self.uid_claim)
        if isinstance(uid, int) and not isinstance(uid, bool):
            uid = str(uid)
        if not isinstance(uid, str) or not 1 <= len(uid) <= 256:
            raise AuthenticationFailed(
                f"the token's {self.uid_claim!r} claim must be a string of 1 to 256 characters"
            )
        return uid, claims


def load_authenticator(spec: str) -> IAuthenticator:
    """
    Build the authenticator named by ``--authenticator``.

    :param spec: ``module.path:Name``, a callable taking no arguments that
        returns an :class:`~wsfabric.interfaces.IAuthenticator` provider.
    :raises usage.UsageError: naming what is wrong.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise usage.UsageError(f"--authenticator must look like module.path:Name, not {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except ImportError as e:
        raise usage.UsageError(
            f"--authenticator {spec}: cannot import {module_name!r}: {e}"
        ) from None
    except AttributeError:
        raise usage.UsageError(
            f"--authenticator {spec}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    try:
        authenticator = target()
    except Exception as e:
        raise usage.UsageError(
            f"--authenticator {spec}: creating it failed: {type(e).__name__}: {e}"
        ) from None
    if not IAuthenticator.providedBy(authenticator):
        raise usage.UsageError(
            f"--authenticator {spec}: {type(authenticator).__name__} does not provide "
            "IAuthenticator (declare it with @implementer(IAuthenticator))"
        )
    return authenticator  # type: ignore[no-any-return]


def check_auth_options(
    options: usage.Options, clock: IReactorTime | None = None
) -> IAuthenticator | None:
    """
    Validate the authentication options.

    :param options: parsed options with :data:`AUTH_PARAMETERS` and
        :data:`AUTH_FLAGS`.
    :param clock: the time tokens are checked against (the system clock if
        ``None``).
    :return: the authenticator, or ``None`` when none is configured (every
        client is anonymous).
    :raises usage.UsageError: naming the bad option.
    """
    secret = options["jwt-secret"]
    secret_file = options["jwt-secret-file"]
    public_key = options["jwt-public-key"]
    custom = options["authenticator"]
    given = [
        name
        for name, value in (
            ("--jwt-secret", secret),
            ("--jwt-secret-file", secret_file),
            ("--jwt-public-key", public_key),
            ("--authenticator", custom),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise usage.UsageError(f"give only one of {', '.join(given)}")
    if custom is not None:
        return load_authenticator(custom)
    if secret_file is not None:
        try:
            with open(secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as e:
            raise usage.UsageError(f"--jwt-secret-file {secret_file}: {e.strerror}") from None
    if secret is None and public_key is None:
        secret = os.environ.get(SECRET_VARIABLE) or None
    if public_key is not None:
        key, algorithms = _load_public_key(public_key)
    elif secret is not None:
        key = secret.encode("utf-8")
        if len(key) < MIN_SECRET_BYTES:
            raise usage.UsageError(
                f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes "
                "(e.g. the output of: openssl rand -hex 32)"
            )
        algorithms = ["HS256"]
    else:
        return None
    return JWTAuthenticator(
        key,
        algorithms,
        clock,
        issuer=options["jwt-issuer"],
        audience=options["jwt-audience"],
        uid_claim=options["jwt-uid-claim"],
        leeway=options["jwt-leeway"],
        allow_anonymous=bool(options["allow-anonymous"]),
    )


@dataclass(frozen=True)
class Identity:
    """
    Who an admitted client is.

    :ivar uid: the uid to bind, or ``None``.
    :ivar claims: the verified claims (``request.claims``).
    :ivar expires: when its credentials expire (seconds since the epoch,
        leeway included), or ``None``.
    """

    uid: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    expires: float | None = None


_ANONYMOUS = Identity()


def _identity(result: Any, leeway: float) -> Identity:
    try:
        uid, claims = result
    except (TypeError, ValueError):
        raise TypeError(
            f"an authenticator must return (uid, claims), not {type(result).__name__}"
        ) from None
    if uid is not None and not isinstance(uid, str):
        raise TypeError(f"an authenticator's uid must be a str or None, not {type(uid).__name__}")
    if not isinstance(claims, dict):
        raise TypeError(f"an authenticator's claims must be a dict, not {type(claims).__name__}")
    expires = claims.get("exp")
    return Identity(uid, claims, float(expires) + leeway if _number(expires) else None)


class Gatekeeper:
    """
    What a transport asks before it accepts a client, and while it holds it.

    :param authenticator: who clients are, or ``None`` (all anonymous).
    :param limits: the connection caps and the message rate.
    :param clock: for token expiry and the rate limit.
    :param metrics: refusals are counted as drops (``unauthorized``,
        ``ip_limit``, ``uid_limit``).
    """

    _log = Logger()

    def __init__(
        self,
        authenticator: IAuthenticator | None,
        limits: LimitSettings,
        clock: IReactorTime,
        metrics: Metrics,
    ) -> None:
        self.authenticator = authenticator
        self.settings = limits
        self.limits = ConnectionLimits(limits.per_ip, limits.per_uid)
        self._clock = clock
        self._metrics = metrics
        self._leeway = float(getattr(authenticator, "leeway", 0.0) or 0.0)

    def client_address(self, peer: str, headers: dict[str, str]) -> str:
        """
        :param peer: the TCP peer's address.
        :param headers: request headers (``x-forwarded-for`` is believed
            only from a trusted proxy).
        :return: the client's address.
        """
        return self.settings.trusted.client_address(peer, headers.get("x-forwarded-for"))

    def admit(self, address: str) -> Ticket:
        """
        Count a new connection from ``address``; release the ticket when
        the connection goes, whatever happens next.

        :raises LimitExceeded: if the address has too many connections.
        """
        try:
            return self.limits.admit(address)
        except LimitExceeded as e:
            self._metrics.dropped(e.cause)
            raise

    def authenticate(
        self, ticket: Ticket, headers: dict[str, str], params: dict[str, str]
    ) -> Deferred[Identity]:
        """
        Find out who the client is and count it under its uid.

        :param ticket: the connection's ticket from :meth:`admit`.
        :return: a Deferred that fires with the client's identity (at once
            unless a custom authenticator is asynchronous), or fails with
            :class:`AuthenticationFailed` or :class:`LimitExceeded`.
        """
        authenticator = self.authenticator
        if authenticator is None:
            return succeed(_ANONYMOUS)
        try:
            result = authenticator.authenticate(headers, params)
        except AuthenticationFailed as e:
            self._metrics.dropped("unauthorized")
            return fail(e)
        except Exception:
            return fail()
        if isinstance(result, Deferred):
            return result.addCallbacks(
                self._authenticated, self._refused, callbackArgs=(ticket,)
            )
        try:
            return succeed(self._authenticated(result, ticket))
        except Exception:
            return fail()

    def _authenticated(self, result: Any, ticket: Ticket) -> Identity:
        identity = _identity(result, self._leeway)
        if identity.uid is not None:
            try:
                ticket.bind(identity.uid)
            except LimitExceeded as e:
                self._metrics.dropped(e.cause)
                raise
        return identity

    def _refused(self, failure: Failure) -> Failure:
        if failure.check(AuthenticationFailed):
            self._metrics.dropped("unauthorized")
        return failure

    def bucket(self) -> TokenBucket | None:
        """
        :return: a new connection's message rate limiter, or ``None`` when
            there is no rate limit.
        """
        settings = self.settings
        if not settings.rate:
            return None
        return TokenBucket(settings.rate, settings.burst, self._clock)

    def lifetime(
        self, identity: Identity, expired: Callable[[], None]
    ) -> TokenLifetime | None:
        """
        Start watching an opened connection's credentials.

        :param identity: the connection's identity.
        :param expired: closes the connection (4401) when they expire.
        :return: the watcher, or ``None`` when no authenticator is
            configured (no refresh messages are intercepted then).
        """
        if self.authenticator is None:
            return None
        return TokenLifetime(self, identity, expired, self._clock)

    def rate_limited(self) -> None:
        """
        Count a client closed for sending too fast.
        """
        self._metrics.dropped("rate_limit")

    def expired(self) -> None:
        """
        Count a client closed because its token expired.
        """
        self._metrics.dropped("token_expired")

    def reauthenticate(self, identity: Identity, token: str) -> Deferred[Identity]:
        """
        Check a refreshed token for a connection of ``identity``.

        :return: a Deferred of the new identity, or failing with
            :class:`AuthenticationFailed` (also when it names another uid).
        """
        authenticator = self.authenticator
        assert authenticator is not None

        def check(result: Any) -> Identity:
            fresh = _identity(result, self._leeway)
            if fresh.uid != identity.uid:
                raise AuthenticationFailed("the new token is for another uid")
            return fresh

        return maybeDeferred(authenticator.authenticate, {}, {"token": token}).addCallback(check)


class TokenLifetime:
    """
    Closes a connection when its credentials expire, unless a refresh
    message brings new ones first.

    :param gatekeeper: verifies refreshed tokens.
    :param identity: the connection's identity at the handshake.
    :param expired: closes the connection.
    :param clock: schedules the expiry.
    """

    _log = Logger()

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        identity: Identity,
        expired: Callable[[], None],
        clock: IReactorTime,
    ) -> None:
        self._gatekeeper = gatekeeper
        self.identity = identity
        self._expired = expired
        self._clock = clock
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        expires = self.identity.expires
        if expires is None or self._stopped:
            return
        delay = max(0.0, expires - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not self._stopped:
            self._stopped = True
            self._gatekeeper.expired()
            self._expired()

    def stop(self) -> None:
        """
        The connection has gone: stop watching.
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def handle(self, payload: bytes, reply: Callable[[str], None]) -> bool:
        """
        Take a client's text message if it is a refresh message.

        :param payload: the message as UTF-8 bytes.
        :param reply: sends a text message to the client.
        :return: whether it was a refresh message (handled here; it must not
            reach the application).
        """
        if _REFRESH_MARK not in payload:
            return False
        try:
            envelope = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(envelope, dict) or envelope.get("route") != REFRESH_ROUTE:
            return False
        request_id = envelope.get("id")
        data = envelope.get("data")
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            reply(_error(request_id, "bad_request", 'data must be {"token": "<JWT>"}'))
            return True
        refreshing = self._gatekeeper.reauthenticate(self.identity, token)
        refreshing.addCallbacks(
            self._refreshed, self._refresh_failed, callbackArgs=(request_id, reply),
            errbackArgs=(request_id, reply),
        )
        return True

    def _refreshed(self, identity: Identity, request_id: Any, reply: Callable[[str], None]) -> None:
        if self._stopped:
            return
        self.identity = identity
        self._schedule()
        if request_id is not None:
            reply(json.dumps({"id": request_id, "data": {"exp": identity.claims.get("exp")}}))

    def _refresh_failed(
        self, failure: Failure, request_id: Any, reply: Callable[[str], None]
    ) -> None:
        if self._stopped:
            return
        if failure.check(AuthenticationFailed):
            reason = str(failure.value)
        else:
            self._log.failure("a token refresh failed", failure)
            reason = "the token could not be checked"
        reply(_error(request_id, "unauthorized", reason))


def _error(request_id: Any, code: str, message: str) -> str:
    error = {"code": code, "message": message}
    if request_id is None:
        return json.dumps({"route": REFRESH_ROUTE, "error": error})
    return json.dumps({"id": request_id, "error": error})


def without_credentials(
    headers: dict[str, str], params: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """
    :return: ``headers`` without ``authorization`` and ``params`` without
        ``token``, so that the application (and its logs) never holds a
        token.
    """
    if "authorization" in headers:
        headers = {name: value for name, value in headers.items() if name != "authorization"}
    if "token" in params:
        params = {name: value for name, value in params.items() if name != "token"}
    return headers, params
