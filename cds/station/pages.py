"""The two screens of the station: the runner's and the clinician's console.

Plain HTML and JavaScript, no build step and nothing fetched from the
internet: the pages work on a clinic laptop without a network. Both follow the
station's state over server-sent events (``/events``), which the browser
reconnects by itself after a dropped connection or a reload.
"""

from __future__ import annotations

__all__ = ["CONSOLE_PAGE", "KEY_PAGE", "RUNNER_PAGE"]

_COMMON_JS = """
const $ = (id) => document.getElementById(id);
function follow(onState) {
  let source = null;
  function connect() {
    source = new EventSource('/events');
    source.onopen = () => document.body.classList.remove('offline');
    source.onmessage = (e) => onState(JSON.parse(e.data));
    source.onerror = () => {
      document.body.classList.add('offline');
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 1000);
    };
  }
  connect();
}
function clock(s) {
  s = Math.max(0, Math.round(s));
  return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
}
"""

RUNNER_PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runform-cds: runner</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
html, body { margin: 0; height: 100%; background: #111; color: #f4f4f4;
  font-family: system-ui, sans-serif; overflow: hidden; }
#live { display: flex; height: 100vh; }
#video { flex: 1 1 auto; min-width: 0; display: flex; align-items: center;
  justify-content: center; }
#video img { max-width: 100%; max-height: 100vh; transform: scaleX(-1); }
#panel { width: 34vw; padding: 2vh 2vw; display: flex; flex-direction: column; gap: 2vh; }
#metric { font-size: 3.2vh; color: #ccc; }
#gauge { position: relative; flex: 1 1 auto; background: #2a2a2a; border-radius: 1vh; }
#band { position: absolute; left: 0; right: 0; background: rgba(46,125,50,0.35);
  border-top: 3px solid #4caf50; border-bottom: 3px solid #4caf50; }
#marker { position: absolute; left: 8%; right: 8%; height: 2.2vh; border-radius: 1vh;
  transition: bottom 0.15s; }
#value { font-size: 14vh; font-weight: 700; line-height: 1; text-align: center; }
.in { color: #66bb6a; } .out { color: #ffb300; }
#marker.in { background: #66bb6a; } #marker.out { background: #ffb300; }
#recent { font-size: 3vh; letter-spacing: 0.5vw; text-align: center; }
#cue { font-size: 3.6vh; text-align: center; }
#screen { display: none; height: 100vh; align-items: center; justify-content: center;
  flex-direction: column; font-size: 7vh; text-align: center; }
#screen small { font-size: 4vh; color: #bbb; margin-top: 2vh; }
#sound { position: fixed; top: 1vh; left: 1vw; font-size: 2vh; opacity: 0.6; }
#offline { display: none; position: fixed; bottom: 1vh; left: 1vw; font-size: 2vh; color: #ffb300; }
body.offline #offline { display: block; }
body.faded #live, body.waiting #live { display: none; }
body.faded #screen, body.waiting #screen { display: flex; }
</style></head><body class="waiting">
<div id="live">
  <div id="video"><img id="frame" src="/video.mjpg" alt="live video"></div>
  <div id="panel">
    <div id="metric"></div>
    <div id="value">&ndash;</div>
    <div id="gauge"><div id="band"></div><div id="marker"></div></div>
    <div id="recent"></div>
    <div id="cue"></div>
  </div>
</div>
<div id="screen"><div id="message">Waiting for your clinician to start</div>
  <small id="left"></small></div>
<button id="sound" hidden>sound on</button>
<div id="offline">reconnecting&hellip;</div>
<script>"""
    + _COMMON_JS
    + """
