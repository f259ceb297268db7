"""Fetch FHIR data from the CDS client's FHIR server with httpx, and nowhere else.

Used when a prefetch key is absent (or held an OperationOutcome) and to follow
``Bundle.link[next]``. A CDS client names the server (``fhirServer``) and hands
us a token for it, so the service must not become a way to reach other hosts:

* the server must be one of the base URLs configured for the calling client
  (https, or plain http on loopback only when the operator allows it for
  development), and a ``next`` link must stay under that base;
* before each request the host is resolved, and link-local, multicast,
  reserved and unspecified addresses are refused, as are loopback addresses
  unless the allowed base itself is a loopback address;
* redirects are not followed; the bearer token goes only to the allowed base;
* responses are streamed against a byte budget and a resource budget shared
  by the whole call, so one answer cannot exhaust memory;
* a whole fetch has a total time budget and a page cap (see the caller).

Failures raise :class:`FetchError` with the detail for the trace; the caller
answers with a 412 that names only the prefetch key.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

__all__ = ["FetchBudget", "FetchError", "FhirAccess", "FhirFetcher", "is_loopback_url"]


class FetchError(Exception):
    """The data could not be obtained (the service answers 412); the text is for the trace."""


@dataclass(frozen=True)
class FhirAccess:
    """Which FHIR servers the calling client may have us read from."""

    allowed: tuple[str, ...]
    allow_http_loopback: bool = False
    #: search by ``patient=Patient/ID`` rather than ``patient=ID``
    typed_patient_search: bool = False

    def base_for(self, server: str) -> str:
        """The allowed base that ``server`` names, or :class:`FetchError`."""
        parts = urlsplit(server)
        if parts.username or parts.password:
            raise FetchError("fhirServer carries credentials")
        wanted = server.rstrip("/")
        if wanted not in self.allowed:
            raise FetchError(f"fhirServer {wanted} is not allowed for this client")
        if parts.scheme != "https" and not (self.allow_http_loopback and is_loopback_url(server)):
            raise FetchError(f"fhirServer {wanted} is not https")
        return wanted + "/"


@dataclass
class FetchBudget:
    """What one call may still read: bytes and resources, across every key and page."""

    bytes_left: int
    resources_left: int

    def spend_bytes(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise FetchError("FHIR responses exceed the byte budget of a call")

    def spend_resources(self, n: int) -> None:
        self.resources_left -= n
        if self.resources_left < 0:
            raise FetchError("FHIR responses exceed the resource budget of a call")


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names a loopback host (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address, loopback_ok: bool) -> bool:
    if address.is_loopback:
        return not loopback_ok
    return (
        address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
    )


async def _check_destination(url: str, loopback_ok: bool) -> None:
    """Resolve the host of ``url`` and refuse addresses no FHIR server should have."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port)
    except OSError as exc:
        raise FetchError(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if _refused(address, loopback_ok):
            raise FetchError(f"{host} resolves to {address}, which is not allowed")


class FhirFetcher:
    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        token: str | None,
        *,
        max_pages: int,
        budget: FetchBudget,
        typed_patient_search: bool = False,
    ) -> None:
        self.typed_patient_search = typed_patient_search
        self._client = client
        self._base = base_url.rstrip("/") + "/"
        self._headers = {"Accept": "application/fhir+json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._max_pages = max_pages
        self._budget = budget
        self._loopback_ok = is_loopback_url(self._base)

    async def _get(self, url: str) -> dict[str, Any]:
        if not url.startswith(self._base):
            raise FetchError(f"refusing to follow a link outside the FHIR server: {url}")
        await _check_destination(url, self._loopback_ok)
        try:
            async with self._client.stream("GET", url, headers=self._headers) as response:
                if response.status_code == 404:
                    return {}
                if response.status_code != 200:
                    raise FetchError(f"GET {url} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    self._budget.spend_bytes(len(chunk))
                    body += chunk
        except httpx.HTTPError as exc:
            raise FetchError(f"GET {url} failed: {type(exc).__name__}") from exc
        try:
            data = orjson.loads(bytes(body))
        except orjson.JSONDecodeError as exc:
            raise FetchError(f"GET {url} did not return JSON") from exc
        if not isinstance(data, dict) or data.get("resourceType") == "OperationOutcome":
            raise FetchError(f"GET {url} did not return a resource")
        entries = data.get("entry") if data.get("resourceType") == "Bundle" else [data]
        self._budget.spend_resources(len(entries) if isinstance(entries, list) else 1)
        return data

    async def read(self, query: str) -> dict[str, Any] | None:
        """Run a prefetch-style query (relative to the server); follow paging."""
        data = await self._get(urljoin(self._base, query))
        if not data:
            return None
        if data.get("resourceType") == "Bundle":
            await self.complete(data)
        return data

    async def complete(self, bundle: dict[str, Any]) -> None:
        """Follow ``next`` links of ``bundle`` in place, appending their entries."""
        entries: list[Any] = list(bundle.get("entry") or [])
        page, pages = bundle, 1
        while (link := _next_link(page)) is not None:
            if pages >= self._max_pages:
                raise FetchError(f"more than {self._max_pages} pages of results")
            page = await self._get(urljoin(self._base, link))
            if page.get("resourceType") != "Bundle":
                raise FetchError("a next page was not a Bundle")
            entries.extend(page.get("entry") or [])
            pages += 1
        bundle["entry"] = entries
        bundle.pop("link", None)


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None
