"""The read-only trace viewer: ``/audit/`` pages served by the service.

It has its own credentials (``[viewer]`` users with PBKDF2 password hashes and
a signed session cookie), separate from the CDS clients' JWTs. Pages: a list of
traces with filters, newest first and paged, and one trace as a timeline
(request, inputs with units and quality, rules fired with the thresholds that
decided them, cards, feedback, chain status).

Hardening: logins are throttled per user and per address, unknown users cost
the same time as known ones, password hashing runs off the event loop one at a
time; forms carry a CSRF token (double-submit cookie) and cross-site posts are
refused; a session is valid only while its user is configured and its version
is current (logging out ends every session of the user, in every process);
pages may not be framed.
"""

from __future__ import annotations

import hmac
import html
import math
import os
import secrets
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cds.audit.chain import GENESIS, VerifyResult, verify_rows
from cds.audit.passwords import DUMMY_HASH, SessionSigner, verify_password
from cds.audit.query import DATE_FORMAT_HELP, make_filter
from cds.audit.reading import (
    PROVENANCE_LABELS,
    age_text,
    decided_lines,
    diagnosis_lines,
    feedback_view,
    order_lines,
    rule_fate,
    rule_verdict,
)
from cds.audit.store import StoredRecord, TraceStore
from cds.audit.throttle import LoginThrottle
from cds.audit.trace import Trace
from cds.config import ViewerSettings
from cds.errors import AuditQueryError
from cds.rules.records import CardShown

__all__ = ["viewer_router"]

