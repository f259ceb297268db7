"""Reading a pack's YAML so that every mistake is reported where it is, in plain words.

- A YAML syntax error gets a stable code, the line and column of the actual
  mistake, the line itself with a caret, and a hint ("this line is indented
  less than the one above ...").
- A key written twice is an error (plain YAML would silently keep the last).
- pydantic's errors become one message per mistake: an unknown key with a
  did-you-mean from the keys allowed at that place, a missing key, a value
  that is not one of the allowed words; a problem inside a rule is named by the
  rule's id and the field, once.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from cds.errors import PackError
from cds.rules.pack import CONDITION_KEYS, CONDITION_KIND_ERROR
from cds.rules.problems import Loc, PackProblem, did_you_mean

__all__ = ["Source", "read_source", "schema_problems"]

Marks = dict[tuple[Any, ...], tuple[int, int]]
_TAGS = {m.__name__: m for m in CONDITION_KEYS.values()}


@dataclass
class Source:
    """A YAML file as read: its bytes, data, and the line:column of every node."""

    path: Path
    raw: bytes
    data: Any
    marks: Marks = field(default_factory=dict)
    #: what the file is ("pack", "schedule"): the prefix of its problem codes
    kind: str = "pack"

    def locate(self, loc: Sequence[Any]) -> tuple[int, int]:
        """The line and column of the deepest node of ``loc`` that is in the file."""
        path: tuple[Any, ...] = ()
        best = self.marks.get((), (1, 1))
        for part in loc:
            # a finding's condition is under "when:", or is the finding itself
            for candidate in ((*path, part), (*path, "when", part)):
                if candidate in self.marks:
                    path = candidate
                    best = self.marks[path]
                    break
        return best

    def error(self, problems: list[PackProblem]) -> PackError:
        """One message per problem, each with file:line:column, named by rule id."""
        unique = list({(p.loc, p.message): p for p in problems}.values())
        lines = []
        for problem in unique:
            line, col = self.locate(problem.loc)
            lines.append(problem.render(f"{self.path}:{line}:{col}", self._subject(problem.loc)))
        return PackError("\n".join(lines), problems=unique)

    def _subject(self, loc: Loc) -> str | None:
        """``rule r1-hip-drop`` for a place inside the rules list (None elsewhere)."""
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            rules = self.data.get("rules") if isinstance(self.data, dict) else None
            if isinstance(rules, list) and loc[1] < len(rules) and isinstance(rules[loc[1]], dict):
                return f"rule {rules[loc[1]].get('id', f'#{loc[1] + 1}')}"
        return None


# -- YAML ------------------------------------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _previous(lines: list[str], index: int) -> int | None:
    """The index of the nearest line above ``index`` with content."""
    for i in range(index - 1, -1, -1):
        if lines[i].strip() and not lines[i].lstrip().startswith("#"):
            return i
    return None


_OPENS_QUOTE = re.compile(r"""^\s*(-\s+)?([\w-]+:\s+)?"(?P<rest>.*)$""")


def _unclosed_quote(lines: list[str], upto: int) -> int | None:
    """The first line up to ``upto`` whose value opens a double quote it does not close:
    YAML reads on to the next quote, and reports the error far below the mistake."""
    for i, line in enumerate(lines[: upto + 1]):
        m = _OPENS_QUOTE.match(line)
        if m and len(re.findall(r'(?<!\\)"', m.group("rest"))) % 2 == 0:
            return i
    return None


