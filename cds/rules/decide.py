"""From facts to cards: run a pack on the engine, apply suppression, build cards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cds.errors import EngineError
from cds.fhir.facts import FactSet
from cds.rules.cards import CardContext, build_card
from cds.rules.compile import CompiledPack
from cds.rules.engine import Firing, RuleEngine
from cds.rules.evaluate import Explanation, expected_firings

__all__ = ["Decision", "FiredRule", "decide"]


@dataclass
class FiredRule:
    rule_id: str
    category: str
    sides: list[str]
    matched: list[dict[str, Any]]
    thresholds: list[dict[str, Any]]
    card_uuid: str | None = None
    suppressed_by: str | None = None

    def as_trace(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        return out


@dataclass
class Decision:
    pack: CompiledPack
    cards: list[dict[str, Any]] = field(default_factory=list)
    fired: list[FiredRule] = field(default_factory=list)
    unmatched_facts: int = 0


def _matched_fields(fact: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    keep = {"kind", "side"} | fields
    return {k: v for k, v in fact.items() if k in keep}


def _group(pack: CompiledPack, firings: list[Firing]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for f in firings:
        grouped.setdefault(f.rule_id, []).append(f.fact)
    order = {r.rule.id: i for i, r in enumerate(pack.rules)}
    return dict(sorted(grouped.items(), key=lambda kv: order[kv[0]]))


def _cross_check(
    pack: CompiledPack, stamped: list[dict[str, Any]], firings: list[Firing], hook: str
) -> dict[str, Explanation]:
    """Compare the engine with the independent evaluator; any disagreement is an error."""
    rules = [(r.rule.id, r.scope, list(r.rule.hooks), r.rule.when) for r in pack.rules]
    expected = expected_firings(pack.pack, rules, stamped, hook)
    got = {(f.rule_id, int(f.fact["n"])) for f in firings}
    if got != set(expected):
        missing = sorted(set(expected) - got)
        extra = sorted(got - set(expected))
        raise EngineError(
            f"engine and reference evaluator disagree (missing {missing}, extra {extra})"
        )
    merged: dict[str, Explanation] = {}
    for (rule_id, _), why in expected.items():
        target = merged.setdefault(rule_id, Explanation())
        for name in why.thresholds:
            target.add(name)
    return merged


def decide(
    pack: CompiledPack, engine: RuleEngine, facts: FactSet, *, hook: str, patient_id: str
) -> Decision:
    """Evaluate ``pack`` on ``facts`` for ``hook`` and build the cards."""
    stamped = [{**f, "hook": hook, "n": i} for i, f in enumerate(facts.all_facts())]
    result = engine.evaluate(pack, stamped)
    decision = Decision(pack=pack, unmatched_facts=result.unmatched)
    deciding = _cross_check(pack, stamped, result.firings, hook)
    grouped = _group(pack, result.firings)
    suppressors = {cat: rid for rid in grouped for cat in pack.rule(rid).rule.suppresses}
    ctx = CardContext(pack=pack, patient_id=patient_id)
    for rule_id, matched in grouped.items():
        compiled = pack.rule(rule_id)
        fired = FiredRule(
            rule_id=rule_id,
            category=compiled.rule.category,
            sides=[m["side"] for m in matched if "side" in m],
            matched=[_matched_fields(m, compiled.fields) for m in matched],
            thresholds=[compiled.thresholds[n].as_trace() for n in deciding[rule_id].thresholds],
        )
        blocker = suppressors.get(compiled.rule.category)
        if blocker is not None and blocker != rule_id:
            fired.suppressed_by = blocker
        else:
            card = build_card(compiled, matched, ctx, deciding[rule_id].thresholds)
            fired.card_uuid = card["uuid"]
            decision.cards.append(card)
        decision.fired.append(fired)
    return decision
