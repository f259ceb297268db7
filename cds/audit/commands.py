"""``runform-cds audit …``: read, verify and export the audit trail.

Every command that reads traces opens the store without creating it, and says
on standard error which store it read and how many records it holds: a
mistyped path is an error, never an empty "OK".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cds._output import emit
from cds.errors import AuditQueryError

__all__ = ["add_commands"]


def _store_url(args: argparse.Namespace) -> tuple[str, str]:
    """The store URL and where it came from."""
    from cds.config import CONFIG_ENV_VAR, load_settings

    if args.store:
        return args.store, "--store"
    if args.config:
        return load_settings(Path(args.config)).store.url, f"--config {args.config}"
    env = os.environ.get(CONFIG_ENV_VAR)
    if env:
        return load_settings(Path(env)).store.url, f"${CONFIG_ENV_VAR} ({env})"
    return load_settings(None).store.url, "the default settings, in this folder"


def _open(args: argparse.Namespace) -> Any:
    from cds.audit.store import open_store, safe_url

    url, origin = _store_url(args)
    store = open_store(url, create=False)
    print(f"store: {safe_url(url)} (from {origin}): {store.count()} records", file=sys.stderr)
    return store


def _hook_instance(store: Any, typed: str) -> str:
    """The one recorded hookInstance that ``typed`` is, or is a unique prefix of."""
    found = store.hook_instances(typed, limit=6)
    if typed in found or len(found) == 1:
        return typed if typed in found else str(found[0])
    if not found:
        raise AuditQueryError(f"no trace for hookInstance {typed!r}", expression="hook_instance")
    listed = ", ".join(found[:5]) + (" …" if len(found) > 5 else "")
    raise AuditQueryError(
        f"hookInstance {typed!r} is the start of several calls ({listed}); type more of it",
        expression="hook_instance",
    )


def _show(args: argparse.Namespace) -> int:
    from cds.audit.render import render_records

    store = _open(args)
    try:
        records = store.records_for(_hook_instance(store, args.hook_instance))
        integrity = store.integrity([r.seq for r in records])
    finally:
        store.close()
    if args.json:
        print(json.dumps([r.body | {"_kind": r.kind, "_seq": r.seq, "_hash": r.hash,
                                    "_verifies": integrity[r.seq] is None} for r in records],
                         indent=2))  # fmt: skip
    else:
        print(render_records(records, integrity))
    return 0 if all(v is None for v in integrity.values()) else 1


def _filter(args: argparse.Namespace) -> Any:
    from cds.audit.query import make_filter

    return make_filter(
        patient=args.patient,
        hook_instance=args.hook_instance,
        since=args.since,
        until=args.until,
        rule=args.rule,
        pack_version=args.pack_version,
        indicator=args.indicator,
        outcome=args.outcome,
        limit=args.limit,
    )


def _search(args: argparse.Namespace) -> tuple[list[Any], dict[int, str | None]]:
    where = _filter(args)  # a bad date is refused before the store is touched
    store = _open(args)
    try:
        items = store.search(where)
        integrity = store.integrity([r.seq for rec, fb in items for r in (rec, *fb)])
    finally:
        store.close()
    return items, integrity


def _list(args: argparse.Namespace) -> int:
    """Streams: a page of traces is read, checked and printed before the next is read."""
    from cds.audit.render import list_lines

    where = _filter(args)  # a bad date is refused before the store is touched
    store = _open(args)
    try:
        pages = (
            (page, store.integrity([r.seq for rec, fb in page for r in (rec, *fb)]))
            for page in store.iter_pages(where)
        )
        for line in list_lines(pages, rule=args.rule):
            print(line)
    finally:
        store.close()
    return 0


def _pseudonymiser(args: argparse.Namespace) -> Any:
    from cds.audit.pseudonym import PSEUDONYM_KEY_ENV, Pseudonymiser

    if args.pseudonym_key and not args.pseudonymise:
        raise AuditQueryError(
            "--pseudonym-key is only used with --pseudonymise: add --pseudonymise, or drop the "
            "key (an export with real ids was probably not intended)",
            expression="--pseudonym-key",
        )
    if not args.pseudonymise:
        return Pseudonymiser(None)
    key = args.pseudonym_key or os.environ.get(PSEUDONYM_KEY_ENV, "")
    if not key:
        raise AuditQueryError(
            f"--pseudonymise needs a key: --pseudonym-key or ${PSEUDONYM_KEY_ENV}",
            expression="--pseudonym-key",
        )
    return Pseudonymiser(key.encode())


def _export(args: argparse.Namespace) -> int:
    from cds.audit.export import to_csv, to_fhir_bundle

    pseudo = _pseudonymiser(args)
    items, integrity = _search(args)
    broken = sum(1 for problem in integrity.values() if problem)
    if broken:
        print(f"warning: {broken} exported record(s) do NOT verify; run `audit verify`",
              file=sys.stderr)  # fmt: skip
    items = pseudo.items(items)
    text = to_csv(items) if args.format == "csv" else json.dumps(to_fhir_bundle(items), indent=2)
    emit(text, args.out, f"{len(items)} trace(s)")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from cds.audit.schema import SCHEMA_VERSION
    from cds.audit.store import open_store, safe_url

    url, origin = _store_url(args)
    store = open_store(url, create=False, migrate=True)
    try:
        chain = store.verify()
        state = "OK" if chain.ok else "BROKEN: run audit verify"
        print(f"store: {safe_url(url)} (from {origin}): at schema version {SCHEMA_VERSION}, "
              f"{store.count()} records, chain {state}")  # fmt: skip
    finally:
        store.close()
    return 0 if chain.ok else 1


def _keygen(args: argparse.Namespace) -> int:
    from cds.audit.keys import write_keypair

    private, public = write_keypair(Path(args.out))
    print(f"private key: {private} (keep it off the database host)\npublic key:  {public}")
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    from cds.audit.chain import sign_checkpoint
    from cds.audit.keys import load_private_key

    store = _open(args)
    try:
        result = store.verify()
        if not result.ok:
            print(f"refusing to sign a broken chain: {result.problem}", file=sys.stderr)
            return 1
        checkpoint = sign_checkpoint(
            result.head_seq, result.head_hash, load_private_key(Path(args.key))
        )
        store.save_checkpoint(checkpoint)
    finally:
        store.close()
    text = json.dumps(checkpoint.as_dict(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from cds.audit.verify import verify_store

    store = _open(args)
    try:
        report = verify_store(
            store,
            public_key=Path(args.public_key) if args.public_key else None,
            checkpoint_files=[Path(p) for p in args.checkpoint or []],
        )
    finally:
        store.close()
    print(report.text)
    return 0 if report.ok else 1


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    from cds.audit.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("viewer password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        print("runform-cds: use at least 12 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _store_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", help="TOML config file (default: $RUNFORM_CDS_CONFIG)")
    p.add_argument("--store", help="store URL (default: store.url of the config)")
    return p


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patient", help="patient id or Patient/id; a prefix, any case")
    p.add_argument("--hook-instance", help="a hookInstance, or the start of one")
    p.add_argument("--since", help="YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][offset], inclusive (UTC)")
    p.add_argument("--until", help="the same; a date alone includes that whole day")
    p.add_argument("--rule", help="a rule id that fired (says whether it showed or was suppressed)")
    p.add_argument("--pack-version", help="rule-pack version")
    p.add_argument("--indicator", choices=["info", "warning", "critical"])
    p.add_argument(
        "--outcome",
        choices=["accepted", "overridden", "none", "error"],
        help="clinician feedback (none: no feedback) or error calls",
    )
    p.add_argument("--limit", type=int)


def add_commands(sub: Any) -> None:
    """Add ``audit`` and its subcommands to the ``runform-cds`` parser."""
    audit = sub.add_parser("audit", help="read, verify and export the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)

    show = _store_args(audit_sub.add_parser("show", help="print the trace(s) of one hookInstance"))
    show.add_argument("hook_instance", help="the hookInstance, or a unique start of it")
    show.add_argument("--json", action="store_true", help="print the raw JSON records")
    show.set_defaults(func=_show)

    listing = _store_args(audit_sub.add_parser("list", help="list traces, filtered"))
    _filter_args(listing)
    listing.set_defaults(func=_list)

    export = _store_args(audit_sub.add_parser("export", help="export traces as CSV or FHIR"))
    _filter_args(export)
    export.add_argument("--format", choices=["csv", "fhir"], default="csv")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.add_argument(
        "--pseudonymise", action="store_true", help="replace every id that leads to a person"
    )
    export.add_argument(
        "--pseudonym-key",
        help="secret of at least 32 bytes for the keyed hash (default: $RUNFORM_CDS_PSEUDONYM_KEY)",
    )
    export.set_defaults(func=_export)

    verify = _store_args(audit_sub.add_parser("verify", help="walk and check the hash chain"))
    verify.add_argument("--public-key", help="Ed25519 public key (PEM) for checkpoints")
    verify.add_argument("--checkpoint", action="append", help="exported checkpoint JSON file")
    verify.set_defaults(func=_verify)

    migrate = _store_args(
        audit_sub.add_parser("migrate", help="bring a store to this release's schema version")
    )
    migrate.set_defaults(func=_migrate)

    keygen = audit_sub.add_parser("keygen", help="create an Ed25519 key pair for checkpoints")
    keygen.add_argument("--out", required=True, help="path prefix: writes PREFIX.key, PREFIX.pub")
    keygen.set_defaults(func=_keygen)

    checkpoint = _store_args(audit_sub.add_parser("checkpoint", help="sign the chain head"))
    checkpoint.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    checkpoint.add_argument("--out", help="also write the checkpoint JSON to this file")
    checkpoint.set_defaults(func=_checkpoint)

    hashpw = audit_sub.add_parser(
        "hash-password", help="hash a trace-viewer password (read from the terminal or stdin)"
    )
    hashpw.set_defaults(func=_hash_password)
