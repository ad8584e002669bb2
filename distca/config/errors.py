"""The config error type and the wording shared by every place that rejects a key.

A `ConfigError` ends the run with `distca: config error: <message>` and exit status 2
(distca/cli.py); the message names the field (or file) and the fix, on one line.
"""
from __future__ import annotations

import dataclasses
import difflib


class ConfigError(ValueError):
    """A config value that cannot run, found before training started (every rank alike)."""


def section_fields(path: str):
    """The schema's fields of the section at dotted `path` ('' = the top), or None when
    `path` is not a section."""
    from distca.config.schema import RootConfig
    schema = RootConfig
    for part in filter(None, path.split(".")):
        field = {f.name: f for f in dataclasses.fields(schema)}.get(part)
        sub = field.default_factory if field is not None else dataclasses.MISSING
        if sub is dataclasses.MISSING or not dataclasses.is_dataclass(sub):
            return None
        schema = sub
    return {f.name: f for f in dataclasses.fields(schema)}


def unknown_key_message(full_key: str) -> str:
    """`unknown config key train.stpes (the train section has: ...); did you mean train.steps?`
    for the first part of `full_key` that the schema lacks."""
    parts = full_key.split(".")
    for i in range(len(parts)):
        prefix = ".".join(parts[:i])
        fields = section_fields(prefix)
        if fields is None:
            return f"unknown config key {full_key}: {prefix} is a value, not a section"
        if parts[i] not in fields:
            break
    dotted = prefix + "." if prefix else ""
    key = dotted + parts[i]
    close = difflib.get_close_matches(parts[i], list(fields), n=3)
    hint = f"; did you mean {' or '.join(dotted + c for c in close)}?" if close else ""
    return f"unknown config key {key} (the {prefix or 'top'} section has: {', '.join(fields)}){hint}"
