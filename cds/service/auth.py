"""Verify the CDS client's JWT bearer token (CDS Hooks 2.0 "Trusting CDS Clients").

Order of checks: header (``typ`` JWT, a ``kid``, an allowed asymmetric ``alg``;
``none`` and HMAC never), ``iss`` on the allowlist (and ``jku``, if sent, equal
to the one configured for that issuer), signature with the key named by
``kid``, ``aud`` equal to the exact URL called, ``exp``/``iat`` with a small
clock skew and a maximum lifetime, ``tenant`` if configured, ``jti`` not seen
before. Any failure is an :class:`AuthError`; the client only ever sees a bare
401. Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson

from cds.config import AuthClient, AuthSettings
from cds.errors import AuthError

__all__ = ["ClientIdentity", "JwtVerifier", "ReplayClaim"]

log = logging.getLogger("cds.service.auth")

#: records a (iss, jti) until it expires; False when it was already seen
ReplayClaim = Callable[[str, str, float], bool]


@dataclass(frozen=True)
class ClientIdentity:
    """The verified CDS client of a call."""

    iss: str
    jti: str
    tenant: str | None

    def as_trace(self) -> dict[str, str]:
        out = {"iss": self.iss, "jti": self.jti}
        if self.tenant:
            out["tenant"] = self.tenant
        return out


class _KeySet:
    """The JWK Set of one client: from a file, or from its ``jku`` with a cache."""

    def __init__(self, client: AuthClient, cache_s: int) -> None:
        self.client = client
        self._cache_s = cache_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        if client.jwks_file is not None:
            try:
                self._keys = _parse_jwks(json.loads(client.jwks_file.read_text("utf-8")))
            except (OSError, ValueError) as exc:
                raise AuthError(f"cannot load JWKS for {client.iss}: {exc}") from exc

    async def key(self, kid: str, http: httpx.AsyncClient) -> jwt.PyJWK:
        stale = time.monotonic() - self._fetched_at > self._cache_s
        # a missing kid may be a key rotation, but refetch at most every 10 s
        recently = time.monotonic() - self._fetched_at <= 10
        if self.client.jku and (stale or (kid not in self._keys and not recently)):
            await self._refresh(http)
        found = self._keys.get(kid)
        if found is None:
            raise AuthError(f"unknown kid {kid[:100]!r} for {self.client.iss!r}")
        return found

    async def _refresh(self, http: httpx.AsyncClient) -> None:
        assert self.client.jku is not None
        self._fetched_at = time.monotonic()
        try:
            response = await http.get(self.client.jku, timeout=3.0)
            response.raise_for_status()
            self._keys = _parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthError(f"cannot fetch JWKS from {self.client.jku}: {exc}") from exc


def _parse_jwks(data: Any) -> dict[str, jwt.PyJWK]:
    """The usable keys of a JWK Set; a key that does not parse is skipped and logged."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys = {}
    for i, jwk in enumerate(data["keys"]):
        if not (isinstance(jwk, dict) and jwk.get("kid") and jwk.get("kty") in ("EC", "RSA")):
            log.warning("JWK Set: key %d skipped (no kid, or not an EC or RSA key)", i)
            continue
        try:
            keys[str(jwk["kid"])] = jwt.PyJWK.from_dict(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWK Set: key %r skipped: %s", str(jwk["kid"])[:64], type(exc).__name__)
    return keys


def _segment(part: str) -> dict[str, Any]:
    padded = part + "=" * (-len(part) % 4)
    value = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, unverified: to pick the issuer's key.
    Nothing read here is trusted; PyJWT verifies the whole token afterwards."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed JWT: not three segments")
    try:
        return _segment(parts[0]), _segment(parts[1])
    except (ValueError, UnicodeError, binascii.Error) as exc:  # orjson's error is a ValueError
        raise AuthError(f"malformed JWT: {type(exc).__name__}") from exc


def _shown(value: Any) -> str:
    """A claim or header value for a log line: quoted, and cut short."""
    return repr(str(value)[:200])


def _check_jku(client: AuthClient, sent: str) -> None:
    """A jku header never makes us fetch keys: it must be the client's own JWK Set URL,
    or, for pinned keys, one the client accepts (none listed: it is ignored)."""
    if client.jku is not None and sent != client.jku:
        raise AuthError(f"jku {_shown(sent)} is not the client's JWK Set URL {client.jku!r}")
    if client.jku is None and client.accepted_jku and sent not in client.accepted_jku:
        raise AuthError(
            f"jku {_shown(sent)} is not in accepted_jku of {client.iss!r} (its keys are pinned)"
        )


def _check_audience(aud: Any, audiences: list[str]) -> None:
    """Say what was expected and what came (neither is a secret), not just "invalid"."""
    sent = aud if isinstance(aud, list) else [aud]
    if not any(a in audiences for a in sent):
        raise AuthError(
            f"audience mismatch: aud {_shown(aud)}, expected {' or '.join(map(repr, audiences))} "
            "(the URL called; set server.base_url or server.base_url_aliases to how the client "
            "calls the service)"
        )


class JwtVerifier:
    def __init__(
        self, settings: AuthSettings, http: httpx.AsyncClient, claim_jti: ReplayClaim
    ) -> None:
        self._settings = settings
        self._http = http
        self._clients = {c.iss: _KeySet(c, settings.jwks_cache_s) for c in settings.clients}
        self._claim_jti = claim_jti

    async def verify(self, authorization: str | None, audiences: str | list[str]) -> ClientIdentity:
        """The client a bearer JWT identifies; ``audiences``: the URL called under each
        public base of the service (any one may be the ``aud``)."""
        audiences = [audiences] if isinstance(audiences, str) else audiences
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("no bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        header, claims = _peek(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._settings.algorithms:
            raise AuthError(f"algorithm {alg!r} not accepted")
        if str(header.get("typ", "")).upper() != "JWT" or not kid:
            raise AuthError("JWT header needs typ JWT and a kid")
        keyset = self._clients.get(str(claims.get("iss")))
        if keyset is None:
            raise AuthError(f"issuer {_shown(claims.get('iss'))} not on the allowlist")
        if "jku" in header:
            _check_jku(keyset.client, str(header["jku"]))
        key = await keyset.key(str(kid), self._http)
        _check_audience(claims.get("aud"), audiences)
        return self._check_claims(token, key, str(alg), keyset.client, audiences)

    def _check_claims(
        self, token: str, key: jwt.PyJWK, alg: str, client: AuthClient, audiences: list[str]
    ) -> ClientIdentity:
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audiences,
                issuer=client.iss,
                leeway=s.clock_skew_s,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"JWT rejected: {type(exc).__name__}: {exc}") from exc
        iat, exp = float(claims["iat"]), float(claims["exp"])
        if exp - iat > s.max_token_lifetime_s:
            raise AuthError("token lifetime too long")
        tenant = claims.get("tenant")
        if client.tenants and tenant not in client.tenants:
            raise AuthError("tenant not on the allowlist")
        if not self._claim_jti(client.iss, str(claims["jti"]), exp + s.clock_skew_s):
            raise AuthError("jti replayed")
        return ClientIdentity(client.iss, str(claims["jti"]), tenant)
