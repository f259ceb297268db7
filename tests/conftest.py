from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from cds.audit.store import TraceStore, open_store
from cds.client import CdsClient, JwtSigner
from cds.config import Settings
from cds.rules.compile import CompiledPack
from cds.rules.load import load_pack
from cds.service.app import create_app
from tests.servers import FhirBehaviour, fhir_app, free_port, in_process_transport, serve

ROOT = Path(__file__).resolve().parent.parent
CORE_PACK = ROOT / "rule_packs" / "runform-core"
#: the real PostgreSQL the tests use: 127.0.0.1:5432, or scripts/test's throw-away cluster
PG_BASE = os.environ.get("RUNFORM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ES_ISSUER = "https://ehr-es.example.org"
RS_ISSUER = "https://ehr-rs.example.org"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNFORM_CDS_CONFIG", raising=False)


@pytest.fixture(scope="session")
def core_pack() -> CompiledPack:
    return load_pack(CORE_PACK)


@pytest.fixture(scope="session")
def es_signer() -> JwtSigner:
    return JwtSigner(iss=ES_ISSUER, alg="ES384")


@pytest.fixture(scope="session")
def rs_signer() -> JwtSigner:
    return JwtSigner(iss=RS_ISSUER, alg="RS384")


class LiveService:
    """The service under test: in-process (``url`` is ``IN_PROCESS_BASE``, no socket) or
    on a real loopback port. ``client`` calls it as the ES384 EHR client."""

    def __init__(
        self,
        url: str,
        store: TraceStore,
        settings: Settings,
        signer: JwtSigner,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.store = store
        self.settings = settings
        self._transport = transport  # None: over the port
        self.client = CdsClient(url, signer, http=self.fresh())
        self.app: Any = None  # the ASGI app serving (its state holds the Runtime)

    def post(self, service_id: str, body: Any) -> Any:
        return self.client.call(service_id, body)

    def fresh(self, **kwargs: Any) -> httpx.Client:
        """A new HTTP client to the service, with its own cookies."""
        return httpx.Client(base_url=self.url, transport=self._transport, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.fresh() as http:
            return http.get(path, **kwargs)

    def post_raw(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.fresh() as http:
            return http.post(path, **kwargs)

    def cds_client(self, signer: JwtSigner | None) -> CdsClient:
        """Another EHR client of the service (another issuer or key)."""
        return CdsClient(self.url, signer, http=self.fresh())


def _settings(
    tmp_path: Path,
    es_signer: JwtSigner,
    rs_signer: JwtSigner,
    base_url: str,
    fhir_servers: tuple[str, ...],
    client_options: dict[str, Any] | None,
    overrides: dict[str, Any],
) -> Settings:
    """The test service's settings: both test clients, a fresh SQLite store, the packs."""
    es = es_signer.write_jwks(tmp_path / "es-jwks.json")
    rs = rs_signer.write_jwks(tmp_path / "rs-jwks.json")
    allowed = list(fhir_servers)
    data: dict[str, Any] = {
        "server": {"base_url": base_url},
        "store": {"url": f"sqlite:///{tmp_path / f'traces-{uuid.uuid4().hex[:8]}.db'}"},
        "packs": {"dir": str(ROOT / "rule_packs")},
        "auth": {
            "clients": [
                {"iss": iss, "jwks_file": str(keys), "fhir_servers": allowed}
                | (client_options or {})
                for iss, keys in ((ES_ISSUER, es), (RS_ISSUER, rs))
            ]
        },
        "fhir": {"timeout_s": 1.0, "allow_http_loopback": bool(allowed)},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return Settings.model_validate(data)


@pytest.fixture
def service_factory(tmp_path: Path, es_signer: JwtSigner, rs_signer: JwtSigner) -> Iterator[Any]:
    """Start the real service, in-process or (``real_port=True``) on a loopback port;
    yields a factory taking settings overrides."""
    with contextlib.ExitStack() as stack:

        def start(
            fhir_servers: tuple[str, ...] = (),
            client_options: dict[str, Any] | None = None,
            real_port: bool = False,
            **overrides: Any,
        ) -> LiveService:
            """``fhir_servers``: FHIR bases on loopback the test clients may have us fetch
            from; ``client_options``: more settings for both test clients; ``real_port``:
            serve over a socket (what only uvicorn does: timeouts, connection limits)."""
            port = free_port() if real_port else None
            base = f"http://127.0.0.1:{port}" if port else IN_PROCESS_BASE
            settings = _settings(tmp_path, es_signer, rs_signer, base, fhir_servers,
                                 client_options, overrides)  # fmt: skip
            live = stack.enter_context(_service(settings, es_signer, port))
            stack.callback(live.client.close)
            return live

        yield start


#: the in-process service's base URL: never listened on, and on loopback, so that a
#: test that sent to it over the network by mistake would stay on this machine
IN_PROCESS_BASE = "http://127.0.0.1:9"


@contextlib.contextmanager
def _service(settings: Settings, signer: JwtSigner, port: int | None) -> Iterator[LiveService]:
    store = open_store(settings.store.url)
    app = create_app(settings, store=store)
    if port is not None:
        with serve(app, port, settings) as url:
            live = LiveService(url, store, settings, signer)
            live.app = app
            yield live
        return
    with in_process_transport(app) as transport:
        live = LiveService(IN_PROCESS_BASE, store, settings, signer, transport)
        live.app = app
        yield live


@contextlib.contextmanager
def in_process_service(
    tmp: Path, es_signer: JwtSigner, rs_signer: JwtSigner, **overrides: Any
) -> Iterator[LiveService]:
    """The service's app called in-process through httpx's ASGITransport: no port, no
    server thread, its lifespan running."""
    settings = _settings(tmp, es_signer, rs_signer, IN_PROCESS_BASE, (), None, overrides)
    with _service(settings, es_signer, None) as live:
        yield live


@pytest.fixture(scope="module")
def in_process_live(
    tmp_path_factory: pytest.TempPathFactory, es_signer: JwtSigner, rs_signer: JwtSigner
) -> Iterator[LiveService]:
    """One in-process service for a module whose tests each read only their own calls."""
    with in_process_service(tmp_path_factory.mktemp("service"), es_signer, rs_signer) as live:
        yield live


@pytest.fixture
def live(service_factory: Any) -> LiveService:
    return service_factory()  # type: ignore[no-any-return]


@pytest.fixture
def fhir_server() -> Iterator[tuple[str, FhirBehaviour]]:
    behaviour = FhirBehaviour()
    port = free_port()
    with serve(fhir_app(behaviour), port) as url:
        yield f"{url}/fhir", behaviour


@pytest.fixture
def fhir_live(
    service_factory: Any, fhir_server: tuple[str, FhirBehaviour]
) -> tuple[LiveService, str, FhirBehaviour]:
    """The service, allowed to fetch from a local FHIR server; (service, FHIR base, behaviour)."""
    base, behaviour = fhir_server
    return service_factory(fhir_servers=(base,)), base, behaviour


def pg_available() -> bool:
    import psycopg

    try:
        psycopg.connect(PG_BASE, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the real PostgreSQL at 127.0.0.1:5432, dropped afterwards."""
    import uuid

    import psycopg

    if not pg_available():
        pytest.fail("PostgreSQL at 127.0.0.1:5432 is required for this test")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{PG_BASE}?schema={schema}"
    with psycopg.connect(PG_BASE, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- a real headless Chromium (Debian's chromium + chromedriver) ---


@pytest.fixture(scope="session")
def chrome_paths() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("Debian's chromium and chromium-driver are needed (scripts/test installs them)")
    return browser, driver


@pytest.fixture
def browser(chrome_paths: tuple[str, str], tmp_path: Path) -> Iterator[webdriver.Chrome]:
    os.environ["SE_OFFLINE"] = "true"  # never let selenium try to download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome_paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chrome_paths[1]), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
