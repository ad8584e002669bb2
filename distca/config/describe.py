"""What every config field is: path, type, default and description, read from the schema.

The description of a field is the trailing `#` comment on its line in the dataclass source
(plus comment-only lines right below it, indented deeper: a wrapped comment), or else the
comment lines right above it at its indent, so the schema
files stay the one place a field is written down, and whoever adds a field describes it on the
same line. Choice members (enums) are described the same way. `describe()` walks the schema
from RootConfig; `--help` (distca/config/help.py) and docs/CONFIG.md are rendered from it, and
tests/test_help_docs.py fails on a field without a description.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class FieldDoc:
    path: str                   # e.g. "parallel.cad.block"
    type: str                   # int, float, str, bool, "list of int", "str or null", "choice"
    default: Any                # the schema's default (plain value); None for a section
    help: str                   # the description ("" when the source has none)
    choices: tuple = ()         # ((value, description), ...) for a choice field
    section: bool = False       # a nested group of fields (model, parallel.cad, ...)


@lru_cache(maxsize=None)
def source_comments(cls: type) -> dict[str, str]:
    """{attribute name: its trailing comment} for the assignments in a class body."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # built with the functional API (no class statement)
        return {}
    comments: dict[int, tuple[int, str]] = {}  # line -> (column, text)
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    out = {}
    for node in ast.parse(src).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        parts = [comments[ln][1] for ln in range(node.lineno, node.end_lineno + 1) if ln in comments]
        if parts:
            line = node.end_lineno + 1  # a wrapped comment: comment-only lines indented past the field
            while line in comments and line not in code_lines and comments[line][0] > node.col_offset:
                parts.append(comments[line][1])
                line += 1
        else:  # no trailing comment: the comment-only lines right above, at the field's indent
            line = node.lineno - 1
            while line in comments and line not in code_lines and comments[line][0] == node.col_offset:
                parts.insert(0, comments[line][1])
                line -= 1
        if parts:
            out[name] = " ".join(parts)
    return out


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        return f"{_type_name(next(a for a in args if a is not type(None)))} or null"
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "choice"
    return getattr(tp, "__name__", str(tp))


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    return value


def _choices(tp) -> tuple:
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if not (isinstance(tp, type) and issubclass(tp, Enum)):
        return ()
    notes = source_comments(tp)
    return tuple((m.value, notes.get(m.name, "")) for m in tp)


def describe(cls: type | None = None, prefix: str = "") -> list[FieldDoc]:
    """Every field under `cls` (default: the whole schema), sections before their fields, in
    source order."""
    if cls is None:
        from distca.config.schema import RootConfig
        cls = RootConfig
    hints = typing.get_type_hints(cls)
    notes = source_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], prefix + f.name
        factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.append(FieldDoc(path, "section", None, notes.get(f.name, ""), section=True))
            out.extend(describe(tp, path + "."))
            continue
        default = factory() if factory is not None else f.default
        out.append(FieldDoc(path, _type_name(tp), _plain(default), notes.get(f.name, ""), _choices(tp)))
    return out


def undescribed(docs: list[FieldDoc] | None = None) -> list[str]:
    """Paths of fields (and sections) whose source line carries no description."""
    return [d.path for d in (docs if docs is not None else describe()) if not d.help]
