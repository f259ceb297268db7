"""Where a command's result goes: a file (with a note on standard error) or standard output."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["emit"]


def emit(text: str, out: str | None, what: str) -> None:
    """Write ``text`` to the file ``out``, or to standard output."""
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {what} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