def _syntax_hint(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    problem, mark = exc.problem or "", exc.problem_mark
    row = mark.line if mark else 0
    here = lines[row] if row < len(lines) else ""
    above = _previous(lines, row)
    opened = exc.context_mark
    if "'\\t'" in problem:
        return "a tab is used for indentation: YAML needs spaces"
    if "quoted scalar" in (exc.context or ""):
        at = f" at line {opened.line + 1}, column {opened.column + 1}" if opened else ""
        return f"a quote opened{at} is never closed"
    if "flow" in (exc.context or ""):
        at = f" at line {opened.line + 1}, column {opened.column + 1}" if opened else ""
        return f"a '[' or '{{' opened{at} is not closed with ']' or '}}'"
    if problem.startswith("mapping values are not allowed"):
        if above is not None and _indent(here) > _indent(lines[above]) and ": " in lines[above]:
            return (
                f"this line is indented more than the one above ({_indent(here)} spaces against "
                f"{_indent(lines[above])}), which already has a value: line them up, or move "
                "the value of the line above onto its own lines"
            )
        return "this text contains ': ': put the whole text in double quotes"
    if problem.startswith("expected <block end>") and above is not None:
        return (
            f"line {row + 1} is indented {_indent(here)} spaces and line {above + 1} above it "
            f"{_indent(lines[above])}: keys of one mapping, and items of one list, must start "
            "in exactly the same column; one of the two is off"
        )
    return "check the indentation, colons and quotes of this line and the line above"


def _syntax_error(path: Path, text: str, exc: yaml.MarkedYAMLError, kind: str) -> PackError:
    lines = text.splitlines()
    mark = exc.problem_mark
    row, col = (mark.line, mark.column) if mark else (0, 0)
    hint = _syntax_hint(exc, lines)
    quote = _unclosed_quote(lines, row)
    if quote is not None and quote < row:  # the mistake is the quote, not where YAML choked
        hint = (
            f"the double quote on line {quote + 1} is not closed on that line, so YAML read "
            f'on to line {row + 1}: close it with ", or remove it'
        )
        row, col = quote, lines[quote].index('"')
    shown = []
    above = _previous(lines, row)
    if above is not None:
        shown.append(f"    {above + 1:>5} | {lines[above]}")
    if row < len(lines):
        shown.append(f"    {row + 1:>5} | {lines[row]}")
        shown.append(f"    {'':>5} | {' ' * col}^")
    message = (
        f"{path}:{row + 1}:{col + 1}: not valid YAML: {exc.problem} [{kind}-yaml-syntax]\n"
        + "\n".join(shown)
        + f"\n    hint: {hint}"
    )
    return PackError(
        message, problems=[PackProblem(f"{kind}-yaml-syntax", (), str(exc.problem), hint)]
    )


def _walk(
    node: yaml.Node, path: tuple[Any, ...], marks: Marks, out: list[PackProblem], kind: str
) -> None:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            where = (key.start_mark.line + 1, key.start_mark.column + 1)
            if key.value in seen:
                out.append(
                    PackProblem(
                        f"{kind}-duplicate-key",
                        (*path, key.value),
                        f"key {key.value!r} is written twice in the same place "
                        f"(first at line {seen[key.value]})",
                        "keep one: YAML would silently use the last and ignore the first",
                    )
                )
            seen.setdefault(key.value, where[0])
            _walk(value, (*path, key.value), marks, out, kind)
            marks[(*path, key.value)] = where
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), marks, out, kind)


def read_source(path: Path, kind: str = "pack") -> Source:
    """Read and parse ``path``; :class:`PackError` for unreadable, invalid or ambiguous YAML."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PackError(f"{path}: cannot read ({exc.strerror})") from exc
    text = raw.decode("utf-8", errors="replace")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(path, text, exc, kind) from None
    source = Source(path, raw, data, kind=kind)
    duplicates: list[PackProblem] = []
    if node is not None:
        _walk(node, (), source.marks, duplicates, kind)
    if duplicates:
        raise source.error(duplicates)
    if not isinstance(data, dict):
        raise PackError(
            f"{path}:1:1: expected a YAML mapping (keys and values) [{kind}-yaml-syntax]"
        )
    return source


# -- schema errors -----------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_unwrap(a) for a in get_args(tp)]
    return [tp]


def _field(model: type[BaseModel], key: Any) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _step(tp: Any, part: Any) -> Any:
    """The type found at ``part`` inside a value of type ``tp`` (None: unknown)."""
    if isinstance(part, str) and part in _TAGS:
        return _TAGS[part]
    for member in _members(tp):
        origin = get_origin(member)
        if origin is list and isinstance(part, int):
            return get_args(member)[0]
        if origin is dict:
            return get_args(member)[1]
        if isinstance(member, type) and issubclass(member, BaseModel):
            found = _field(member, part)
            if found is not None:
                return found
    return None


def _keys_at(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys a mapping at ``loc`` may have."""
    tp: Any = root
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    return sorted(
        info.alias or name
        for member in _members(tp)
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name, info in member.model_fields.items()
    )


