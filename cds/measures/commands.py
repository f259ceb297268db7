"""``runform-cds measure`` and ``runform-cds strength``: files in, a FHIR Bundle out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds._optional import require_video_stack
from cds.errors import FhirPostError, MeasureError

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["add_commands"]


def _config(path: str | None) -> Any:
    from cds.config import load_settings

    return load_settings(Path(path) if path else None)


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise MeasureError(f"--date must be an ISO date or date-time, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class Bars:
    """One tqdm bar per pipeline stage, on stderr; closed when the next stage starts."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None

    def __call__(self, stage: str, total: int) -> Callable[[int], None]:
        from tqdm import tqdm

        self.close()
        bar = tqdm(total=total, desc=f"{stage:>18}", unit="frame", disable=not self.enabled)
        self.bar = bar

        def update(frames: int) -> None:
            bar.update(frames)

        return update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _outputs(video: Path, out: str | None) -> dict[str, Path]:
    bundle = Path(out) if out else Path(f"{video.stem}.bundle.json")
    stem = bundle.name.removesuffix(".json").removesuffix(".bundle")
    folder = bundle.parent
    return {
        "bundle": bundle,
        "overlay": folder / f"{stem}.overlay.mp4",
        "plots": folder / f"{stem}.plots.png",
        "still": folder / f"{stem}.contact.png",
        "report": folder / f"{stem}.report.html",
    }


def _write_bundle(bundle: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bundle, indent=2) + "\n", "utf-8")


def _post(bundle: dict[str, Any], base: str | None, token: str | None) -> int:
    if not base:
        return 0
    from cds.measures.bundle import post_bundle

    try:
        result = post_bundle(bundle, base, token=token)
    except FhirPostError as exc:
        print(f"runform-cds: {exc.message} (the Bundle is kept on disk)", file=sys.stderr)
        return 1
    print(f"posted to {base}: HTTP {result.status}, {len(result.locations)} resources created")
    for location in result.locations:
        print(f"  {location}")
    return 0


def _summary(results: list[Any]) -> None:
    for r in results:
        side = r.side or "-"
        if r.usable:
            sd = f" ± {r.sd:.1f}" if r.n > 1 else ""
            flag = "  (caution)" if r.cautions else ""
            print(f"  {r.code:34} {side:6} {r.mean:7.1f}{sd} {r.unit:5} n={r.n}{flag}")
        else:
            print(f"  {r.code:34} {side:6} not reported: {r.problems[0]}")


def _measure(args: argparse.Namespace) -> int:
    require_video_stack("measure")
    from cds.measures.analyze import analyze_video
    from cds.measures.bundle import measurement_bundle, method_text, patient_id
    from cds.measures.report import html_report, key_frame, plot_cycles, write_overlay
    from cds.measures.video import Roi

    patient_id(args.patient)  # fail before minutes of video work
    settings = _config(args.config).measures
    video = Path(args.video)
    roi = Roi.parse(args.roi) if args.roi else None
    bars = Bars(not args.quiet)
    try:
        analysis = analyze_video(
            video, args.view, roi=roi, static=Path(args.static) if args.static else None,
            settings=settings, workers=args.workers, progress=bars,
        )  # fmt: skip
        bundle = measurement_bundle(analysis, args.patient, when=_when(args.date))
        paths = _outputs(video, args.out)
        _write_bundle(bundle, paths["bundle"])
        if not args.no_overlay:
            write_overlay(analysis, paths["overlay"], bars("overlay video", analysis.video.frames))
    finally:
        bars.close()
    plot_cycles(analysis, paths["plots"])
    still = key_frame(analysis, paths["still"])
    html_report(
        analysis, args.patient, paths["report"], paths["plots"], still, method_text(analysis)
    )
    ignored = f"; {analysis.rejected_frames} frames of another person ignored"
    print(f"{video}: {analysis.view} view, {analysis.events.mode}, "
          f"{len(analysis.events.strides)} strides ({analysis.events.method} events)"
          f"{ignored if analysis.rejected_frames else ''}")  # fmt: skip
    _summary(analysis.results)
    written = [
        p for k, p in paths.items() if p.exists() and (k != "overlay" or not args.no_overlay)
    ]
    print("wrote " + ", ".join(str(p) for p in written))
    return _post(bundle, args.post, args.token)


def _pairs(text: str | None, flag: str, cast: Callable[[str], Any]) -> tuple[Any, Any] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise MeasureError(f"{flag} takes LEFT,RIGHT (use - for a side not tested), got {text!r}")
    try:
        left, right = (None if p in ("", "-") else cast(p) for p in parts)
    except ValueError:
        raise MeasureError(f"{flag}: {text!r} is not LEFT,RIGHT numbers") from None
    return left, right


