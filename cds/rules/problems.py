"""Problems found in a rule pack, each with a stable code, a place and a fix hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Loc", "PackProblem", "did_you_mean"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PackProblem:
    code: str
    loc: Loc
    message: str
    hint: str | None = None

    @property
    def path(self) -> str:
        out = ""
        for part in self.loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out or "(pack)"

    def render(self, where: str, subject: str | None = None) -> str:
        """``where: message [code] (at place)`` and the hint; ``subject`` (e.g. ``rule
        r1``) names the place inside the rules list by its id."""
        hint = f"\n    hint: {self.hint}" if self.hint else ""
        place = self.path
        if subject is not None and len(self.loc) >= 2:
            rest = PackProblem(self.code, self.loc[2:], "").path
            place = subject + ("" if rest == "(pack)" else f", field {rest}")
        return f"{where}: {self.message} [{self.code}] (at {place}){hint}"


def did_you_mean(name: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"
