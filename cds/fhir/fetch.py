"""Fetch FHIR data from the CDS client's FHIR server with httpx.

Used when a prefetch key is absent (or held an OperationOutcome) and to follow
``Bundle.link[next]``. The bearer token is sent only to the ``fhirServer``
origin, never to a host named in a ``next`` link elsewhere. A whole fetch has a
total time budget and a page cap, so a slow server cannot hang the call.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

__all__ = ["FetchError", "FhirFetcher"]


class FetchError(Exception):
    """The data could not be obtained (the service answers 412)."""


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class FhirFetcher:
    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        token: str | None,
        *,
        max_pages: int,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/") + "/"
        self._headers = {"Accept": "application/fhir+json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._max_pages = max_pages

    async def _get(self, url: str) -> dict[str, Any]:
        if _origin(url) != _origin(self._base):
            raise FetchError(f"refusing to follow a link off the FHIR server: {url}")
        try:
            response = await self._client.get(url, headers=self._headers)
        except httpx.HTTPError as exc:
            raise FetchError(f"GET {url} failed: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return {}
        if response.status_code != 200:
            raise FetchError(f"GET {url} answered HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise FetchError(f"GET {url} did not return JSON") from exc
        if not isinstance(data, dict) or data.get("resourceType") == "OperationOutcome":
            raise FetchError(f"GET {url} did not return a resource")
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