_FLAG_TESTS = {
    "abduction": ("hip-abduction", "force_n", float),
    "extension": ("hip-extension", "force_n", float),
    "external_rotation": ("hip-external-rotation", "force_n", float),
    "side_plank": ("side-plank", "hold_s", float),
    "sls_rating": ("single-leg-squat", "rating", str),
    "sls_fppa": ("single-leg-squat", "fppa_deg", float),
    "trendelenburg": ("trendelenburg", "result", str),
}
_FLAG_HELP = {
    "force_n": "dynamometer peak force, N",
    "hold_s": "hold time, s",
    "rating": "good, fair or poor",
    "fppa_deg": "frontal-plane projection angle, deg",
    "result": "positive or negative",
}


def _form_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    tests: list[dict[str, Any]] = []
    for attr, (test, field, cast) in _FLAG_TESTS.items():
        pair = _pairs(getattr(args, attr), "--" + attr.replace("_", "-"), cast)
        for side, value in zip(("left", "right"), pair or (), strict=False):
            if value is None:
                continue
            entry: dict[str, Any] = {"test": test, "side": side, field: value}
            if field == "force_n" and args.lever:
                entry["lever_arm_m"] = args.lever
            tests.append(entry)
    return {"body_mass_kg": args.mass, "contraction": args.hhd_test, "tests": tests}


def _strength(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cds.measures.strength import StrengthForm, limb_symmetry, read_form, strength_bundle

    flags = [f"--{a.replace('_', '-')}" for a in _FLAG_TESTS if getattr(args, a) is not None]
    if args.form and flags:
        given = ", ".join(flags)
        raise MeasureError(f"give tests either in --form or as flags, not both ({given})")
    if args.form:
        form = read_form(Path(args.form))
        if args.mass is not None:
            form.body_mass_kg = args.mass
        if args.hhd_test is not None:
            form.contraction = args.hhd_test
    else:
        try:
            form = StrengthForm.model_validate(_form_from_flags(args))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise MeasureError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    bundle = strength_bundle(form, args.patient, when=_when(args.date))
    out = Path(args.out or "strength.bundle.json")
    _write_bundle(bundle, out)
    for (code, side), lsi in sorted(limb_symmetry(form).items()):
        print(f"  {code:34} {side:6} LSI {lsi:5.1f} %")
    print(f"wrote {out} ({len(bundle['entry']) - 1} Observations)")
    return _post(bundle, args.post, args.token)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patient", required=True, help="Patient/ID the Observations are about")
    p.add_argument("--date", help="when it was measured (ISO; default: file time or now)")
    p.add_argument("--post", metavar="FHIR_BASE", help="also POST the Bundle to this FHIR server")
    p.add_argument("--token", help="bearer token for --post")


def add_commands(sub: Any) -> None:
    """Register ``measure`` and ``strength`` on the top-level sub-parsers."""
    measure = sub.add_parser("measure", help="measure run form from a video -> FHIR Bundle")
    measure.add_argument("video", help="the clip (mp4, mov, avi, webm)")
    measure.add_argument("--view", required=True, choices=["posterior", "side"])
    _common(measure)
    measure.add_argument("--roi", help="x,y,w,h region holding the runner (pixels)")
    measure.add_argument("--static", help="static standing clip, to remove orientation offsets")
    measure.add_argument("--out", help="Bundle file (default: VIDEO.bundle.json here)")
    measure.add_argument("--workers", type=int, help="pose worker processes (default: 2 cores)")
    measure.add_argument("--config", help="TOML config with a [measures] section")
    measure.add_argument("--no-overlay", action="store_true", help="skip the overlay video")
    measure.add_argument("--quiet", action="store_true", help="no progress bars")
    measure.set_defaults(func=_measure)

    strength = sub.add_parser("strength", help="record hip strength tests -> FHIR Bundle")
    _common(strength)
    strength.add_argument("--form", help="CSV or JSON form (see docs/measures.md)")
    strength.add_argument("--mass", type=float, help="body mass in kg")
    strength.add_argument("--lever", type=float, help="dynamometer lever arm in m")
    strength.add_argument(
        "--hhd-test",
        choices=["isometric", "eccentric"],
        help="dynamometry contraction type: isometric (make) or eccentric (break) test; "
        "strength norms apply only to the type they were measured with",
    )
    for attr, (_, field, _) in _FLAG_TESTS.items():
        strength.add_argument(
            "--" + attr.replace("_", "-"), metavar="LEFT,RIGHT", help=_FLAG_HELP[field]
        )
    strength.add_argument("--out", help="Bundle file (default: strength.bundle.json)")
    strength.set_defaults(func=_strength)
