"""The trace is typed (``cds.audit.trace.Trace``): a key renamed where the type is
defined, and not where the service writes it and the audit tools read it, fails
``mypy --strict``. This test renames one in a copy of the package and runs mypy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_renaming_a_trace_key_fails_the_type_check_where_it_is_written_and_read(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROOT / "cds", tmp_path / "cds", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    trace = tmp_path / "cds" / "audit" / "trace.py"
    text = trace.read_text()
    assert "    rules_fired: list[dict[str, Any]]\n" in text
    trace.write_text(text.replace("    rules_fired:", "    fired_rules:"))

    cmd = [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / ".mypy"), "cds"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr
    # a write names the unknown key; a read of it yields "object", which cannot be iterated
    flagged = set(re.findall(r"^(cds/[\w/]+\.py):\d+: error:", done.stdout, re.M))
    assert 'TypedDict "Trace" has no key "rules_fired"' in done.stdout
    # written by the service, read by the terminal view, the viewer and the exports
    assert {"cds/service/pipeline.py", "cds/audit/reading.py", "cds/audit/render.py",
            "cds/audit/viewer.py", "cds/audit/export.py"} <= flagged, done.stdout  # fmt: skip
