"""The only module that knows durable-rules exists.

durable-rules has sharp edges; this adapter files them down:

* one ``Host`` per process, every call under one lock (the Python layer has
  none); its background dispatch is switched off: every 0.2 s it started a new
  thread per registered ruleset to poll queued actions and timers (we use
  neither), without any lock, into the same C engine as a running evaluation;
* rulesets cannot be replaced, so each compiled pack registers under a
  versioned, content-hashed name and stays registered; switching packs is a
  pointer change in our code;
* rules are single-pattern (joins are done in :mod:`cds.fhir.facts`) and split
  into rulesets of at most ``RULESET_SIZE`` rules: large join rulesets abort
  the whole process in C;
* named findings are evaluated first, in rulesets of their own, and set a
  flag on each fact they hold for; rules then test the flag. A ``not`` around
  a finding is one test instead of a disjunctive-normal-form explosion;
* every fact gets a unique ``id`` and every evaluation its own session id, so
  a spurious "already observed" error cannot happen by construction; if one
  does, it fails the evaluation rather than silently dropping a fact;
* facts are asserted and the actions they fire are run by :func:`_assert`, which
  drives the C engine the way durable's Python layer does, minus that layer: it
  swallowed exceptions raised in actions into the session state, and built a
  closure, a state copy and two JSON round trips per firing (half the engine's
  time per call). Here an action that raises fails the evaluation at once, and
  the facts and fired actions cross into C as JSON written and read by orjson;
* the session state is deleted after each evaluation. ``delete_state`` on a
  session in which nothing matched corrupts memory in the C engine
  (``free(): invalid pointer``, then a segfault), so every session opens with
  a fact that matches a no-op rule of its own.
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import durable_rules_engine as _c
import orjson
from durable import engine as _durable

from cds.errors import EngineError
from cds.rules.compile import Compiled, CompiledPack

__all__ = ["EngineResult", "Firing", "RuleEngine"]


@dataclass(frozen=True)
class Firing:
    rule_id: str
    #: position of the matched fact in the list given to :meth:`RuleEngine.evaluate`
    index: int
    fact: dict[str, Any]


@dataclass
class EngineResult:
    firings: list[Firing] = field(default_factory=list)
    #: findings that held, per fact (evaluated before the rules)
    findings: list[Firing] = field(default_factory=list)
    unmatched: int = 0


_host_lock = threading.Lock()
_host: Any = None
_registered: dict[str, list[list[str]]] = {}


@dataclass
class _Collecting:
    """Where the actions of one evaluation stage record their firings."""

    firings: list[Firing]
    #: the facts asserted, by position: a firing's fact is taken from here
    facts: list[dict[str, Any]]
    seen: set[tuple[str, int]] = field(default_factory=set)


_collector: _Collecting | None = None  # set while an evaluation holds the lock
_OPENER = "__session__"


class _Host(_durable.Host):  # type: ignore[misc]
    """durable-rules' Host without its dispatch threads (see the module docstring)."""

    def _run(self) -> None:
        """Start nothing: actions run inside ``assert_fact``, under our lock."""


def _shared_host() -> Any:
    global _host
    if _host is None:
        _host = _Host()
    return _host


