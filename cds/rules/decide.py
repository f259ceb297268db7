"""From facts to cards: run a pack on the engine, apply suppression, build cards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cds._entries import drop_empty
from cds.errors import EngineDisagreementError
from cds.fhir.facts import FactSet
from cds.fhir.fields import HOOK, KIND, POSITION, SIDE, Fact
from cds.rules.cards import Attachment, CardContext, build_card
from cds.rules.compile import CompiledPack, CompiledRule
from cds.rules.engine import EngineResult, Firing, RuleEngine
from cds.rules.evaluate import Explanation, evaluator
from cds.rules.records import Card, DecidedEntry, FiredRuleEntry, ThresholdEntry
from cds.rules.reread import check_facts

__all__ = ["CardOutcome", "Decision", "FiredRule", "decide", "stamp_facts"]


@dataclass
class FiredRule:
    rule_id: str
    category: str
    sides: list[str]
    matched: list[Fact]
    thresholds: list[ThresholdEntry]
    #: each threshold test that decided the match: side, what was measured, the value
    decided: list[DecidedEntry] = field(default_factory=list)
    card_uuid: str | None = None
    suppressed_by: str | None = None
    #: for a rule that suppresses others: the rules whose cards it held back
    held_back: list[str] = field(default_factory=list)
    #: for a rule that adds its text to other cards: the uuids of those cards
    attached_to: list[str] = field(default_factory=list)

    def as_trace(self) -> FiredRuleEntry:
        entry = FiredRuleEntry(
            rule_id=self.rule_id,
            category=self.category,
            sides=self.sides,
            matched=self.matched,
            thresholds=self.thresholds,
            decided=self.decided,
            held_back=self.held_back,
            attached_to=self.attached_to,
        )
        if self.card_uuid is not None:
            entry["card_uuid"] = self.card_uuid
        if self.suppressed_by is not None:
            entry["suppressed_by"] = self.suppressed_by
        return drop_empty(entry)


@dataclass
class Decision:
    pack: CompiledPack
    cards: list[Card] = field(default_factory=list)
    fired: list[FiredRule] = field(default_factory=list)
    unmatched_facts: int = 0

    def outcomes(self) -> list[CardOutcome]:
        """What each card says, by rule: for scenario tests and reviews."""
        out = []
        for record in self.fired:
            card = next((c for c in self.cards if c["uuid"] == record.card_uuid), None)
            if card is None:
                continue
            attached = [r.rule_id for r in self.fired if record.card_uuid in r.attached_to]
            out.append(CardOutcome(record.rule_id, card["indicator"], record.sides, attached))
        return out


@dataclass(frozen=True)
class CardOutcome:
    rule: str
    indicator: str
    sides: list[str]
    attached: list[str]


def stamp_facts(facts: FactSet, hook: str) -> list[Fact]:
    """The facts as one evaluation sees them: each with the hook and its position."""
    return [{**f, HOOK: hook, POSITION: i} for i, f in enumerate(facts.all_facts())]


def _matched_fields(fact: Fact, fields: set[str]) -> Fact:
    keep = {KIND, SIDE} | fields
    return {k: v for k, v in fact.items() if k in keep}


def _group(pack: CompiledPack, firings: list[Firing]) -> dict[str, list[Fact]]:
    grouped: dict[str, list[Fact]] = {}
    for f in firings:
        grouped.setdefault(f.rule_id, []).append(f.fact)
    order = {r.rule.id: i for i, r in enumerate(pack.rules)}
    return dict(sorted(grouped.items(), key=lambda kv: order[kv[0]]))


def _disagree(what: str, expected: set[tuple[str, int]], got: set[tuple[str, int]]) -> None:
    if got != expected:
        raise EngineDisagreementError(
            f"engine and reference evaluator disagree on {what} "
            f"(missing {sorted(expected - got)}, extra {sorted(got - expected)})"
        )


def _cross_check(
    pack: CompiledPack, stamped: list[Fact], result: EngineResult, hook: str
) -> dict[str, Explanation]:
    """Compare the engine with the independent evaluator; any disagreement is an error."""
    reference = evaluator(pack.pack)
    memos: list[dict[Any, Any]] = [{} for _ in stamped]  # per fact: findings evaluated
    findings = reference.holding_findings(pack.finding_names, stamped, memos)
    _disagree("findings", findings, {(f.rule_id, f.index) for f in result.findings})
    expected = reference.expected_firings(pack.rule_conditions, stamped, hook, memos)
    _disagree("rules", set(expected), {(f.rule_id, f.index) for f in result.firings})
    merged: dict[str, Explanation] = {}
    for (rule_id, _), why in expected.items():
        merged.setdefault(rule_id, Explanation()).add_tests(why.decided)
    return merged


def _decided(compiled: CompiledRule, deciding: Explanation) -> list[DecidedEntry]:
    out = []
    for test in deciding.decided:
        t = compiled.thresholds[test.threshold].threshold
        entry = test.as_trace()
        entry["limit"], entry["limit_unit"], entry["label"] = t.value, t.unit, t.label
        out.append(entry)
    return out


def _fired_rule(compiled: CompiledRule, matched: list[Fact], deciding: Explanation) -> FiredRule:
    return FiredRule(
        rule_id=compiled.rule.id,
        category=compiled.rule.category,
        sides=[str(m[SIDE]) for m in matched if SIDE in m],
        matched=[_matched_fields(m, compiled.fields) for m in matched],
        thresholds=[compiled.thresholds[n].as_trace() for n in deciding.thresholds],
        decided=_decided(compiled, deciding),
    )


def _suppress(pack: CompiledPack, fired: dict[str, FiredRule]) -> None:
    """Each fired rule's card is held back by the first fired rule that suppresses its category."""
    for rid, record in fired.items():
        for blocker in fired:
            if blocker != rid and record.category in pack.rule(blocker).rule.suppresses:
                record.suppressed_by = record.suppressed_by or blocker
                if not pack.rule(rid).rule.attach_to:
                    fired[blocker].held_back.append(rid)


