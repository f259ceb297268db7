"""The service configuration: a TOML file validated by pydantic models.

Every key is documented in ``docs/configuration.md``. Relative paths in the
file are resolved against the directory of the file itself.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cds.errors import ConfigError
from cds.fhir.fetch import is_loopback_url
from cds.measures.settings import MeasureSettings

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_PREFIX",
    "AuthClient",
    "Settings",
    "env_overrides",
    "load_settings",
]

CONFIG_ENV_VAR = "RUNFORM_CDS_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    base_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=5_000_000, gt=0)
    #: resources one call may bring (prefetch plus fetched), across every key
    max_resources: int = Field(default=2000, ge=1)
    #: feedback items one feedback call may carry
    max_feedback_items: int = Field(default=50, ge=1)
    workers: int = Field(default=1, ge=1, le=64)
    #: a call whose rules read at most this many resources, with packs of at most
    #: ``inline_evaluation_max_rules`` rules, is evaluated on the event loop (a few ms);
    #: larger ones go to a worker thread so that health checks and other calls are
    #: answered meanwhile. The hand-off costs about 1 ms of CPU per call under load.
    #: 0 sends every call to a thread.
    inline_evaluation_max_resources: int = Field(default=250, ge=0)
    inline_evaluation_max_rules: int = Field(default=200, ge=0)
    #: a client must send a whole request (headers and body) within this many seconds
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: idle keep-alive connections are closed after this many seconds
    keep_alive_s: float = Field(default=5.0, gt=0, le=300)
    #: open connections per process beyond which new requests get 503
    max_connections: int = Field(default=1000, ge=1)
    #: serve /openapi.json (behind the CDS client JWT); off by default
    openapi: bool = False
    #: extra CA certificates (PEM) trusted for outbound TLS: JWK Sets and FHIR servers
    ca_file: Path | None = None

    #: /metrics: off, token (Authorization: Bearer metrics_token) or open
    metrics: Literal["off", "token", "open"] = "off"
    metrics_token: str | None = Field(default=None, min_length=16)
    #: log lines for people (text) or for a log collector (json, one event per line)
    log_format: Literal["text", "json"] = "text"
    #: other addresses the EHR may call the service by (host aliases, an internal
    #: and an external name): each is also a valid JWT audience
    base_url_aliases: list[str] = Field(default_factory=list)

    @property
    def public_base(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def public_bases(self) -> list[str]:
        """``base_url`` first, then the aliases: every base a JWT ``aud`` may start with."""
        return [self.public_base, *(a.rstrip("/") for a in self.base_url_aliases)]


class StoreSettings(_Section):
    url: str = "sqlite:///runform-traces.db"
    #: who commits the service's traces: ``process``, a child process of each service
    #: process (beside the event loop, on another core), or ``thread``, a thread of the
    #: service process (one process fewer; slower under load: it shares the GIL)
    writer: Literal["process", "thread"] = "process"


class PackSettings(_Section):
    dir: Path = Path("rule_packs")
    allow_drafts: bool = False
    #: seconds between checks of the pack folder for changed files (0: no hot reload)
    watch_interval_s: float = Field(default=2.0, ge=0)


class AuthClient(_Section):
    iss: str
    jwks_file: Path | None = None
    jku: str | None = None
    #: a client with pinned keys (jwks_file) whose JWTs carry a ``jku`` header, as real
    #: clients do: empty, the header is ignored (the pinned keys decide); listed, it must
    #: be one of these. Keys are never fetched from a JWT's own jku.
    accepted_jku: list[str] = Field(default_factory=list)
    tenants: list[str] = Field(default_factory=list)
    #: the FHIR base URLs this client may name as ``fhirServer`` (none: the service
    #: never fetches for it; prefetch must then be complete)
    fhir_servers: list[str] = Field(default_factory=list)
    #: how searches the service makes itself name the patient: ``id`` (``patient=123``,
    #: as the CDS Hooks examples) or ``reference`` (``patient=Patient/123``) for servers
    #: that match only typed references (Medplum's in-memory repository is one)
    patient_search: Literal["id", "reference"] = "id"

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthClient:
        if (self.jwks_file is None) == (self.jku is None):
            raise ValueError(f"auth client {self.iss!r}: set exactly one of jwks_file or jku")
        return self

    @field_validator("jku")
    @classmethod
    def _https_jku(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("https://"):
            raise ValueError(
                "jku must be an https:// URL (keys fetched over plain http can be forged)"
            )
        return v

    @field_validator("fhir_servers")
    @classmethod
    def _plain_bases(cls, v: list[str]) -> list[str]:
        out = []
        for url in v:
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError(f"fhir_servers: {url!r} is not an absolute http(s) URL")
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ValueError(
                    f"fhir_servers: {url!r} may not carry credentials, query or fragment"
                )
            out.append(url.rstrip("/"))
        return out


class AuthSettings(_Section):
    required: bool = True
    clients: list[AuthClient] = Field(default_factory=list)
    algorithms: list[str] = Field(default_factory=lambda: ["ES384", "RS384"])
    clock_skew_s: int = Field(default=30, ge=0, le=300)
    max_token_lifetime_s: int = Field(default=3600, gt=0)
    jwks_cache_s: int = Field(default=300, ge=0)

    @model_validator(mode="after")
    def _asymmetric_only(self) -> AuthSettings:
        allowed = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384"}
        bad = [alg for alg in self.algorithms if alg not in allowed]
        if bad:
            raise ValueError(f"auth.algorithms: {bad} not allowed (no 'none', no HMAC)")
        return self


class FhirSettings(_Section):
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    max_pages: int = Field(default=10, ge=1, le=1000)
    page_size: int = Field(default=100, ge=1, le=1000)
    #: bytes of FHIR responses one call may read, across every page and key
    max_response_bytes: int = Field(default=10_000_000, ge=1000)
    #: development only: allow fhir_servers over plain http on a loopback address
    allow_http_loopback: bool = False


class CorsSettings(_Section):
    origins: list[str] = Field(default_factory=list)


class ViewerUser(_Section):
    name: str = Field(min_length=1)
    password_hash: str = Field(pattern=r"^pbkdf2_sha256\$\d+\$[0-9a-f]+\$[0-9a-f]+$")


class ViewerSettings(_Section):
    users: list[ViewerUser] = Field(default_factory=list)
    session_secret: str | None = Field(default=None, min_length=32)
    session_minutes: int = Field(default=60, ge=1, le=24 * 60)
    #: failed logins allowed per user name, and per client address, within lockout_minutes
    max_failures_per_user: int = Field(default=5, ge=1)
    max_failures_per_address: int = Field(default=20, ge=1)
    lockout_minutes: float = Field(default=15, gt=0)

    @property
    def enabled(self) -> bool:
        return bool(self.users)


class StationSettings(_Section):
    """The gait-retraining station (``runform-cds retrain``)."""

    #: where the station listens; the runner's screen and the console are its pages
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    #: the station's address as the clinic reaches it; set, the CDS service's retraining
    #: cards link to its console for the patient (unset: no link)
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    #: the key that opens its pages (unset: a new random key each start, printed)
    key: str | None = Field(default=None, min_length=16)
    #: one folder per patient: each session's FHIR Bundle and report
    records_dir: Path = Path("station-records")
    #: FHIR server for the console's defaults and for --post (unset: neither)
    fhir_base: str | None = Field(default=None, pattern=r"^https?://")
    #: a fading schedule file (unset: the bundled default)
    schedule: Path | None = None


class Settings(_Section):
    """The whole configuration. Defaults run the service on embedded storage."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    packs: PackSettings = Field(default_factory=PackSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    viewer: ViewerSettings = Field(default_factory=ViewerSettings)
    measures: MeasureSettings = Field(default_factory=MeasureSettings)
    station: StationSettings = Field(default_factory=StationSettings)

    @model_validator(mode="after")
    def _fhir_servers_over_https(self) -> Settings:
        for client in self.auth.clients:
            for url in client.fhir_servers:
                if url.startswith("https://"):
                    continue
                if not (self.fhir.allow_http_loopback and is_loopback_url(url)):
                    raise ValueError(
                        f"auth client {client.iss!r}: fhir_servers entry {url!r} must be https "
                        "(plain http only on a loopback address with fhir.allow_http_loopback)"
                    )
        return self


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    if not settings.packs.dir.is_absolute():
        settings.packs.dir = base / settings.packs.dir
    if not settings.station.records_dir.is_absolute():
        settings.station.records_dir = base / settings.station.records_dir
    schedule = settings.station.schedule
    if schedule is not None and not schedule.is_absolute():
        settings.station.schedule = base / schedule
    if settings.server.ca_file is not None and not settings.server.ca_file.is_absolute():
        settings.server.ca_file = base / settings.server.ca_file
    for client in settings.auth.clients:
        if client.jwks_file is not None and not client.jwks_file.is_absolute():
            client.jwks_file = base / client.jwks_file
    url = settings.store.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        settings.store.url = "sqlite:///" + str(base / url.removeprefix("sqlite:///"))
    return settings


def _format_validation(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


ENV_PREFIX = "RUNFORM_CDS__"


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``RUNFORM_CDS__SECTION__KEY=value`` as nested settings: every key can be set from
    the environment (containers, secrets). A value that parses as JSON is taken as JSON
    (numbers, true/false, lists, objects); anything else is a string."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name.removeprefix(ENV_PREFIX).split("__") if p]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {part} is set both as a value and as a section")
        node[path[-1]] = value
    return out


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(path: Path | str | None = None) -> Settings:
    """Load settings from ``path``, else ``$RUNFORM_CDS_CONFIG``, else defaults; then
    ``RUNFORM_CDS__SECTION__KEY`` environment variables override single keys."""
    if path is None:
        env = os.environ.get(CONFIG_ENV_VAR)
        path = Path(env) if env else None
    data: dict[str, Any] = {}
    where, base = Path("(defaults)"), Path.cwd()
    if path is not None:
        where = path = Path(path)
        base = path.resolve().parent
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    overrides = env_overrides(os.environ)
    if overrides:
        data = _merged(data, overrides)
        where = Path(f"{where} + {ENV_PREFIX}* environment variables")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(where, exc)) from exc
    return _resolve_paths(settings, base)
