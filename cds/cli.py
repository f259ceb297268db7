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

from cds._output import emit
from cds.audit.commands import add_commands as add_audit_commands
from cds.errors import CdsError, PackError
from cds.measures.commands import add_commands as add_measure_commands
from cds.station.commands import add_commands as add_station_commands

if TYPE_CHECKING:
    from cds.rules.compile import CompiledPack

__all__ = ["main"]


def _settings(path: str | None):  # type: ignore[no-untyped-def]
    from cds.config import load_settings

    return load_settings(Path(path) if path else None)


def _serve(args: argparse.Namespace) -> int:
    from cds.config import CONFIG_ENV_VAR
    from cds.service.app import create_app
    from cds.service.operations import configure_logging
    from cds.service.server import serve

    settings = _settings(args.config)
    configure_logging(settings.server.log_format)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    app = create_app(settings)
    if workers == 1:
        return serve(app, settings, host=host, port=port)
    # the app above failed fast, here, on a bad pack or store; each worker makes its own
    if args.config:
        os.environ[CONFIG_ENV_VAR] = str(Path(args.config).resolve())
    app_factory = "cds.service.app:app_from_env"
    return serve(app_factory, settings, workers=workers, factory=True, host=host, port=port)


def _demo(args: argparse.Namespace) -> int:
    from cds.demo import run_demo

    run_demo(_settings(args.config), port=args.port, keep_serving=not args.exit)
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
    source = compiled.scenario_source
    for i, res in enumerate(results):
        where = ""
        if not res.passed and source is not None:
            where = f"  ({source.path}:{source.locate(('scenarios', i))[0]})"
        print(f"  {'PASS' if res.passed else 'FAIL'}  {res.name}{where}")
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

    compiled = load_pack(args.path, with_scenarios=False)
    pack = compiled.pack
    try:
        print(explain_pack(compiled, args.rule), end="")
    except KeyError:
        known = ", ".join(r.id for r in pack.rules)
        raise PackError(f"{args.path}: no rule {args.rule!r} (rules: {known})") from None
    return 0


def _packs_diff(args: argparse.Namespace) -> int:
    from cds.rules.load import load_pack
    from cds.rules.review import diff_packs

    diff = diff_packs(load_pack(args.old), load_pack(args.new), scenarios=not args.no_scenarios)
    print("\n".join(diff.lines))
    return 0 if diff.ok else 1


def _packs_schema(args: argparse.Namespace) -> int:
    from cds.rules.load import load_pack
    from cds.rules.schema import pack_schema, scenarios_schema

    pack = load_pack(args.pack, with_scenarios=False).pack if args.pack else None
    schema = scenarios_schema(pack) if args.scenarios else pack_schema(pack)
    emit(json.dumps(schema, indent=2) + "\n", args.out, "the schema")
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
    diff.add_argument(
        "--no-scenarios", action="store_true", help="skip running the scenarios on both versions"
    )
    diff.set_defaults(func=_packs_diff)
    schema = packs_sub.add_parser("schema", help="write the JSON Schema of the pack format")
    schema.add_argument("--out", help="file to write (default: standard output)")
    schema.add_argument(
        "--scenarios", action="store_true", help="the schema of a scenarios file instead"
    )
    schema.add_argument(
        "--pack", help="limit threshold, value-set, finding and rule names to this pack's"
    )
    schema.set_defaults(func=_packs_schema)

    add_measure_commands(sub)

    add_station_commands(sub)
    add_audit_commands(sub)
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
    except BrokenPipeError:  # the reader (| head, | less) stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