COOKIE = "runform_audit"
CSRF_COOKIE = "runform_csrf"
PAGE_SIZE = 100
_FILTERS = (
    "hook_instance",
    "patient",
    "since",
    "until",
    "rule",
    "pack_version",
    "indicator",
    "outcome",
)
_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f7fa}
header{background:#17324d;color:#fff;padding:12px 24px;display:flex;gap:16px;align-items:center}
header a{color:#cfe3ff}main{padding:20px 24px;max-width:1200px}
h1{font-size:20px;margin:0}h2{font-size:17px;margin:0 0 6px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e1e6ed;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef2f7;font-weight:600}code{font-size:13px}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;color:#fff}
.info{background:#2f6fb3}.warning{background:#c77800}.critical{background:#b3261e}
.ok{background:#2e7d32}.bad{background:#b3261e}.muted{color:#6b7788}
.error{color:#b3261e;font-weight:600}tr.tampered{background:#fdecea}
.banner{padding:10px 14px;border-radius:6px;margin-bottom:16px;color:#fff}
form.filters{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:14px}
form.filters input,form.filters select{padding:4px 6px}
.timeline{border-left:3px solid #9db4cc;margin-left:10px;padding-left:22px}
.event{position:relative;background:#fff;border:1px solid #e1e6ed;border-radius:6px;
padding:12px 14px;margin-bottom:14px}
.event:before{content:"";position:absolute;left:-32px;top:14px;width:14px;height:14px;
border-radius:50%;background:#17324d;border:3px solid #f5f7fa}
.login{max-width:340px;margin:60px auto;background:#fff;padding:24px;border-radius:8px;
border:1px solid #e1e6ed}.login input{width:100%;padding:6px;margin:4px 0 12px;box-sizing:border-box}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(token)}">'


def _page(
    title: str, body: str, csrf: str, user: str | None = None, status: int = 200
) -> HTMLResponse:
    nav = (
        (
            f'<a href="/audit/">traces</a><span class="muted">{_e(user)}</span>'
            '<form method="post" action="/audit/logout" style="margin:0">'
            f'{_csrf_field(csrf)}<button type="submit">log out</button></form>'
        )
        if user
        else ""
    )
    doc = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}"
        f"</title><style>{_CSS}</style></head><body><header><h1>runform-cds audit</h1>{nav}"
        f"</header><main>{body}</main></body></html>"
    )
    response = HTMLResponse(
        doc,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                "form-action 'self'"
            ),
        },
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/audit", max_age=86400
    )
    return response


class _ChainStatus:
    """Incremental chain verification: only records added since the last look are walked."""

    def __init__(self, store: TraceStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._verified: tuple[int, str] | None = None
        self.last: VerifyResult | None = None

    def check(self, full: bool = False) -> VerifyResult:
        with self._lock:
            after = (0, GENESIS) if full or self._verified is None else self._verified
            rows = self._store.iter_raw(after[0] + 1)
            result = verify_rows(rows, self._store.seq_of_hash, after=after)
            if result.ok:
                self._verified = (result.head_seq, result.head_hash)
            self.last = result
            return result


def _banner(result: VerifyResult) -> str:
    if result.ok:
        return (
            f'<div class="banner ok" id="chain-status">Hash chain verified: '
            f"{result.head_seq} records, head <code>{_e(result.head_hash[:16])}…</code></div>"
        )
    p = result.problem
    assert p is not None
    return (
        f'<div class="banner bad" id="chain-status">Hash chain BROKEN at position '
        f"{p.position} ({_e(p.kind)}): {_e(p.detail)}</div>"
    )


def _filter_form(values: dict[str, str]) -> str:
    def field(name: str, label: str, kind: str = "text") -> str:
        return (
            f'<label>{label} <input name="{name}" type="{kind}" '
            f'value="{_e(values.get(name, ""))}"></label>'
        )

    def choice(name: str, label: str, options: list[str]) -> str:
        opts = "".join(
            f'<option value="{o}"{" selected" if values.get(name) == o else ""}>'
            f"{o or 'any'}</option>"
            for o in options
        )
        return f'<label>{label} <select name="{name}">{opts}</select></label>'

    return (
        '<form class="filters" method="get" action="/audit/">'
        + field("hook_instance", "hookInstance")
        + field("patient", "patient")
        + field("since", "since", "date")
        + field("until", "until (inclusive)", "date")
        + field("rule", "rule")
        + field("pack_version", "pack version")
        + choice("indicator", "indicator", ["", "info", "warning", "critical"])
        + choice("outcome", "outcome", ["", "accepted", "overridden", "none", "error"])
        + '<button type="submit">filter</button></form>'
    )


def _record_badge(problem: str | None, what: str) -> str:
    if problem is None:
        return f"<span class='badge ok integrity'>{_e(what)} verifies</span>"
    return f"<span class='badge bad integrity'>{_e(what)} does NOT verify: {_e(problem)}</span>"


def _list_rows(
    items: list[tuple[StoredRecord, list[StoredRecord]]],
    integrity: dict[int, str | None],
    rule: str | None,
) -> str:
    rows = []
    for rec, feedback in items:
        b = rec.trace
        pack = (b.get("packs") or [{}])[0]
        cards = " ".join(
            f'<span class="badge {_e(c["indicator"])}">{_e(c.get("rule_id"))}</span>'
            for c in b.get("cards", [])
        )
        fb = (
            ", ".join(_e(f.body.get("outcome")) for f in feedback) or '<span class="muted">-</span>'
        )
        problems = [p for r in (rec, *feedback) if (p := integrity.get(r.seq))]
        flag = (_record_badge(problems[0], "a record") if problems else "") + (
            f"<br><span class='verdict'>{_e(rule_verdict(b, rule))}</span>" if rule else ""
        )
        rows.append(
            f'<tr class="trace-row{" tampered" if problems else ""}">'
            f"<td>{_e(rec.recorded_at[:19])}</td>"
            f'<td><a href="/audit/trace/{_e(rec.trace_id)}"><code>{_e(rec.hook_instance)}</code></a></td>'
            f"<td>{_e(b.get('patient'))}</td><td>{_e(pack.get('id'))} {_e(pack.get('version'))}</td>"
            f"<td>{_e(b.get('outcome', {}).get('status'))}</td><td>{cards}</td><td>{fb}</td>"
            f"<td>{flag}</td></tr>"
        )
    head = (
        "<tr><th>recorded (UTC)</th><th>hookInstance</th><th>patient</th><th>rule pack</th>"
        "<th>HTTP</th><th>cards</th><th>feedback</th><th></th></tr>"
    )
    return f'<table id="traces">{head}{"".join(rows)}</table><p>{len(items)} trace(s)</p>'


def _inputs(b: Trace) -> str:
    used = "".join(
        f"<tr><td>{_e(i.get('code'))}</td><td>{_e(i.get('side', '-'))}</td>"
        f"<td>{_e(i.get('value'))} {_e(i.get('unit', ''))}</td><td>{_e(i.get('canonical'))}</td>"
        f"<td>{_e(i.get('strides', '-'))}</td><td>{_e((i.get('effective') or '')[:10])}</td>"
        f"<td><code>{_e(i.get('resource'))}</code></td></tr>"
        for i in b.get("inputs", {}).get("used", [])
    )
    excluded = "".join(
        f"<li><code>{_e(i.get('resource'))}</code> {_e(i.get('code') or '')}: "
        f"{_e(i.get('reason'))}</li>"
        for i in b.get("inputs", {}).get("excluded", [])
    )
    table = (
        "<table><tr><th>metric</th><th>side</th><th>value</th><th>canonical</th>"
        f"<th>strides</th><th>measured</th><th>resource</th></tr>{used}</table>"
    )
    diagnoses = "".join(f"<li>{_e(line)}</li>" for line in diagnosis_lines(b))
    orders = "".join(f"<li>{_e(line)}</li>" for line in order_lines(b))
    return (
        table
        + (f"<p><b>Excluded</b></p><ul>{excluded}</ul>" if excluded else "")
        + (f"<p><b>Diagnoses matched</b></p><ul>{diagnoses}</ul>" if diagnoses else "")
        + (f"<p><b>Orders considered</b></p><ul>{orders}</ul>" if orders else "")
    )


def _rules(b: Trace) -> str:
    items = []
    for r in b.get("rules_fired", []):
        measured = "".join(f"<li>{_e(line)}</li>" for line in decided_lines(r))
        sides = f" on {_e(', '.join(r['sides']))}" if r.get("sides") else ""
        items.append(
            f"<li class='rule'><b>{_e(r['rule_id'])}</b>{sides} → {_e(rule_fate(r, b))}"
            + (f"<ul class='measured'>{measured}</ul>" if measured else "")
            + "</li>"
        )
    if not items:
        return "<p class='muted'>no rule fired</p>"
    legend = "; ".join(f"<b>{k}</b> = {_e(v)}" for k, v in PROVENANCE_LABELS.items())
    return f"<ul>{''.join(items)}</ul><p class='muted legend'>threshold labels: {legend}</p>"


def _card(c: CardShown) -> str:
    detail = "".join(f"<p>{_e(p)}</p>" for p in str(c.get("detail") or "").split("\n\n") if p)
    suggestions = "".join(
        f"<li>suggestion: {_e(s.get('label'))} <code>{_e(s.get('uuid'))}</code></li>"
        for s in c.get("suggestions", [])
        if isinstance(s, dict)
    )
    links = "".join(
        f"<li>link: {_e(link.get('label'))} <code>{_e(link.get('url'))}</code></li>"
        for link in c.get("links", [])
    )
    source = c.get("source") or {}
    attached = (
        f"<li>text attached by: {_e(', '.join(c['attached_rules']))}</li>"
        if c.get("attached_rules")
        else ""
    )
    return (
        f"<li class='card'><span class='badge {_e(c.get('indicator'))}'>{_e(c.get('indicator'))}"
        f"</span> <b>{_e(c.get('summary'))}</b> <span class='muted'>rule {_e(c.get('rule_id'))}, "
        f"card <code>{_e(c.get('uuid'))}</code></span>{detail}"
        f"<ul>{suggestions}{links}<li>source: {_e(source.get('label'))} "
        f"<code>{_e(source.get('url', ''))}</code></li>{attached}</ul></li>"
    )


def _feedback(f: StoredRecord, trace: Trace, problem: str | None) -> str:
    v = feedback_view(f.body, trace)
    rows = [("card", v.card_name), ("outcome", v.outcome), ("at", v.at)]
    rows += [("accepted suggestion", a) for a in v.accepted]
    if v.reason_code or v.reason_display:
        rows.append(("override reason", v.reason))
        rows.append(("reason code system", v.reason_system))
    if v.comment:
        rows.append(("comment", v.comment))
    if v.client:
        rows.append(("from client", v.client))
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(val)}</td></tr>" for k, val in rows if val)
    return (
        f"<div class='event feedback'><h2>Feedback: {_e(v.outcome)}</h2>"
        f"<table>{table}</table><p>record #{f.seq} {_record_badge(problem, 'this record')}</p></div>"
    )


def _timeline(records: list[StoredRecord], integrity: dict[int, str | None]) -> str:
    trace = records[0]
    b = trace.trace
    packs = ", ".join(
        f"{_e(p['id'])} {_e(p['version'])} ({_e(p['status'])}, sha256 "
        f"<code>{_e(p['sha256'][:12])}…</code>)"
        for p in b.get("packs", [])
    )
    cards = "".join(_card(c) for c in b.get("cards", [])) or "<li class='muted'>no cards</li>"
    feedback = "".join(_feedback(f, b, integrity.get(f.seq)) for f in records[1:])
    prefetch = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in b.get("prefetch", {}).items())
    outcome = b.get("outcome", {})
    return (
        f"<p id='trace-integrity'>{_record_badge(integrity.get(trace.seq), 'this trace record')}</p>"
        "<div class='timeline'>"
        f"<div class='event'><h2>Request</h2>{_e(b.get('received_at'))} · {_e(b.get('hook'))} via "
        f"{_e(b.get('service'))} · {_e(b.get('user'))} · {_e(b.get('patient'))} "
        f"(age {_e(age_text(b))})<br>"
        f"<span class='muted'>hookInstance {_e(b.get('hook_instance'))}; prefetch: {prefetch}</span></div>"
        f"<div class='event'><h2>Inputs</h2>{_inputs(b)}</div>"
        f"<div class='event'><h2>Rules</h2><p>rule pack: {packs}</p>{_rules(b)}</div>"
        f"<div class='event'><h2>Response: HTTP {_e(outcome.get('status'))}</h2>"
        f"{_e(outcome.get('message', ''))}<ul id='cards'>{cards}</ul></div>"
        f"{feedback}"
        f"<div class='event'><h2>Chain</h2>record #{trace.seq}, hash <code>{_e(trace.hash)}</code>, "
        f"previous <code>{_e(trace.prev_hash)}</code></div>"
        "</div>"
    )


def _same_origin(request: Request) -> bool:
    """A form post from our own pages (a browser sends Origin on a cross-site post)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    ours = urlsplit(str(request.base_url))
    theirs = urlsplit(origin)
    return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)


def viewer_router(settings: ViewerSettings, store: TraceStore, secure_cookie: bool) -> APIRouter:
    router = APIRouter(prefix="/audit", include_in_schema=False)
    secret = settings.session_secret.encode() if settings.session_secret else os.urandom(32)
    sessions = SessionSigner(secret, settings.session_minutes)
    users = {u.name: u.password_hash for u in settings.users}
    chain = _ChainStatus(store)
    throttle = LoginThrottle(
        settings.max_failures_per_user,
        settings.max_failures_per_address,
        settings.lockout_minutes * 60,
    )
    hashing = anyio.Semaphore(1)  # a login flood waits here, not on every core

    def csrf_of(request: Request) -> str:
        return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)

    def csrf_ok(request: Request, sent: str) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie, sent) and _same_origin(request)

    async def current(request: Request) -> str | None:
        session = sessions.session(request.cookies.get(COOKIE))
        if session is None or session.user not in users:
            return None
        version = await anyio.to_thread.run_sync(store.session_version, session.user)
        return session.user if version == session.version else None

    def to_login() -> Response:
        return RedirectResponse("/audit/login", status_code=303)

    def refused(request: Request) -> Response:
        return _page("refused", "<p>This form has expired. Reload the page and try again.</p>",
                     csrf_of(request), status=403)  # fmt: skip

    @router.get("/login")
    async def login_form(request: Request, error: str = "") -> HTMLResponse:
        msg = "<p style='color:#b3261e'>Wrong name or password.</p>" if error else ""
        csrf = csrf_of(request)
        return _page(
            "log in",
            f"<form class='login' method='post' action='/audit/login'>"
            f"<h2>Audit trail</h2>{msg}{_csrf_field(csrf)}<label>Name<input name='username' "
            "autocomplete='username'></label><label>Password<input name='password' "
            "type='password' autocomplete='current-password'></label>"
            "<button type='submit'>Log in</button></form>",
            csrf,
        )

    @router.post("/login")
    async def login(
        request: Request,
        username: str = Form(""),
        password: str = Form(""),
        csrf: str = Form(""),
    ) -> Response:
        if not csrf_ok(request, csrf):
            return refused(request)
        address = request.client.host if request.client else "?"
        wait = throttle.retry_after(username, address)
        if wait > 0:
            minutes = math.ceil(wait / 60)
            response = _page(
                "too many attempts",
                f"<p>Too many failed logins. Try again in {minutes} minute(s).</p>",
                csrf_of(request),
                status=429,
            )
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        async with hashing:
            ok = await anyio.to_thread.run_sync(
                verify_password, password, users.get(username, DUMMY_HASH)
            )
        if not ok or username not in users:
            throttle.failed(username, address)
            return RedirectResponse("/audit/login?error=1", status_code=303)
        throttle.succeeded(username)
        version = await anyio.to_thread.run_sync(store.session_version, username)
        done = RedirectResponse("/audit/", status_code=303)
        done.set_cookie(
            COOKIE,
            sessions.issue(username, version),
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
            max_age=settings.session_minutes * 60,
            path="/audit",
        )
        done.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), httponly=True,
                        samesite="strict", path="/audit", max_age=86400)  # fmt: skip
        return done

    @router.post("/logout")
    async def logout(request: Request, csrf: str = Form("")) -> Response:
        if not csrf_ok(request, csrf):
            return refused(request)
        user = await current(request)
        if user is not None:  # every session of this user ends, in every process
            await anyio.to_thread.run_sync(store.end_sessions, user)
        response = RedirectResponse("/audit/login", status_code=303)
        response.delete_cookie(COOKIE, path="/audit")
        return response

    @router.get("/")
    async def list_traces(request: Request) -> Response:
        user = await current(request)
        if user is None:
            return to_login()
        values = {k: v for k in _FILTERS if (v := request.query_params.get(k, "").strip())}
        before_text = request.query_params.get("before", "")
        before = int(before_text) if before_text.isdigit() else None
        try:
            where = make_filter(
                patient=values.get("patient"),
                hook_instance=values.get("hook_instance"),
                since=values.get("since"),
                until=values.get("until"),
                rule=values.get("rule"),
                pack_version=values.get("pack_version"),
                indicator=values.get("indicator"),
                outcome=values.get("outcome"),
                names=("since", "until"),
            )
        except AuditQueryError as exc:
            body = (
                _filter_form(values)
                + f"<p class='error' id='filter-error'>{_e(exc.message)}</p>"
                + f"<p class='muted'>{_e(DATE_FORMAT_HELP)}</p>"
            )
            return _page("traces", body, csrf_of(request), user, status=400)

        def page() -> tuple[Any, int | None, dict[int, str | None]]:
            items, more = store.search_page(where, before=before, size=PAGE_SIZE)
            seqs = [r.seq for rec, fb in items for r in (rec, *fb)]
            return items, more, store.integrity(seqs)

        items, more, integrity = await anyio.to_thread.run_sync(page)
        status = await anyio.to_thread.run_sync(chain.check)
        older = (
            f'<p><a id="older" href="/audit/?{_e(urlencode({**values, "before": more}))}">'
            "older traces</a></p>"
            if more is not None
            else ""
        )
        query = f"?{urlencode(values)}" if values else ""
        return _page(
            "traces",
            _banner(status)
            + _filter_form(values)
            + _list_rows(items, integrity, where.rule)
            + older
            + f"<p class='muted'>filters: {_e(query) or 'none'}</p>",
            csrf_of(request),
            user,
        )

    @router.get("/trace/{trace_id}")
    async def show_trace(trace_id: str, request: Request) -> Response:
        user = await current(request)
        if user is None:
            return to_login()
        records = await anyio.to_thread.run_sync(store.records_of_trace, trace_id)
        if not records or records[0].kind != "trace":
            return _page("not found", "<p>No such trace.</p>", csrf_of(request), user)
        integrity = await anyio.to_thread.run_sync(store.integrity, [r.seq for r in records])
        status = await anyio.to_thread.run_sync(chain.check)
        return _page(
            f"trace {trace_id}",
            _banner(status) + _timeline(records, integrity),
            csrf_of(request),
            user,
        )

    return router