def _shows(pack: CompiledPack, record: FiredRule) -> bool:
    rule = pack.rule(record.rule_id).rule
    if rule.attach_to or record.suppressed_by:
        return False
    return rule.show == "always" or bool(record.held_back)


def decide(
    pack: CompiledPack,
    engine: RuleEngine,
    facts: FactSet,
    *,
    hook: str,
    patient_id: str,
    trace_url: str | None = None,
    station_url: str | None = None,
) -> Decision:
    """Evaluate ``pack`` on ``facts`` for ``hook`` and build the cards."""
    check_facts(facts, pack.policy)
    stamped = stamp_facts(facts, hook)
    result = engine.evaluate(pack, stamped)
    decision = Decision(pack=pack, unmatched_facts=result.unmatched)
    deciding = _cross_check(pack, stamped, result, hook)
    grouped = _group(pack, result.firings)
    fired = {rid: _fired_rule(pack.rule(rid), m, deciding[rid]) for rid, m in grouped.items()}
    _suppress(pack, fired)
    ctx = CardContext(
        pack=pack, patient_id=patient_id, facts=facts, trace_url=trace_url, station_url=station_url
    )
    attached_once: set[str] = set()
    for rule_id, matched in grouped.items():
        if not _shows(pack, fired[rule_id]):
            continue
        extras = [
            rid
            for rid in grouped
            if rule_id in pack.rule(rid).rule.attach_to and not fired[rid].suppressed_by
        ]
        attachments = [
            Attachment(pack.rule(rid), grouped[rid], show_text=rid not in attached_once)
            for rid in extras
        ]
        attached_once.update(extras)
        compiled = pack.rule(rule_id)
        card = build_card(compiled, matched, ctx, deciding[rule_id].thresholds, attachments)
        fired[rule_id].card_uuid = card["uuid"]
        for rid in extras:
            fired[rid].attached_to.append(card["uuid"])
        decision.cards.append(card)
    decision.fired = list(fired.values())
    return decision
