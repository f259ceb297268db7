"""The ``runform-cds`` command line. Thin: parse arguments, call the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cds.errors import CdsError

__all__ = ["main"]


def _settings(path: str | None):  # type: ignore[no-untyped-def]
    from cds.config import load_settings

    return load_settings(Path(path) if path else None)


def _serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from cds.config import CONFIG_ENV_VAR
    from cds.service.app import create_app

    settings = _settings(args.config)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return 0
    create_app(settings)  # fail fast, in this process, on a bad pack or store
    if args.config:
        os.environ[CONFIG_ENV_VAR] = str(Path(args.config).resolve())
    uvicorn.run(
        "cds.service.app:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="info",
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cds.demo import run_demo

    run_demo(_settings(args.config), port=args.port, keep_serving=not args.exit)
    return 0


def _audit_show(args: argparse.Namespace) -> int:
    from cds.audit.render import render_records
    from cds.audit.store import open_store

    store = open_store(_settings(args.config).store.url)
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

    audit = sub.add_parser("audit", help="read the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    show = audit_sub.add_parser("show", help="print the trace(s) of one hookInstance")
    show.add_argument("hook_instance")
    show.add_argument("--config", help="TOML config file (default: $RUNFORM_CDS_CONFIG)")
    show.add_argument("--json", action="store_true", help="print the raw JSON records")
    show.set_defaults(func=_audit_show)
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
