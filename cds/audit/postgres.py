"""PostgreSQL trace store: the scale-out backend.

Several service processes may append at once: every append transaction first
takes a transaction-scoped advisory lock, so the chain stays one sequence.
Commits are durable (``synchronous_commit`` on) except for the replay cache,
which does not need it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg

from cds.audit.schema import FACETS_TEMPLATE, SCHEMA_TEMPLATE
from cds.audit.sql import SqlTraceStore
from cds.audit.store import missing_store
from cds.errors import ConfigError

__all__ = ["PostgresTraceStore"]

_CHAIN_LOCK = 0x52554E46  # "RUNF"
_SCHEMA = SCHEMA_TEMPLATE.format(int="BIGINT", real="DOUBLE PRECISION")
_FACETS = FACETS_TEMPLATE.format(int="BIGINT")
_CLAIM = (
    "INSERT INTO jti_seen (key, expires_at) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
    "SET expires_at = excluded.expires_at WHERE jti_seen.expires_at < %s"
)


def _split_schema(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", [None])[0]
    if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ConfigError(f"store.url: schema {schema!r} must be a lower-case SQL identifier")
    rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresTraceStore(SqlTraceStore):
    P = "%s"

    def __init__(self, url: str, *, create: bool = True, migrate: bool = False) -> None:
        super().__init__()
        dsn, schema = _split_schema(url)
        try:
            self._db = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise ConfigError(f"store.url: cannot connect to PostgreSQL: {exc}") from exc
        if not create:
            self._require_tables(url, schema)
            if not migrate:
                self._check_version(url)
                return
        with self._db.transaction(), self._db.cursor() as cur:
            # one process at a time creates or migrates: the others wait, then find it done
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK,))
            if schema:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                cur.execute(f'SET search_path TO "{schema}"')
            cur.execute(_SCHEMA)
            cur.execute(_FACETS)
            self._migrate(cur)
        if schema:
            self._db.execute(f'SET search_path TO "{schema}"')

    def _require_tables(self, url: str, schema: str | None) -> None:
        found = self._db.execute(
            "SELECT to_regclass(%s)", (f'"{schema}".records' if schema else "records",)
        ).fetchone()
        if found is None or found[0] is None:
            self._db.close()
            where = f"schema {schema}" if schema else "the database's search path"
            raise missing_store(url, f"no trace tables in {where}")
        if schema:
            self._db.execute(f'SET search_path TO "{schema}"')

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK,))
            yield cur

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._lock, self._db.cursor() as cur:
            yield cur

    def _claim(self, key: str, expires_at: float, now: float) -> bool:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit TO OFF")
            cur.execute(_CLAIM, (key, expires_at, now))
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
