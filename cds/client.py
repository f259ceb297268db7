"""A small CDS Hooks client that signs its JWTs like an EHR (ES384 or RS384).

Used by the demo, the benchmark and the end-to-end tests; also handy for
integrators checking a deployment.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["CdsClient", "JwtSigner"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class JwtSigner:
    """Signs CDS Hooks client JWTs with a private key; publishes the JWK Set."""

    iss: str
    alg: str = "ES384"
    kid: str = field(default_factory=lambda: uuid.uuid4().hex)
    key: PrivateKey | None = None
    lifetime_s: int = 300

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = (
                ec.generate_private_key(ec.SECP384R1())
                if self.alg.startswith("ES")
                else rsa.generate_private_key(public_exponent=65537, key_size=2048)
            )

    def token(self, audience: str, *, jku: str | None = None, **overrides: Any) -> str:
        """A JWT for ``audience``; ``jku`` adds that header, as clients such as the CDS
        Hooks sandbox do; ``overrides`` replace claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": audience,
            "iat": now,
            "exp": now + self.lifetime_s,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        headers = {"kid": self.kid, "typ": "JWT"} | ({"jku": jku} if jku else {})
        assert self.key is not None
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers)

    def jwks(self) -> dict[str, Any]:
        assert self.key is not None
        public = self.key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return {"keys": [jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks(), indent=2), encoding="utf-8")
        return path


class CdsClient:
    """Call a CDS service the way an EHR does."""

    def __init__(
        self,
        base_url: str,
        signer: JwtSigner | None,
        *,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        """``http``: the client to send with (an in-process one in tests); by default
        a new one."""
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self.http = http if http is not None else httpx.Client(timeout=timeout)

    def _headers(self, url: str) -> dict[str, str]:
        if self.signer is None:
            return {}
        return {"Authorization": f"Bearer {self.signer.token(url)}"}

    def discovery(self) -> httpx.Response:
        url = f"{self.base_url}/cds-services"
        return self.http.get(url, headers=self._headers(url))

    def call(self, service_id: str, body: dict[str, Any]) -> httpx.Response:
        url = f"{self.base_url}/cds-services/{service_id}"
        return self.http.post(url, json=body, headers=self._headers(url))

    def feedback(self, service_id: str, items: list[dict[str, Any]]) -> httpx.Response:
        url = f"{self.base_url}/cds-services/{service_id}/feedback"
        return self.http.post(url, json={"feedback": items}, headers=self._headers(url))

    def close(self) -> None:
        self.http.close()
