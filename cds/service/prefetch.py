"""Prefetch semantics of CDS Hooks 2.0, exactly as the spec's decision table:

* key present with data  -> use it (an OperationOutcome instead of data, or an
  error-level OperationOutcome inside a Bundle, counts as "not provided");
* key present with null  -> no data; do not fetch;
* key absent             -> fetch from ``fhirServer`` within the time budget;
* cannot obtain          -> :class:`PrefetchError` (HTTP 412).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from cds.errors import PrefetchError
from cds.fhir.fetch import FetchError, FhirFetcher
from cds.service.hooks import OPTIONAL_PREFETCH, PREFETCH, HookRequest, resolve_template

__all__ = ["Prefetched", "resolve_prefetch"]


@dataclass
class Prefetched:
    data: dict[str, Any | None] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _outcome_problem(value: Any) -> str | None:
    """Why a provided prefetch value cannot be used as data, if it cannot."""
    if not isinstance(value, dict):
        return "not a JSON object"
    if value.get("resourceType") == "OperationOutcome":
        return "the client sent an OperationOutcome instead of data"
    if value.get("resourceType") == "Bundle":
        for entry in value.get("entry") or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict) and res.get("resourceType") == "OperationOutcome":
                levels = {i.get("severity") for i in res.get("issue") or [] if isinstance(i, dict)}
                if levels & {"error", "fatal"}:
                    return "the Bundle carries an error OperationOutcome"
    return None


def _has_next(value: Any) -> bool:
    return isinstance(value, dict) and any(
        isinstance(link, dict) and link.get("relation") == "next"
        for link in value.get("link") or []
    )


async def _resolve_key(
    key: str, template: str, req: HookRequest, fetcher: FhirFetcher | None, out: Prefetched
) -> None:
    provided = req.prefetch or {}
    if key in provided and provided[key] is None:
        out.data[key], out.how[key] = None, "null (client has no data)"
        return
    if key in provided:
        problem = _outcome_problem(provided[key])
        if problem is None:
            value = provided[key]
            if _has_next(value):
                if fetcher is None:
                    raise PrefetchError(
                        f"prefetch {key!r} is paginated and there is no fhirServer to follow it",
                        expression=f"prefetch.{key}",
                    )
                await fetcher.complete(value)
                out.how[key] = "provided (pages followed)"
            else:
                out.how[key] = "provided"
            out.data[key] = value
            return
        out.notes.append(f"prefetch {key}: {problem}; fetching instead")
    if fetcher is None:
        raise PrefetchError(
            f"prefetch key {key!r} was not provided and no fhirServer was given to fetch it",
            expression=f"prefetch.{key}",
        )
    out.data[key] = await fetcher.read(resolve_template(template, req))
    out.how[key] = "fetched"


async def resolve_prefetch(
    req: HookRequest, client: httpx.AsyncClient, *, timeout_s: float, max_pages: int
) -> Prefetched:
    """Every prefetch key's data, or :class:`PrefetchError`, within ``timeout_s`` in total."""
    fetcher = None
    if req.fhirServer:
        token = req.fhirAuthorization.access_token if req.fhirAuthorization else None
        fetcher = FhirFetcher(client, req.fhirServer, token, max_pages=max_pages)
    out = Prefetched()
    deadline = asyncio.get_running_loop().time() + timeout_s
    for key, template in PREFETCH.items():
        try:
            async with asyncio.timeout_at(deadline):
                await _resolve_key(key, template, req, fetcher, out)
        except (TimeoutError, FetchError, PrefetchError) as exc:
            reason = _reason(exc, timeout_s)
            if key not in OPTIONAL_PREFETCH:
                if isinstance(exc, PrefetchError):
                    raise
                raise PrefetchError(reason, expression=f"prefetch.{key}") from None
            out.data[key] = None
            out.how[key] = f"unavailable (optional): {reason}"
    return out


def _reason(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"the FHIR server did not provide the data within {timeout_s:g} s"
    if isinstance(exc, PrefetchError):
        return exc.message
    return f"could not fetch required FHIR data: {exc}"