def _value_at(data: Any, loc: Sequence[Any]) -> Any:
    for part in loc:
        found = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and part < len(data)
        )
        if not found:
            return None
        data = data[part]
    return data


def _in_file(loc: Sequence[Any], data: Any) -> Loc:
    """``loc`` as written in the file: union tags dropped, and the ``when`` a bare
    finding gets while it is read."""
    out: list[Any] = []
    for part in loc:
        if isinstance(part, str) and part in _TAGS:
            continue
        parent = _value_at(data, out)
        if part == "when" and isinstance(parent, dict) and "when" not in parent:
            continue
        out.append(part)
    return tuple(out)


def _problem(err: Any, root: type[BaseModel], data: Any, kind: str) -> PackProblem:
    raw_loc = tuple(err["loc"])
    loc = _in_file(raw_loc, data)
    error_type = err["type"]
    if error_type == "extra_forbidden":
        key = str(raw_loc[-1])
        allowed = _keys_at(root, raw_loc[:-1])
        guess = did_you_mean(key, allowed)
        message = f"unknown key {key!r}" + (f" — {guess}" if guess else "")
        hint = f"allowed here: {', '.join(allowed)}" if allowed else "remove it"
        return PackProblem(f"{kind}-unknown-key", loc, message, hint)
    if error_type == "missing":
        return PackProblem(
            f"{kind}-missing-key", loc, f"{raw_loc[-1]!r} is required here", "add it"
        )
    if error_type == CONDITION_KIND_ERROR:
        value = _value_at(data, loc)
        keys = list(value) if isinstance(value, dict) else []
        guesses = [g for k in keys if (g := did_you_mean(str(k), CONDITION_KEYS))]
        return PackProblem(
            f"{kind}-not-a-condition",
            loc,
            f"not a condition (keys: {', '.join(map(str, keys)) or 'none'})",
            guesses[0]
            if guesses
            else "a condition starts with one of: " + ", ".join(CONDITION_KEYS),
        )
    if error_type == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        words = [w.strip(" '") for w in expected.replace(" or ", ", ").split(",")]
        guess = did_you_mean(str(err.get("input")), words)
        message = f"{err.get('input')!r} is not allowed here" + (f" — {guess}" if guess else "")
        return PackProblem(f"{kind}-bad-value", loc, message, f"use one of: {expected}")
    message = str(err["msg"]).removeprefix("Value error, ")
    return PackProblem(f"{kind}-schema", loc, message)


def schema_problems(
    exc: ValidationError, root: type[BaseModel], data: Any, kind: str = "pack"
) -> list[PackProblem]:
    """pydantic's errors as one plain problem per mistake: a misspelt required key is
    one unknown key with its did-you-mean, not that and a missing key."""
    problems = [_problem(err, root, data, kind) for err in exc.errors()]
    misspelt = {
        (p.loc[:-1], m.group(1))
        for p in problems
        if p.code.endswith("-unknown-key")
        and (m := re.search(r"did you mean '([^']+)'", p.message))
    }
    return [
        p
        for p in problems
        if not (p.code.endswith("-missing-key") and (p.loc[:-1], str(p.loc[-1])) in misspelt)
    ]
