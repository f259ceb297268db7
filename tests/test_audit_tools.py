"""The auditor's journey on the command line: the right store, dates, a trace as it was
shown, rule verdicts, exports that keep detail, and pseudonyms that leave no id behind."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fhir.resources.R4B.bundle import Bundle

from cds.audit.store import TraceFilter, open_store
from cds.cli import main
from cds.errors import StoreNotFoundError
from cds.examples import hook_request, strengthening_order
from tests.conftest import PG_BASE, LiveService

PV = "runform-patient-view"
OS = "runform-order-sign"
KEY = "an export key that is at least 32 bytes long"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def audited(live: LiveService) -> dict[str, Any]:
    """Three calls (two patients, one order-sign) and feedback that accepts one suggestion
    and overrides another card with a coded reason and a comment."""
    first = hook_request("patient-view", "Runner-Alpha-7731")
    first["context"]["userId"] = "Practitioner/physio-5512"
    second = hook_request("patient-view", "runner-beta-2290")
    order = strengthening_order("Runner-Alpha-7731")
    signing = hook_request("order-sign", "Runner-Alpha-7731", draft_orders=[order])
    cards = [live.post(PV, first).json()["cards"], live.post(PV, second).json()["cards"]]
    signed = live.post(OS, signing).json()["cards"]
    accepted, overridden = cards[0][0], cards[1][0]
    live.client.feedback(
        PV,
        [
            {
                "card": accepted["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": accepted["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-29T10:00:00Z",
            },
            {
                "card": overridden["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "system": "http://example.org/override",
                        "code": "patient-declined",
                        "display": "Patient declined",
                    },
                    "userComment": "Runner-Beta prefers to wait until after the marathon",
                },
                "outcomeTimestamp": "2026-11-29T10:05:00Z",
            },
        ],
    )
    return {
        "store": ["--store", live.settings.store.url],
        "requests": [first, second, signing],
        "cards": [*cards, signed],
        "accepted": accepted,
        "overridden": overridden,
        "order": order,
    }


# -- every "OK" can be trusted ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["list", "show", "verify", "export"])
def test_a_store_that_does_not_exist_is_refused_and_not_created(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "traces.db"
    argv = ["audit", command, "--store", f"sqlite:///{missing}"]
    code, out, err = _run(capsys, *argv, *(["abc"] if command == "show" else []))
    assert code == 2
    assert "no trace store at" in err and str(missing) in err and "nothing was created" in err
    assert "chain OK" not in out
    assert not missing.exists() and not missing.parent.exists()


def test_a_file_that_is_not_a_trace_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE notes (x)").connection.close()
    with pytest.raises(StoreNotFoundError, match="holds no trace tables"):
        open_store(f"sqlite:///{other}", create=False)
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just text " * 100)
    with pytest.raises(StoreNotFoundError, match="not a SQLite database"):
        open_store(f"sqlite:///{text}", create=False)


def test_a_postgresql_schema_without_traces_is_refused_and_not_created(pg_url: str) -> None:
    with pytest.raises(StoreNotFoundError, match="no trace tables in schema"):
        open_store(pg_url, create=False)
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_BASE) as db:
        found = db.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    assert found is None
    open_store(pg_url).close()  # the service creates it
    store = open_store(pg_url, create=False)
    assert store.count() == 0
    store.close()


def test_the_commands_say_which_store_they_read_and_how_many_records(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, live: LiveService,
) -> None:  # fmt: skip
    code, out, err = _run(capsys, "audit", "verify", *audited["store"])
    assert code == 0 and "chain OK: 5 records" in out
    assert f"store: {live.settings.store.url} (from --store): 5 records" in err
    config = tmp_path / "audit.toml"
    config.write_text(f'[store]\nurl = "{live.settings.store.url}"\n')
    monkeypatch.setenv("RUNFORM_CDS_CONFIG", str(config))
    code, _, err = _run(capsys, "audit", "list")
    assert code == 0 and f"(from $RUNFORM_CDS_CONFIG ({config})): 5 records" in err
    monkeypatch.delenv("RUNFORM_CDS_CONFIG")
    monkeypatch.chdir(tmp_path)  # no config, no store here: the default is refused
    code, _, err = _run(capsys, "audit", "list")
    assert code == 2 and "runform-traces.db" in err and "--config" in err
    assert not (tmp_path / "runform-traces.db").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--since", "yesterday"), ("--since", "2026-13-45"), ("--until", "29/11/2026")],
)
def test_dates_that_do_not_parse_are_refused_with_the_format(
    audited: dict[str, Any], option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "audit", "list", *audited["store"], option, value)
    assert code == 2 and out == ""
    assert f"{option}: {value!r}" in err and "YYYY-MM-DD" in err


def test_a_date_alone_means_the_whole_day(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    day = ["--since", today.isoformat(), "--until", today.isoformat()]
    code, out, _ = _run(capsys, "audit", "list", *audited["store"], *day)
    assert code == 0 and "3 trace(s)" in out
    earlier = (today - timedelta(days=1)).isoformat()
    code, out, _ = _run(capsys, "audit", "list", *audited["store"], "--until", earlier)
    assert code == 0 and "0 trace(s)" in out


def test_list_and_show_flag_a_record_that_does_not_verify(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str], live: LiveService
) -> None:
    path = live.settings.store.url.removeprefix("sqlite:///")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE records SET body = replace(body, '\"accepted\"', '\"overridden\"') "
               "WHERE kind = 'feedback'")  # fmt: skip
    db.close()
    code, out, _ = _run(capsys, "audit", "list", *audited["store"])
    flagged = [line for line in out.splitlines() if line.startswith("!")]
    first = audited["requests"][0]["hookInstance"]
    assert len(flagged) == 2 and first in flagged[0]  # the row, and the summary line
    assert "1 trace(s) hold a record that does NOT verify" in out
    code, out, _ = _run(capsys, "audit", "show", *audited["store"], first)
    assert code == 1
    feedback = next(line for line in out.splitlines() if line.startswith("FEEDBACK"))
    assert "[RECORD DOES NOT VERIFY: altered" in feedback
    assert next(line for line in out.splitlines() if line.startswith("TRACE")).endswith(
        "[record verifies]"
    )


# -- the trace holds what was shown and what was done ------------------------------------------


def test_show_takes_a_unique_prefix_and_prints_the_card_as_returned(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    hook_instance = audited["requests"][0]["hookInstance"]
    code, out, err = _run(capsys, "audit", "show", *audited["store"], hook_instance[:8])
    assert code == 0, err
    card = audited["accepted"]
    assert f"hookInstance   {hook_instance}" in out
    assert "Patient/Runner-Alpha-7731 (age 29 years)" in out
    assert "user           Practitioner/physio-5512" in out
    assert "cards, as returned:" in out and card["summary"] in out
    suggestion = card["suggestions"][0]
    assert f"suggestion: {suggestion['label']} ({suggestion['uuid']})" in out
    assert f"source: {card['source']['label']}" in out
    assert "text attached by: r7-cadence-alternative, r9-education" in out
    assert "its text was attached to the r1-hip-drop-symptomatic card" in out
    assert "card None" not in out
    # the measured value against each deciding threshold, per side, labels explained
    assert re.search(r"right: contralateral pelvic drop .*: 7\.5 deg is at least "
                     r"pelvic_drop_high \(5 deg\) \[X\]", out)  # fmt: skip
    assert "threshold labels: E = evidence" in out and "X = placeholder" in out
    # the feedback in full: which suggestion was accepted
    assert "FEEDBACK on the r1-hip-drop-symptomatic card" in out and ": accepted at" in out
    assert f"accepted       {card['suggestions'][0]['label']}" in out


def test_show_names_the_candidates_of_an_ambiguous_prefix(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str], live: LiveService
) -> None:
    for suffix in ("1", "2"):
        body = hook_request("patient-view", "p-prefix")
        body["hookInstance"] = f"feedbeef-0000-4000-8000-00000000000{suffix}"
        live.post(PV, body)
    code, _, err = _run(capsys, "audit", "show", *audited["store"], "feedbeef")
    assert code == 2 and "start of several calls" in err
    assert "feedbeef-0000-4000-8000-000000000001" in err
    code, _, err = _run(capsys, "audit", "show", *audited["store"], "0000dead")
    assert code == 2 and "no trace for hookInstance '0000dead'" in err


def test_override_reason_code_display_and_comment_are_shown_apart(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    hook_instance = audited["requests"][1]["hookInstance"]
    code, out, _ = _run(capsys, "audit", "show", *audited["store"], hook_instance)
    assert code == 0
    reason = "patient-declined (Patient declined)  [http://example.org/override]"
    assert f"reason         {reason}" in out
    assert "comment        Runner-Beta prefers to wait until after the marathon" in out


def test_patient_filter_takes_a_prefix_in_any_case(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    for typed, count in [("runner-alpha", 2), ("RUNNER", 3), ("Patient/runner-b", 1), ("x", 0)]:
        code, out, _ = _run(capsys, "audit", "list", *audited["store"], "--patient", typed)
        assert code == 0 and f"{count} trace(s)" in out, typed
    hook_instance = audited["requests"][1]["hookInstance"]
    code, out, _ = _run(capsys, "audit", "list", *audited["store"], "--hook-instance",
                        hook_instance[:6])  # fmt: skip
    assert "1 trace(s)" in out and hook_instance in out
    # LIKE wildcards are taken literally
    code, out, _ = _run(capsys, "audit", "list", *audited["store"], "--patient", "%")
    assert "0 trace(s)" in out


def test_rule_filter_says_where_the_rule_fired_and_where_it_was_suppressed(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str], live: LiveService
) -> None:
    # a red flag (night pain) suppresses the plans: r1 fires but is held back
    flagged = hook_request("patient-view", "p-red-flag")
    obs = flagged["prefetch"]["observations"]["entry"]
    night = {k: v for k, v in obs[0]["resource"].items() if k != "valueQuantity"}
    night["id"] = "night-pain-1"
    system = night["code"]["coding"][0]["system"]
    night["code"] = {"coding": [{"system": system, "code": "night-pain"}]}
    night["valueBoolean"] = True
    obs.append({"resource": night})
    live.post(PV, flagged)
    _, out, _ = _run(capsys, "audit", "list", *audited["store"], "--rule",
                     "r1-hip-drop-symptomatic")  # fmt: skip
    verdicts = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    assert any(v.startswith("r1-hip-drop-symptomatic fired: card ") for v in verdicts), out
    suppressed = [v for v in verdicts if "suppressed: suppressed by" in v]
    assert suppressed, out


# -- exports that keep detail and privacy ------------------------------------------------------


def test_csv_export_carries_thresholds_sides_user_and_the_feedback_in_full(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "audit", "export", *audited["store"], "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    accepted = next(r for r in rows if r["card_uuid"] == audited["accepted"]["uuid"])
    assert accepted["user"] == "Practitioner/physio-5512"
    assert accepted["sides"] == "right" and accepted["age"] == "29 years"
    assert "pelvic_drop_high (5 deg) [X]" in accepted["thresholds"]
    assert accepted["attached_rules"] == "r7-cadence-alternative, r9-education"
    assert accepted["feedback_outcome"] == "accepted"
    assert accepted["feedback_time"] == "2026-11-29T10:00:00Z"
    assert audited["accepted"]["suggestions"][0]["label"] in accepted["accepted_suggestion"]
    overridden = next(r for r in rows if r["card_uuid"] == audited["overridden"]["uuid"])
    assert overridden["override_code"] == "http://example.org/override|patient-declined"
    assert overridden["override_display"] == "Patient declined"
    assert overridden["override_comment"].startswith("Runner-Beta prefers")


def test_fhir_export_holds_the_feedback_and_validates_as_r4(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "audit", "export", *audited["store"], "--format", "fhir")
    assert code == 0
    bundle = json.loads(out)
    Bundle.model_validate(bundle)
    feedback = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "AuditEvent" and e["resource"].get("subtype")
    ]
    assert len(feedback) == 2
    details = [{d["type"]: d["valueString"] for d in f["entity"][0]["detail"]} for f in feedback]
    assert {d["outcome"] for d in details} == {"accepted", "overridden"}
    overridden = next(d for d in details if d["outcome"] == "overridden")
    assert overridden["overrideReasonCode"] == "http://example.org/override|patient-declined"
    assert overridden["overrideReasonDisplay"] == "Patient declined"
    guidance = {e["resource"]["id"] for e in bundle["entry"]
                if e["resource"]["resourceType"] == "GuidanceResponse"}  # fmt: skip
    for f in feedback:  # each is about a GuidanceResponse in the Bundle
        assert f["entity"][0]["what"]["reference"].removeprefix("urn:uuid:") in guidance


def _identifiers(audited: dict[str, Any], live: LiveService) -> set[str]:
    """Every id in the store that leads back to a person or their record."""
    ids = {"Runner-Alpha-7731", "runner-beta-2290", "physio-5512", audited["order"]["id"]}
    for request in audited["requests"]:
        ids.add(request["hookInstance"])
        for key in ("observations", "conditions"):
            ids |= {e["resource"]["id"] for e in request["prefetch"][key]["entry"]}
    for cards in audited["cards"]:
        for card in cards:
            ids.add(card["uuid"])
            ids |= {s["uuid"] for s in card.get("suggestions", [])}
    ids |= {rec.trace_id for rec, _ in live.store.search(TraceFilter())}
    return ids


@pytest.mark.parametrize("fmt", ["csv", "fhir"])
def test_pseudonymised_exports_hold_no_original_identifier(
    fmt: str, audited: dict[str, Any], capsys: pytest.CaptureFixture[str], live: LiveService,
    tmp_path: Path,
) -> None:  # fmt: skip
    ids = _identifiers(audited, live)
    code, plain, _ = _run(capsys, "audit", "export", *audited["store"], "--format", fmt)
    # the ids are in an ordinary export (so this test can fail) ...
    present = {i for i in ids if i in plain}
    assert {"Runner-Alpha-7731", "physio-5512", audited["order"]["id"]} <= present
    assert len(present) >= (30 if fmt == "fhir" else 12)  # FHIR also lists every input
    out = tmp_path / f"pseudo.{fmt}"
    argv = ["--pseudonymise", "--pseudonym-key", KEY, "--out", str(out)]
    code, _, _ = _run(capsys, "audit", "export", *audited["store"], "--format", fmt, *argv)
    assert code == 0
    text = out.read_text()
    # ... and none of them, in any case, in a pseudonymised one
    leaked = [i for i in ids if i.lower() in text.lower()]
    assert leaked == []
    assert "Runner-Beta prefers" not in text and "comment withheld" in text
    if fmt == "fhir":
        Bundle.model_validate(json.loads(text))
    # the same key gives the same pseudonyms: rows of two exports still join up
    again = tmp_path / "again"
    _run(capsys, "audit", "export", *audited["store"], "--format", fmt, *argv[:3], "--out",
         str(again))  # fmt: skip
    assert again.read_text() == text


def test_pseudonym_key_rules(
    audited: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = audited["store"]
    code, out, err = _run(capsys, "audit", "export", *store, "--pseudonym-key", KEY)
    assert code == 2 and "only used with --pseudonymise" in err and out == ""
    code, out, err = _run(capsys, "audit", "export", *store, "--pseudonymise",
                          "--pseudonym-key", "short")  # fmt: skip
    assert code == 2 and "5 bytes; use at least 32" in err and out == ""
    code, _, err = _run(capsys, "audit", "export", *store, "--pseudonymise")
    assert code == 2 and "$RUNFORM_CDS_PSEUDONYM_KEY" in err
    monkeypatch.setenv("RUNFORM_CDS_PSEUDONYM_KEY", KEY)
    code, out, _ = _run(capsys, "audit", "export", *store, "--pseudonymise")
    assert code == 0 and "Runner-Alpha-7731" not in out
