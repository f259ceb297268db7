"""Turn what an auditor typed (CLI options or viewer fields) into a :class:`TraceFilter`.

Times are stored in UTC; a date or time without an offset is taken as UTC. A
date alone means the whole day: ``--since 2026-11-29 --until 2026-11-29`` is
that one day.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from cds.audit.store import TraceFilter
from cds.errors import AuditQueryError

__all__ = ["DATE_FORMAT_HELP", "make_filter", "parse_when"]

DATE_FORMAT_HELP = (
    "use YYYY-MM-DD (a whole day, UTC) or YYYY-MM-DDTHH:MM[:SS] with an optional "
    "offset such as Z or +01:00, e.g. 2026-11-29 or 2026-11-29T14:30+01:00"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?")


def parse_when(text: str, option: str, *, end: bool = False) -> str:
    """``text`` as an ISO 8601 UTC time to compare with stored ``recorded_at`` values.

    With ``end`` (an exclusive upper bound), a date alone means the end of that day.
    """
    value = text.strip()
    try:
        if _ISO_DATE.fullmatch(value):
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return (moment + timedelta(days=1) if end else moment).isoformat()
        if _ISO_TIME.fullmatch(value):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC).isoformat()
    except ValueError as exc:  # the right shape, an impossible date: 2026-13-45
        raise AuditQueryError(f"{option}: {text!r} is not a real date ({exc}); {DATE_FORMAT_HELP}",
                              expression=option) from None  # fmt: skip
    raise AuditQueryError(f"{option}: {text!r} is not a date; {DATE_FORMAT_HELP}",
                          expression=option)  # fmt: skip


def make_filter(
    *,
    patient: str | None = None,
    hook_instance: str | None = None,
    since: str | None = None,
    until: str | None = None,
    rule: str | None = None,
    pack_version: str | None = None,
    indicator: str | None = None,
    outcome: str | None = None,
    limit: int | None = None,
    names: tuple[str, str] = ("--since", "--until"),
) -> TraceFilter:
    """A filter from typed text; dates are checked and normalised (``names`` are the
    option or field names used in messages)."""
    start = parse_when(since, names[0]) if since else None
    stop = parse_when(until, names[1], end=True) if until else None
    if start and stop and start >= stop:
        raise AuditQueryError(
            f"{names[0]} {since} is not before {names[1]} {until}: no trace can match",
            expression=names[0],
        )
    if limit is not None and limit < 1:
        raise AuditQueryError("--limit must be at least 1", expression="--limit")
    return TraceFilter(
        patient=patient or None,
        hook_instance=hook_instance or None,
        since=start,
        until=stop,
        rule=rule or None,
        pack_version=pack_version or None,
        indicator=indicator or None,
        outcome=outcome or None,
        limit=limit,
    )
