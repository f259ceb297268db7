"""Every walk over the condition tree is exhaustive, and mypy proves it.

The compiler, the reference evaluator and the plain-language review each walk
the tree with ``match`` and end in ``assert_never``. Adding a kind of condition
to ``Atom`` without teaching every walk about it must fail the type check, in
each of the three modules: this test adds one to a copy of the package and runs
mypy --strict on it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WALKS = {"cds/rules/compile.py", "cds/rules/evaluate.py", "cds/rules/review.py"}


def _mypy(root: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mypy", "--cache-dir", str(root / ".mypy"), *sorted(WALKS)]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


def test_a_new_kind_of_condition_fails_the_type_check_in_every_walk(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "cds", tmp_path / "cds", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    pack = tmp_path / "cds" / "rules" / "pack.py"
    text = pack.read_text()
    assert "    | QualityCondition\n)" in text
    text = text.replace(
        "    | QualityCondition\n)", "    | QualityCondition\n    | PainCondition\n)"
    )
    text = text.replace("\nAtom = (", "\nclass PainCondition(_Model):\n    pain: str\n\n\nAtom = (")
    pack.write_text(text)

    done = _mypy(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    flagged = {
        m.group(1) for m in re.finditer(r"^(cds/rules/\w+\.py):\d+: error", done.stdout, re.M)
    }
    assert flagged == WALKS, done.stdout
    assert done.stdout.count('"assert_never" has incompatible type "PainCondition"') == 3
