"""``runform-cds retrain``: the live gait-retraining station beside the treadmill."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds._optional import require_video_stack
from cds._output import emit
from cds.errors import CdsError

__all__ = ["add_commands", "write_record"]


def _settings(path: str | None) -> Any:
    from cds.config import load_settings

    return load_settings(Path(path) if path else None)


def _pack(settings: Any) -> Any:
    """The serving rule pack, for the thresholds the console proposes (None: none)."""
    from cds.rules.load import load_serving_packs

    try:
        return load_serving_packs(settings.packs.dir, allow_drafts=settings.packs.allow_drafts)[
            0
        ].pack
    except CdsError as exc:
        print(f"note: no rule pack for default bands ({exc.message})", file=sys.stderr)
        return None


def write_record(station: Any, records: Path, fhir_base: str | None, post: bool) -> dict[str, str]:
    """The stopped session's Bundle and report, in the patient's folder; posted if asked.

    The Bundle is on disk before anything is sent, so a failed post loses nothing.
    """
    from cds.measures.bundle import patient_id, post_bundle
    from cds.station.record import session_bundle
    from cds.station.report import earlier_sessions, html_report

    session = station.session
    pid = patient_id(session.setup.patient)
    folder = records / pid
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # sessions are patient data
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"session-{stamp}-{session.setup.session:02d}"
    bundle = session_bundle(session)
    partial = folder / f"{name}.json.partial"
    partial.touch(mode=0o600)
    partial.write_text(json.dumps(bundle, indent=2) + "\n", "utf-8")
    partial.replace(folder / f"{name}.json")
    report = folder / f"{name}.html"
    report.touch(mode=0o600)
    html_report(session, report, earlier_sessions(folder, session.setup.metric))
    out = {"bundle": f"/records/{pid}/{name}.json", "report": f"/records/{pid}/{name}.html"}
    if post and fhir_base:
        try:
            result = post_bundle(bundle, fhir_base)
            out["posted"] = f"posted to {fhir_base}: {len(result.locations)} resources created"
        except CdsError as exc:
            out["posted"] = f"NOT posted ({exc.message}); the Bundle is kept in {folder}"
    return out


def _check_schedule(path: str) -> int:
    from cds.station.schedule import load_schedule

    schedule = load_schedule(Path(path))
    shares = ", ".join(f"{s.feedback_share:.0%}" for s in schedule.sessions)
    print(f"{path}: OK  {schedule.name}: {len(schedule.sessions)} sessions, feedback {shares}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    if args.schedule_schema:
        from cds.station.schedule import schedule_schema

        emit(json.dumps(schedule_schema(), indent=2) + "\n", args.out, "the schedule schema")
        return 0
    if args.check_schedule:
        return _check_schedule(args.check_schedule)
    if not args.source:
        raise CdsError("retrain needs --source (a camera number, a stream URL or a video file)")
    require_video_stack("retrain")
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cds.measures.video import Roi
    from cds.station.schedule import load_schedule
    from cds.station.session import Session
    from cds.station.source import open_source
    from cds.station.web import station_app
    from cds.station.worker import Station

    settings = _settings(args.config)
    cfg = settings.station
    schedule = load_schedule(Path(args.schedule) if args.schedule else cfg.schedule)
    source = open_source(args.source, loop=args.loop)
    roi = Roi.parse(args.roi).clip(source.width, source.height) if args.roi else None
    station = Station(source, args.view, Session(schedule), roi=roi, settings=settings.measures)
    key = cfg.key or secrets.token_urlsafe(16)
    app = station_app(
        station, key=key, records=cfg.records_dir, fhir_base=cfg.fhir_base, pack=_pack(settings),
        record=lambda s: write_record(s, cfg.records_dir, cfg.fhir_base, args.post),
    )  # fmt: skip
    host, port = args.host or cfg.host, args.port if args.port is not None else cfg.port
    base = f"http://{host}:{port}"
    print(
        f"station ready: {source.name} ({source.width}x{source.height}, {source.fps:g} fps), "
        f"{args.view} view, schedule: {schedule.name}\n"
        f"  runner's screen: {base}/runner?key={key}\n"
        f"  console:         {base}/console?key={key}\n"
        f"  records:         {cfg.records_dir}",
        flush=True,
    )
    station.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        station.close()
    return 0


def add_commands(sub: Any) -> None:
    retrain = sub.add_parser(
        "retrain", help="run the live gait-retraining station (runner's screen and console)"
    )
    retrain.add_argument(
        "--source", help="camera number (0), stream URL (rtsp://, http://) or video file"
    )
    retrain.add_argument("--view", choices=["posterior", "side"], default="posterior")
    retrain.add_argument("--roi", help="x,y,w,h: the part of the frame the runner is in")
    retrain.add_argument("--schedule", help="fading schedule file (default: the bundled one)")
    retrain.add_argument("--config", help="TOML config file (default: $RUNFORM_CDS_CONFIG)")
    retrain.add_argument("--host", help="interface (default: station.host, 127.0.0.1)")
    retrain.add_argument("--port", type=int, help="port (default: station.port, 8765)")
    retrain.add_argument("--loop", action="store_true", help="replay a video file forever")
    retrain.add_argument(
        "--post", action="store_true", help="send each session to station.fhir_base"
    )
    retrain.add_argument("--check-schedule", metavar="FILE", help="validate a schedule and exit")
    retrain.add_argument(
        "--schedule-schema", action="store_true", help="print the schedule's JSON Schema"
    )
    retrain.add_argument("--out", help="with --schedule-schema: file to write")
    retrain.set_defaults(func=_retrain)