class RuleEngine:
    """Evaluate compiled packs on the process-wide durable-rules host."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def load(self, compiled: CompiledPack) -> list[list[str]]:
        """Register ``compiled`` (idempotent); return its ruleset names per stage."""
        with _host_lock:
            stages = _registered.get(compiled.key)
            if stages is not None:
                return stages
            definitions: dict[str, Any] = {}
            stages = []
            for s, stage in enumerate(compiled.stages()):
                names = []
                for i, chunk in enumerate(stage):
                    name = f"{compiled.key}/{s}.{i}"
                    definitions[name] = _ruleset(chunk)
                    names.append(name)
                stages.append(names)
            try:
                _shared_host().register_rulesets(definitions)
            except Exception as exc:  # durable raises bare Exceptions with codes
                raise EngineError(f"could not register pack {compiled.key}: {exc}") from exc
            _registered[compiled.key] = stages
            return stages

    def evaluate(self, compiled: CompiledPack, facts: list[dict[str, Any]]) -> EngineResult:
        """Evaluate the findings on ``facts``, flag them, then evaluate the rules."""
        finding_names, rule_names = self.load(compiled)
        findings = EngineResult()
        result = EngineResult()
        with _host_lock:
            self._run_stage(finding_names, facts, findings)
            flags = {f.engine_id: f.flag for f in compiled.findings}
            flagged = [dict(f) for f in facts]
            for firing in findings.firings:
                flagged[firing.index][flags[firing.rule_id]] = 1
            self._run_stage(rule_names, flagged, result)
        result.findings = findings.firings
        return result

    def _run_stage(self, names: list[str], facts: list[dict[str, Any]], out: EngineResult) -> None:
        global _collector
        host = _shared_host()
        _collector = _Collecting(out.firings, facts)
        try:
            for name in names:
                self._run_ruleset(host, name, facts, out)
        finally:
            _collector = None

    def _run_ruleset(
        self, host: Any, name: str, facts: list[dict[str, Any]], result: EngineResult
    ) -> None:
        handle = host.get_ruleset(name)._handle
        sid = uuid.uuid4().hex
        # the session opener matches a rule of its own, so the session state
        # always exists and delete_state is safe (see the module docstring)
        if not _assert(handle, name, {"kind": _OPENER, "sid": sid, "id": f"{sid}-open"}):
            raise EngineError(f"the session opener of {name} matched no rule")
        try:
            for index, fact in enumerate(facts):
                if not _assert(handle, name, {**fact, "sid": sid, "id": f"{sid}-{index}"}):
                    result.unmatched += 1
        finally:
            _c.delete_state(handle, sid)


#: durable-rules' result codes for an asserted fact
_NOT_HANDLED, _OBSERVED, _NO_STATE = 1, 2, 3


def _assert(handle: int, name: str, message: dict[str, Any]) -> bool:
    """Assert one fact into ruleset ``handle`` and run the actions it fires, in order;
    whether any rule matched it."""
    try:
        code, state = _c.assert_fact(handle, orjson.dumps(message).decode())
    except Exception as exc:  # durable raises bare Exceptions with codes
        raise EngineError(f"engine error in {name}: {exc}") from exc
    if code == _NOT_HANDLED:
        return False
    if code == _OBSERVED:
        raise EngineError(f"engine rejected a unique fact as a duplicate: {message['id']}")
    if code == _NO_STATE:
        return True
    started = _c.start_action_for_state(handle, state)
    pending: str | None = started[1] if started else None
    while pending:
        try:
            _run_action(*_fired(pending, message["sid"]))
        except Exception as exc:
            _c.abandon_action(handle, state)
            raise EngineError(f"a rule action failed in {name}: {exc}") from exc
        pending = _c.complete_and_start_action(handle, state) or None
    return True


def _fired(action: str, sid: str) -> tuple[str, int]:
    """The rule and the position of the matched fact of one action that durable-rules
    started: ``{"<rule id>":{"m":{...the fact...,"id":"<sid>-<position>"}}}``.

    Read off the text rather than parsed: the fact it echoes can be large and we hold
    it ourselves. Rule ids are plain names (letters, digits, ``-``, ``_``, ``:``) and the
    session id a fresh uuid, so neither can appear escaped or inside a fact's value;
    text of any other shape is parsed in full. The session opener has no position (-1).
    """
    marker = f'"id":"{sid}-'
    at = action.find(marker)
    if action.startswith('{"') and at > 0:
        rule_id, start = action[2 : action.index('"', 2)], at + len(marker)
        position = action[start : action.index('"', start)]
    else:
        ((rule_id, matched),) = orjson.loads(action).items()
        position = str(matched["m"]["id"]).rsplit("-", 1)[1]
    return rule_id, -1 if rule_id == _OPENER else int(position)


def _run_action(rule_id: str, index: int) -> None:
    """What a fired rule does: record the firing, once per fact (durable-rules fires
    once per matching alternative of an ``$or``)."""
    if rule_id == _OPENER:
        return
    if _collector is None:
        raise RuntimeError(f"rule {rule_id} fired outside an evaluation")
    if (rule_id, index) not in _collector.seen:
        _collector.seen.add((rule_id, index))
        _collector.firings.append(Firing(rule_id, index, _collector.facts[index]))


def _ruleset(chunk: list[Compiled]) -> dict[str, Any]:
    """One durable ruleset: the session opener plus one single-pattern rule per item.

    Every pattern excludes the opener fact, so a purely negative condition
    cannot match it.
    """
    not_opener = {"$neq": {"kind": _OPENER}}
    return {
        _OPENER: {"all": [{"m": {"kind": _OPENER}}], "pri": 0, "run": _never},
        **{
            item.engine_id: {
                "all": [{"m": {"$and": [not_opener, copy.deepcopy(item.pattern)]}}],
                "pri": item.priority,
                "run": _never,
            }
            for item in chunk
        },
    }


def _never(c: Any) -> None:
    """The action durable-rules is given for every rule: it never dispatches actions
    itself (:func:`_assert` runs them), so being called here is a bug."""
    raise RuntimeError("durable-rules dispatched an action itself")
