"""The ``runform-cds`` command line. Thin: parse arguments, call the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cds.errors import CdsError, PackError
from cds.measures.commands import add_commands as add_measure_commands

if TYPE_CHECKING:
    from cds.rules.compile import CompiledPack

__all__ = ["main"]


def _settings(path: str | None):  # type: ignore[no-untyped-def]
    from cds.config import load_settings

    return load_settings(Path(path) if path else None)


def _serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from cds.config import CONFIG_ENV_VAR
    from cds.service.app import create_app
    from cds.service.server import server_config

    settings = _settings(args.config)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    if workers == 1:
        uvicorn.Server(server_config(create_app(settings), settings, host=host, port=port)).run()
        return 0
    create_app(settings)  # fail fast, in this process, on a bad pack or store
    if args.config:
        os.environ[CONFIG_ENV_VAR] = str(Path(args.config).resolve())
    config = server_config(
        "cds.service.app:app_from_env",
        settings,
        factory=True,
        workers=workers,
        host=host,
        port=port,
    )
    Multiprocess(config, sockets=[config.bind_socket()]).run()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cds.demo import run_demo

    run_demo(_settings(args.config), port=args.port, keep_serving=not args.exit)
    return 0


def _emit(text: str, out: str | None, what: str) -> None:
    """Write ``text`` to the file ``out``, or to standard output."""
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {what} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _open_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cds.audit.store import open_store

    return open_store(args.store or _settings(args.config).store.url)


def _audit_show(args: argparse.Namespace) -> int:
    from cds.audit.render import render_records

    store = _open_store(args)
    try:
        records = store.records_for(args.hook_instance)
    finally:
        store.close()
    if not records:
        print(f"no trace for hookInstance {args.hook_instance}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                [r.body | {"_kind": r.kind, "_seq": r.seq, "_hash": r.hash} for r in records],
                indent=2,
            )
        )
    else:
        print(render_records(records))
    return 0


def _filter(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cds.audit.store import TraceFilter

    return TraceFilter(
        patient=args.patient,
        since=args.since,
        until=args.until,
        rule=args.rule,
        pack_version=args.pack_version,
        indicator=args.indicator,
        outcome=args.outcome,
        limit=args.limit,
    )


def _audit_list(args: argparse.Namespace) -> int:
    from cds.audit.render import render_list

    store = _open_store(args)
    try:
        items = store.search(_filter(args))
    finally:
        store.close()
    print(render_list(items))
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    from cds.audit.export import Pseudonymiser, to_csv, to_fhir_bundle

    key = None
    if args.pseudonymise:
        key = (args.pseudonym_key or os.environ.get("RUNFORM_CDS_PSEUDONYM_KEY", "")).encode()
        if not key:
            print(
                "runform-cds: --pseudonymise needs --pseudonym-key or $RUNFORM_CDS_PSEUDONYM_KEY",
                file=sys.stderr,
            )
            return 2
    store = _open_store(args)
    try:
        items = store.search(_filter(args))
    finally:
        store.close()
    pseudo = Pseudonymiser(key)
    text = (
        to_csv(items, pseudo)
        if args.format == "csv"
        else json.dumps(to_fhir_bundle(items, pseudo), indent=2)
    )
    _emit(text, args.out, f"{len(items)} trace(s)")
    return 0


def _audit_keygen(args: argparse.Namespace) -> int:
    from cds.audit.keys import write_keypair

    private, public = write_keypair(Path(args.out))
    print(f"private key: {private} (keep it off the database host)\npublic key:  {public}")
    return 0


def _audit_checkpoint(args: argparse.Namespace) -> int:
    from cds.audit.chain import sign_checkpoint
    from cds.audit.keys import load_private_key

    store = _open_store(args)
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


def _audit_verify(args: argparse.Namespace) -> int:
    from cds.audit.verify import verify_store

    store = _open_store(args)
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


def _audit_hash_password(args: argparse.Namespace) -> int:
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


def _pack_files(path: Path) -> list[Path]:
    from cds.rules.load import find_pack_files

    return find_pack_files(path) if path.is_dir() and not (path / "pack.yaml").exists() else [path]


def _each_pack(path: Path, check: Callable[[Path, CompiledPack], int]) -> int:
    """Load every pack under ``path`` and ``check`` it (returning its failure count);
    exit code 1 if any pack failed to load or check, or there was none."""
    from cds.rules.load import load_pack

    files = _pack_files(path)
    failed = 0
    for file in files:
        try:
            compiled = load_pack(file)
        except CdsError as exc:
            print(exc.message, file=sys.stderr)
            failed += 1
            continue
        failed += check(file, compiled)
    return 1 if failed or not files else 0


def _report_valid(file: Path, compiled: CompiledPack) -> int:
    p = compiled.pack
    print(
        f"{file}: OK  {p.id} {p.version} ({p.status}), {len(p.rules)} rules, "
        f"sha256 {compiled.sha256[:16]}…"
    )
    return 0


def _run_pack_scenarios(file: Path, compiled: CompiledPack) -> int:
    from cds.rules.load import scenarios_path
    from cds.rules.scenario import run_scenarios

    p, scenarios = compiled.pack, compiled.scenarios
    if scenarios is None or not scenarios.scenarios:
        print(f"{p.id} {p.version}: no scenarios (write them in {scenarios_path(file)})")
        return 1
    results = run_scenarios(compiled, scenarios)
    print(f"{p.id} {p.version}: {len(results)} scenarios")
    for res in results:
        print(f"  {'PASS' if res.passed else 'FAIL'}  {res.name}")
        for line in res.diff():
            print(f"          {line}")
    shown = {
        r for sc in scenarios.scenarios for c in sc.expect for r in (c.rule, *(c.attached or []))
    }
    untested = [r.rule.id for r in compiled.rules if r.rule.id not in shown]
    if untested:
        print(f"  note: no scenario expects {', '.join(untested)}")
    bad = sum(not r.passed for r in results)
    print(f"  {len(results) - bad} passed, {bad} failed")
    return bad


def _packs_validate(args: argparse.Namespace) -> int:
    return _each_pack(Path(args.path), _report_valid)


def _packs_test(args: argparse.Namespace) -> int:
    return _each_pack(Path(args.path), _run_pack_scenarios)


def _packs_explain(args: argparse.Namespace) -> int:
    from cds.rules.load import load_pack
    from cds.rules.review import explain_pack

    pack = load_pack(args.path).pack
    try:
        print(explain_pack(pack, args.rule), end="")
    except KeyError:
        known = ", ".join(r.id for r in pack.rules)
        raise PackError(f"{args.path}: no rule {args.rule!r} (rules: {known})") from None
    return 0


def _packs_diff(args: argparse.Namespace) -> int:
    from cds.rules.load import load_pack
    from cds.rules.review import diff_packs

    old = load_pack(args.old, with_scenarios=False).pack
    new = load_pack(args.new, with_scenarios=False).pack
    print("\n".join(diff_packs(old, new)))
    return 0


def _packs_schema(args: argparse.Namespace) -> int:
    from cds.rules.pack import Pack
    from cds.rules.scenario import ScenarioFile

    model = ScenarioFile if args.scenarios else Pack
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "runform-cds " + ("scenarios file" if args.scenarios else "rule pack")
    _emit(json.dumps(schema, indent=2) + "\n", args.out, "the schema")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runform-cds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the CDS Hooks service")
    serve.add_argument("--host", help="interface to bind (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument("--config", help="TOML config file (default: $RUNFORM_CDS_CONFIG)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="start the service with a demo EHR client and show cards")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--config", help="TOML config file (default: embedded defaults)")
    demo.add_argument("--exit", action="store_true", help="stop after showing the demo")
    demo.set_defaults(func=_demo)

    packs = sub.add_parser("packs", help="tools for the people who edit rule packs")
    packs_sub = packs.add_subparsers(dest="packs_command", required=True)
    validate = packs_sub.add_parser("validate", help="check a pack file or a folder of packs")
    validate.add_argument("path")
    validate.set_defaults(func=_packs_validate)
    test = packs_sub.add_parser("test", help="run a pack's scenarios through the real engine")
    test.add_argument("path", help="pack file, pack folder or folder of packs")
    test.set_defaults(func=_packs_test)
    explain = packs_sub.add_parser("explain", help="show rules in plain language for review")
    explain.add_argument("path", help="pack file or pack folder")
    explain.add_argument("rule", nargs="?", help="one rule id (default: every rule)")
    explain.set_defaults(func=_packs_explain)
    diff = packs_sub.add_parser("diff", help="what changed between two versions of a pack")
    diff.add_argument("old", help="the old pack file or folder")
    diff.add_argument("new", help="the new pack file or folder")
    diff.set_defaults(func=_packs_diff)
    schema = packs_sub.add_parser("schema", help="write the JSON Schema of the pack format")
    schema.add_argument("--out", help="file to write (default: standard output)")
    schema.add_argument(
        "--scenarios", action="store_true", help="the schema of a scenarios file instead"
    )
    schema.set_defaults(func=_packs_schema)

    add_measure_commands(sub)

    audit = sub.add_parser("audit", help="read, verify and export the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)

    def store_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML config file (default: $RUNFORM_CDS_CONFIG)")
        p.add_argument("--store", help="store URL (default: store.url of the config)")
        return p

    def filter_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--patient", help="patient id or Patient/id")
        p.add_argument("--since", help="ISO 8601 time, inclusive")
        p.add_argument("--until", help="ISO 8601 time, exclusive")
        p.add_argument("--rule", help="a rule id that fired")
        p.add_argument("--pack-version", help="rule-pack version")
        p.add_argument("--indicator", choices=["info", "warning", "critical"])
        p.add_argument(
            "--outcome",
            choices=["accepted", "overridden", "none", "error"],
            help="clinician feedback (none: no feedback) or error calls",
        )
        p.add_argument("--limit", type=int)

    show = store_args(audit_sub.add_parser("show", help="print the trace(s) of one hookInstance"))
    show.add_argument("hook_instance")
    show.add_argument("--json", action="store_true", help="print the raw JSON records")
    show.set_defaults(func=_audit_show)

    listing = store_args(audit_sub.add_parser("list", help="list traces, filtered"))
    filter_args(listing)
    listing.set_defaults(func=_audit_list)

    export = store_args(audit_sub.add_parser("export", help="export traces as CSV or FHIR"))
    filter_args(export)
    export.add_argument("--format", choices=["csv", "fhir"], default="csv")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.add_argument("--pseudonymise", action="store_true", help="replace patient ids")
    export.add_argument("--pseudonym-key", help="secret for the keyed hash of patient ids")
    export.set_defaults(func=_audit_export)

    verify = store_args(audit_sub.add_parser("verify", help="walk and check the hash chain"))
    verify.add_argument("--public-key", help="Ed25519 public key (PEM) for checkpoints")
    verify.add_argument("--checkpoint", action="append", help="exported checkpoint JSON file")
    verify.set_defaults(func=_audit_verify)

    keygen = audit_sub.add_parser("keygen", help="create an Ed25519 key pair for checkpoints")
    keygen.add_argument("--out", required=True, help="path prefix: writes PREFIX.key, PREFIX.pub")
    keygen.set_defaults(func=_audit_keygen)

    checkpoint = store_args(audit_sub.add_parser("checkpoint", help="sign the chain head"))
    checkpoint.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    checkpoint.add_argument("--out", help="also write the checkpoint JSON to this file")
    checkpoint.set_defaults(func=_audit_checkpoint)

    hashpw = audit_sub.add_parser(
        "hash-password", help="hash a trace-viewer password (read from the terminal or stdin)"
    )
    hashpw.set_defaults(func=_audit_hash_password)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CdsError as exc:
        print(f"runform-cds: {exc.message}", file=sys.stderr)
        return 2
    return code
