"""Prefetch semantics of CDS Hooks 2.0, exactly as the spec's decision table:

* key present with data  -> use it (an OperationOutcome instead of data, or an
  error-level OperationOutcome inside a Bundle, counts as "not provided");
* key present with null  -> no data; do not fetch;
* key absent             -> fetch from ``fhirServer`` within the time budget;
* cannot obtain          -> :class:`PrefetchError` (HTTP 412).

Data that is present but malformed (a Bundle whose ``entry`` is not a list of
objects, say) is a :class:`RequestError` (400). Fetching goes only to a FHIR
server allowed for the calling client (see :mod:`cds.fhir.fetch`); a 412 names
the prefetch key, and the reason stays in the trace.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from cds.errors import PrefetchError, RequestError
from cds.fhir.fetch import FetchBudget, FetchError, FhirAccess, FhirFetcher
from cds.service.hooks import OPTIONAL_PREFETCH, PREFETCH, HookRequest, resolve_template

__all__ = ["Prefetched", "check_shape", "resolve_prefetch"]


@dataclass
class Prefetched:
    data: dict[str, Any | None] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _list_of_objects(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise RequestError(f"{where} must be an array of objects", expression=where)


def check_shape(value: Any, where: str) -> None:
    """Refuse data that is not a FHIR resource, or a Bundle with malformed entries or links."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise RequestError(f"{where} must be a FHIR resource (a JSON object)", expression=where)
    if value["resourceType"] != "Bundle":
        return
    _list_of_objects(value.get("entry"), f"{where}.entry")
    _list_of_objects(value.get("link"), f"{where}.link")
    for i, entry in enumerate(value.get("entry") or []):
        if "resource" in entry and not isinstance(entry["resource"], dict):
            raise RequestError(
                f"{where}.entry[{i}].resource must be an object",
                expression=f"{where}.entry[{i}].resource",
            )


def _outcome_problem(value: dict[str, Any]) -> str | None:
    """Why a provided prefetch value cannot be used as data, if it cannot."""
    if value.get("resourceType") == "OperationOutcome":
        return "the client sent an OperationOutcome instead of data"
    if value.get("resourceType") == "Bundle":
        for entry in value.get("entry") or []:
            res = entry.get("resource")
            if isinstance(res, dict) and res.get("resourceType") == "OperationOutcome":
                issues = res.get("issue")
                levels = (
                    {i.get("severity") for i in issues if isinstance(i, dict)}
                    if isinstance(issues, list)
                    else set()
                )
                if levels & {"error", "fatal"}:
                    return "the Bundle carries an error OperationOutcome"
    return None


def _has_next(value: dict[str, Any]) -> bool:
    return any(link.get("relation") == "next" for link in value.get("link") or [])


def _unavailable(key: str) -> str:
    return f"the FHIR data for prefetch key {key!r} could not be obtained"


async def _resolve_key(
    key: str,
    template: str,
    req: HookRequest,
    fetcher: FhirFetcher | None,
    out: Prefetched,
    deadline: float,
) -> None:
    """The data for ``key``: as the client sent it, or fetched by ``deadline`` (only a
    fetch sets a timer: most calls send everything)."""
    provided = req.prefetch or {}
    if key in provided and provided[key] is None:
        out.data[key], out.how[key] = None, "null (client has no data)"
        return
    if key in provided:
        value = provided[key]
        check_shape(value, f"prefetch.{key}")
        problem = _outcome_problem(value)
        if problem is None:
            if _has_next(value):
                if fetcher is None:
                    raise FetchError("the prefetch is paginated and cannot be followed")
                async with asyncio.timeout_at(deadline):
                    await fetcher.complete(value)
                out.how[key] = "provided (pages followed)"
            else:
                out.how[key] = "provided"
            out.data[key] = value
            return
        out.notes.append(f"prefetch {key}: {problem}; fetching instead")
    if fetcher is None:
        raise FetchError("the key was not provided and the service may not fetch it")
    query = resolve_template(template, req, typed_patient=fetcher.typed_patient_search)
    async with asyncio.timeout_at(deadline):
        out.data[key] = await fetcher.read(query)
    out.how[key] = "fetched"


def _fetcher(
    req: HookRequest,
    client: httpx.AsyncClient,
    access: FhirAccess | None,
    max_pages: int,
    budget: FetchBudget,
) -> FhirFetcher | str:
    """The fetcher for ``fhirServer``, or why the service may not fetch from it."""
    if not req.fhirServer:
        return "no fhirServer was given"
    if access is None:
        return "this client may not have the service fetch FHIR data"
    try:
        base = access.base_for(req.fhirServer)
    except FetchError as exc:
        return str(exc)
    token = req.fhirAuthorization.access_token if req.fhirAuthorization else None
    return FhirFetcher(
        client,
        base,
        token,
        max_pages=max_pages,
        budget=budget,
        typed_patient_search=access.typed_patient_search,
    )


async def resolve_prefetch(
    req: HookRequest,
    client: httpx.AsyncClient,
    *,
    timeout_s: float,
    max_pages: int,
    access: FhirAccess | None,
    budget: FetchBudget,
) -> Prefetched:
    """Every prefetch key's data, or :class:`PrefetchError`, within ``timeout_s`` in total."""
    made = _fetcher(req, client, access, max_pages, budget)
    fetcher = made if isinstance(made, FhirFetcher) else None
    out = Prefetched()
    deadline = asyncio.get_running_loop().time() + timeout_s
    for key, template in PREFETCH.items():
        try:
            await _resolve_key(key, template, req, fetcher, out, deadline)
        except (TimeoutError, FetchError) as exc:
            reason = _reason(exc, timeout_s, made)
            if key not in OPTIONAL_PREFETCH:
                raise PrefetchError(
                    _unavailable(key), expression=f"prefetch.{key}", detail=reason
                ) from None
            out.data[key] = None
            out.how[key] = f"unavailable (optional): {reason}"
    return out


def _reason(exc: Exception, timeout_s: float, fetcher: FhirFetcher | str) -> str:
    if isinstance(exc, TimeoutError):
        return f"the FHIR server did not provide the data within {timeout_s:g} s"
    why = str(exc)
    return f"{why} ({fetcher})" if isinstance(fetcher, str) else why
