"""What every bundled scenario decides, captured so refactors can prove nothing changed.

For each scenario of each bundled pack: the facts, the diagnoses, the rules that
fired (with their deciding values) and the cards, as the trace records them,
with ids and times replaced by stable placeholders.

    .venv/bin/python -m tests.golden --update   # after an intended change; review the diff
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from cds.rules.engine import RuleEngine
from cds.rules.load import load_pack
from cds.rules.scenario import decide_scenario, scenario_facts

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "golden-decisions.json"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_ID = re.compile(r"\b[0-9a-f]{16}\b")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)?")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def _stable(text: str, ids: dict[str, str]) -> str:
    def placeholder(m: re.Match[str]) -> str:
        return ids.setdefault(m.group(0), f"<id-{len(ids) + 1}>")

    text = _UUID.sub(placeholder, text)
    text = _HEX_ID.sub(placeholder, text)
    text = _DATETIME.sub("<datetime>", text)
    return _DATE.sub("<date>", text)


def _normalise(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, ids) for v in value]
    if isinstance(value, str):
        return _stable(value, ids)
    if isinstance(value, float):
        return round(value, 9)
    return value


def decisions() -> dict[str, Any]:
    """Scenario key (pack/name) -> what it decided."""
    engine = RuleEngine()
    out: dict[str, Any] = {}
    for pack_file in sorted((ROOT / "rule_packs").glob("*/pack.yaml")):
        pack = load_pack(pack_file)
        file = pack.scenarios
        for scenario in file.scenarios if file else []:
            facts = scenario_facts(pack, file, scenario)
            decision = decide_scenario(pack, file, scenario, engine, facts)
            record = {
                "inputs": {
                    "used": [r.as_dict() for r in facts.used],
                    "excluded": [r.as_dict() for r in facts.excluded],
                },
                "facts": facts.all_facts(),
                "diagnoses": [d.as_trace() for d in facts.diagnoses],
                "rules_fired": [f.as_trace() for f in decision.fired],
                "cards": decision.cards,
            }
            as_stored = json.loads(json.dumps(record))  # tuples become lists, as in a trace
            out[f"{pack_file.parent.name}/{scenario.name}"] = _normalise(as_stored, {})
    return out


def main(argv: list[str]) -> int:
    if argv != ["--update"]:
        print(__doc__)
        return 2
    GOLDEN.write_text(json.dumps(decisions(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
