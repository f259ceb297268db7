"""One helper for the typed records a trace holds (see :mod:`cds.audit.trace`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar, cast

__all__ = ["drop_empty"]

Entry = TypeVar("Entry", bound=Mapping[str, object])


def drop_empty(entry: Entry) -> Entry:
    """``entry`` without its None and empty-list values (a trace leaves them out)."""
    return cast(Entry, {k: v for k, v in entry.items() if v is not None and v != []})