window.latencies = [];
let lastSeen = 0, beat = null, audio = null;
function placeOnGauge(value, low, high) {
  const span = high - low, min = low - span, max = high + span;
  const pct = (v) => 100 * Math.min(1, Math.max(0, (v - min) / (max - min)));
  $('band').style.bottom = pct(low) + '%';
  $('band').style.top = (100 - pct(high)) + '%';
  if (value !== null) $('marker').style.bottom = 'calc(' + pct(value) + '% - 1.1vh)';
}
function metronome(on, rate) {
  clearInterval(beat); beat = null;
  window.beating = on ? rate : 0;  // steps per minute (0: silent), for checks
  $('sound').hidden = !on;
  if (!on || !audio || !(rate > 0)) return;
  beat = setInterval(() => {
    const o = audio.createOscillator(), g = audio.createGain();
    o.frequency.value = 880; g.gain.value = 0.3; o.connect(g); g.connect(audio.destination);
    o.start(); o.stop(audio.currentTime + 0.05);
  }, 60000 / rate);
}
$('sound').onclick = () => { audio = audio || new AudioContext(); audio.resume(); };
let lastMetronome = '';
follow((s) => {
  const running = s.state === 'running';
  document.body.classList.toggle('waiting', !running && s.state !== 'paused');
  document.body.classList.toggle('faded', running && !s.feedback);
  if (!running) {
    $('message').textContent = s.state === 'paused' ? 'Paused'
      : (s.state === 'done' || s.state === 'stopped') ? 'Well done: session complete'
      : 'Waiting for your clinician to start';
    $('left').textContent = '';
  } else if (!s.feedback) {
    $('message').textContent = 'Keep going';
    $('left').textContent = clock(s.remaining_s) + ' left';
  }
  if (s.low === undefined) return;
  $('metric').textContent = s.display + (s.side === 'both' ? '' : ' (' + s.side + ')') +
    ': target ' + s.low + '\u2013' + s.high + ' ' + s.unit;
  $('cue').textContent = s.cue || '';
  const recent = s.recent || [];
  const last = recent.length ? recent[recent.length - 1] : null;
  if (last && last.seen_at !== lastSeen) {
    lastSeen = last.seen_at;
    window.latencies.push(Date.now() / 1000 - last.seen_at);
  }
  const cls = last ? (last.in_band ? 'in' : 'out') : '';
  $('value').textContent = last ? last.value.toFixed(1) : '\u2013';
  $('value').className = cls; $('marker').className = cls;
  placeOnGauge(last ? last.value : null, s.low, s.high);
  $('recent').innerHTML = recent.slice(-6).map((v) =>
    '<span class="' + (v.in_band ? 'in' : 'out') + '">' + v.value.toFixed(1) + '</span>').join(' ');
  const beatKey = [running && s.feedback && s.metronome, (s.low + s.high) / 2].join();
  if (beatKey !== lastMetronome) {
    lastMetronome = beatKey;
    metronome(running && s.feedback && s.metronome, (s.low + s.high) / 2);
  }
});
</script></body></html>
"""
)

CONSOLE_PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runform-cds: retraining console</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f5f7fa; }
header { background: #17324d; color: #fff; padding: 10px 20px; display: flex; gap: 16px;
  align-items: center; } header a { color: #cfe3ff; }
main { display: grid; grid-template-columns: 360px 1fr; gap: 18px; padding: 18px; }
section { background: #fff; border: 1px solid #e1e6ed; border-radius: 6px; padding: 14px; }
label { display: block; margin: 6px 0 2px; font-size: 13px; color: #445; }
input, select { width: 100%; box-sizing: border-box; padding: 5px; }
.row { display: flex; gap: 8px; } .row > * { flex: 1; }
button { padding: 7px 12px; margin: 8px 6px 0 0; }
#error { color: #b3261e; font-weight: 600; min-height: 1.2em; }
#notes { color: #556; font-size: 13px; }
.badge { display: inline-block; border-radius: 10px; padding: 1px 9px; color: #fff;
  font-size: 13px; }
.on { background: #2e7d32; } .off { background: #777; } .idle { background: #17324d; }
table { border-collapse: collapse; width: 100%; } td, th { border-bottom: 1px solid #e1e6ed;
  padding: 4px 6px; text-align: left; font-size: 14px; }
.in { color: #2e7d32; } .out { color: #b26a00; }
#preview { width: 100%; max-width: 480px; transform: scaleX(-1); background: #000; }
body.offline header::after { content: 'reconnecting\\2026'; color: #ffb300; }
</style></head><body>
<header><b>Gait retraining console</b><a href="/runner" target="runner">open the runner's screen</a>
<span id="station"></span></header>
<main>
<section>
  <form id="setup" onsubmit="return false">
    <label>Patient (Patient/ID)</label><input id="patient" name="patient" required>
    <label>Metric</label><select id="metric" name="metric">__METRICS__</select>
    <div class="row"><div><label>Side</label><select id="side" name="side">
      <option value="right">right</option><option value="left">left</option>
      <option value="both">both</option></select></div>
      <div><label>Session</label><input id="session" name="session" type="number" min="1"
        max="__SESSIONS__" value="1"></div></div>
    <div class="row"><div><label>Target low</label><input id="low" name="low" type="number"
      step="0.1"></div><div><label>Target high</label><input id="high" name="high" type="number"
      step="0.1"></div></div>
    <label>Cue for the runner</label><input id="cue" name="cue">
    <label>Order (ServiceRequest)</label><input id="service_request" name="service_request"
      placeholder="ServiceRequest/ID">
    <label><input id="metronome" type="checkbox" style="width:auto"> metronome at the target
      step rate</label>
    <label>Pain before (0-10)</label>
    <input id="pain_before" type="number" min="0" max="10" step="1">
  </form>
  <button id="defaults">propose from the record</button>
  <div id="notes"></div>
  <div>
    <button id="start">Start</button><button id="pause">Pause</button>
    <button id="resume">Resume</button>
  </div>
  <label>Pain after (0-10)</label><input id="pain_after" type="number" min="0" max="10" step="1">
  <button id="stop">Stop and record</button>
  <div id="error"></div>
  <div id="done"></div>
</section>
<section>
  <p><span id="state" class="badge idle">idle</span> <span id="block"></span>
    <span id="clock"></span></p>
  <img id="preview" src="/video.mjpg" alt="live video">
  <p id="inband"></p>
  <table><thead><tr><th>Stride</th><th>Side</th><th>Value</th></tr></thead>
    <tbody id="recent"></tbody></table>
  <h3>Blocks</h3>
  <table><thead><tr><th>#</th><th>Feedback</th><th>Strides</th><th>Mean</th><th>In band</th>
    </tr></thead><tbody id="blocks"></tbody></table>
</section>
</main>
<script>"""
    + _COMMON_JS
    + """
const params = new URLSearchParams(location.search);
if (params.get('patient')) $('patient').value = params.get('patient');
function number(id) { const v = $(id).value; return v === '' ? null : Number(v); }
async function call(path, body) {
  $('error').textContent = '';
  const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'},
                               body: JSON.stringify(body || {})});
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) $('error').textContent = answer.error || ('HTTP ' + r.status);
  return r.ok ? answer : null;
}
$('metric').onchange = () => call('/api/watch', {metric: $('metric').value});
$('defaults').onclick = async () => {
  const q = new URLSearchParams({patient: $('patient').value, metric: $('metric').value});
  const r = await fetch('/api/defaults?' + q);
  const d = await r.json();
  if (!r.ok) { $('error').textContent = d.error; return; }
  if (d.low !== null) $('low').value = d.low;
  if (d.high !== null) $('high').value = d.high;
  if (d.cue && !$('cue').value) $('cue').value = d.cue;
  if (d.service_request) $('service_request').value = d.service_request;
  const latest = Object.entries(d.latest).map(([k, v]) => k + ' ' + v).join(', ');
  $('notes').textContent =
    (latest ? 'latest on record: ' + latest + '. ' : '') + d.notes.join('; ');
};
$('start').onclick = () => call('/api/start', {
  patient: $('patient').value, metric: $('metric').value, side: $('side').value,
  low: number('low'), high: number('high'), session: number('session'), cue: $('cue').value,
  service_request: $('service_request').value || null, metronome: $('metronome').checked,
  pain_before: number('pain_before')});
$('pause').onclick = () => call('/api/pause');
$('resume').onclick = () => call('/api/resume');
$('stop').onclick = async () => {
  const done = await call('/api/stop', {pain_after: number('pain_after')});
  if (done) $('done').innerHTML =
    'Recorded: <a href="' + done.report + '" target="_blank">report</a>' +
    ' &middot; <a href="' + done.bundle + '" target="_blank">FHIR Bundle</a>' +
    (done.posted ? ' &middot; ' + done.posted : '');
};
let filled = false;
function fillFrom(s) {  // a console opened during a session shows that session's setup
  filled = true;
  $('patient').value = s.patient; $('metric').value = s.metric; $('side').value = s.side;
  $('session').value = s.session; $('low').value = s.low; $('high').value = s.high;
  $('cue').value = s.cue || ''; $('metronome').checked = !!s.metronome;
  if (s.pain_before !== null) $('pain_before').value = s.pain_before;
}
follow((s) => {
  if (!filled && ['running', 'paused', 'done'].includes(s.state)) fillFrom(s);
  const st = s.station || {};
  $('station').textContent = st.source + ' \u00b7 ' + st.fps + ' fps processed \u00b7 ' +
    st.dropped + ' dropped' + (st.error ? ' \u00b7 ERROR ' + st.error : '') +
    (st.ended ? ' \u00b7 source ended' : '');
  $('state').textContent = s.state + (s.state === 'running' ? (s.feedback ? ': feedback on'
    : ': feedback off') : '');
  $('state').className = 'badge ' + (s.state === 'running' ? (s.feedback ? 'on' : 'off') : 'idle');
  if (s.low === undefined) return;
  $('block').textContent = 'block ' + (s.block + 1) + ' of ' + s.blocks.length;
  $('clock').textContent = clock(s.elapsed_s) + ' elapsed, ' + clock(s.remaining_s) + ' left';
  const total = s.blocks.reduce((a, b) => a + b.strides, 0);
  const inBand = s.blocks.reduce((a, b) => a + b.in_band, 0);
  const current = s.blocks[s.block] || {strides: 0, in_band: 0};
  $('inband').textContent = 'in band: ' + current.in_band + ' of ' + current.strides +
    ' strides this block, ' + inBand + ' of ' + total + ' this session';
  $('recent').innerHTML = (s.recent || []).slice().reverse().map((v, i) =>
    '<tr><td>' + (i ? '' : 'latest') + '</td><td>' + v.side + '</td><td class="' +
    (v.in_band ? 'in' : 'out') + '">' + v.value.toFixed(1) + '</td></tr>').join('');
  $('blocks').innerHTML = s.blocks.map((b) => '<tr><td>' + (b.index + 1) + '</td><td>' +
    (b.feedback ? 'on' : 'off') + '</td><td>' + b.strides + '</td><td>' +
    (b.mean === null ? '' : b.mean) + '</td><td>' + b.in_band + '</td></tr>').join('');
});
</script></body></html>
"""
)

KEY_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runform-cds: station key</title>
<style>body { font: 16px system-ui, sans-serif; max-width: 30rem; margin: 15vh auto; }
input { width: 100%; padding: 6px; margin: 8px 0; box-sizing: border-box; }</style></head><body>
<h1>Retraining station</h1>
<p>Enter the station key: <code>runform-cds retrain</code> printed it with the station's
address when it started.</p>
<form method="get"><input name="key" autocomplete="off" autofocus>
<input type="hidden" name="next" value="__NEXT__"><button>Open</button></form>
</body></html>
"""
