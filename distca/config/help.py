"""`distca-train --help` and docs/CONFIG.md, both rendered from the schema (distca/config/describe.py)
and the preset files under configs/, so neither can drift from the code.

    distca-train --help [OVERRIDES]        every group and field, values for these overrides
    python -m distca.config.help --write-docs     regenerate docs/CONFIG.md (tests/test_help_docs.py
                                           fails when it is stale)
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from distca.config.describe import FieldDoc, describe

ROOT = Path(__file__).resolve().parents[2]  # the repository (docs/ beside distca/)
CONFIG_MD = ROOT / "docs" / "CONFIG.md"
REGENERATE = "python -m distca.config.help --write-docs"
WIDTH = 80


def _configs_dir() -> Path:
    import configs
    return Path(configs.__file__).parent


def presets() -> dict[str, list[tuple[str, str]]]:
    """{group: [(preset, its header comment), ...]} from configs/<group>/*.yaml."""
    out = {}
    for group in sorted(p for p in _configs_dir().iterdir() if p.is_dir() and not p.name.startswith("_")):
        rows = []
        for f in sorted(group.glob("*.yaml")):
            note = next((line.lstrip("#").strip() for line in f.read_text().splitlines()
                         if line.startswith("#") and "@package" not in line), "")
            rows.append((f.stem, note))
        out[group.name] = rows
    return out


def default_presets() -> dict[str, str]:
    """The preset each group gets with no override (configs/train.yaml's defaults list)."""
    import yaml
    entries = yaml.safe_load((_configs_dir() / "train.yaml").read_text())["defaults"]
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items()}


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value) if isinstance(value, float) else str(value)


def _type(d: FieldDoc) -> str:
    return " | ".join(c for c, _ in d.choices) if d.choices else d.type


def _composed(overrides: list[str]):
    """(the config for these overrides, an error message or None)."""
    from distca.config import compose_config
    try:
        return compose_config(overrides), None
    except ValueError as e:  # a bad override (ConfigError, one line): show the defaults and say why
        return compose_config([]), str(e)


def _value(cfg, path: str):
    from omegaconf import OmegaConf
    node = OmegaConf.select(cfg, path)
    if node is not None and not isinstance(node, (str, int, float, bool)):
        node = OmegaConf.to_container(node)
    return getattr(node, "value", node)


def render_help(argv: list[str]) -> str:
    """The --help text: usage, presets, then every field with its value for this command line."""
    overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra")]
    cfg, error = _composed(overrides)
    chosen = {g: _value(cfg, "model.name") if g == "model" else None for g in presets()}
    chosen.update({g: p for g, p in default_presets().items() if g != "model"})
    for a in overrides:  # group=preset on the command line
        key, _, val = a.lstrip("+~").partition("=")
        if key in chosen:
            chosen[key] = val
    out = [
        "usage: distca-train [GROUP=PRESET ...] [SECTION.FIELD=VALUE ...] [-m]",
        "       (or: python -m distca.train ...; torchrun ... -m distca.train ...)",
        "",
        *textwrap.wrap("Hydra overrides: model=1b picks a preset, train.lr=1e-3 sets a field, -m sweeps "
                       "(train.lr=1e-3,3e-4). Values below are this command line's (defaults plus "
                       "the overrides given). Reference: docs/CONFIG.md; Hydra's own flags: "
                       "--hydra-help.", WIDTH),
    ]
    if error:
        out += ["", *textwrap.wrap(f"(these overrides do not compose, defaults shown: {error})", WIDTH)]
    out += ["", "presets (GROUP=NAME; * = chosen):"]
    for group, rows in presets().items():
        names = "  ".join(n + ("*" if n == chosen.get(group) else "") for n, _ in rows)
        out += textwrap.wrap(names, WIDTH, initial_indent=f"  {group:<11} ", subsequent_indent=" " * 14)
    for d in describe():
        if d.section:
            out += ["", f"{d.path}: {d.help}"]
            continue
        head = f"  {d.path} = {_fmt(_value(cfg, d.path))}  ({_type(d)})"
        out += textwrap.wrap(head, WIDTH, subsequent_indent=" " * 6)
        out += textwrap.wrap(d.help, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_docs() -> str:
    """docs/CONFIG.md: presets, then one table per section (defaults: the default job's)."""
    from distca.config import compose_config
    cfg = compose_config([])
    defaults = default_presets()
    out = ["# Configuration reference", "",
           f"<!-- generated by `{REGENERATE}` from the schema; do not edit by hand -->", "",
           "Every field of the typed schema (`distca/config/schema.py`, `parallel/config.py`,",
           "`distca/data/config.py`), set on the command line as `section.field=value`; a",
           "group preset (`model=1b`) sets several at once. The description is the comment on",
           "the field's line in the schema. `distca-train --help [overrides]` prints the same",
           "with the values a command line gives. Defaults are those of the default job",
           "(`distca-train` with no overrides).", "", "## Presets", "",
           "| group | preset | what it sets |", "|---|---|---|"]
    for group, rows in presets().items():
        for name, note in rows:
            star = " (default)" if defaults.get(group) == name else ""
            out.append(f"| `{group}` | `{name}`{star} | {_cell(note)} |")
    choices = []
    for d in describe():
        if d.section:
            if choices:
                out += ["", *choices]
                choices = []
            out += ["", f"## `{d.path}`", "", _cell(d.help), "",
                    "| field | type | default | description |", "|---|---|---|---|"]
            continue
        kind = "choice" if d.choices else d.type
        out.append(f"| `{d.path}` | {kind} | `{_cell(_fmt(_value(cfg, d.path)))}` | {_cell(d.help)} |")
        if d.choices:
            items = "; ".join(f"`{c}`" + (f": {note}" if note else "") for c, note in d.choices)
            choices.append(f"- `{d.path}`: {items}")
    if choices:
        out += ["", *choices]
    return "\n".join(out) + "\n"


def print_help(argv: list[str]) -> None:
    sys.stdout.write(render_help(argv))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--write-docs" in argv:
        CONFIG_MD.write_text(render_docs())
        print(f"wrote {CONFIG_MD.relative_to(ROOT)}")
    else:
        print_help([a for a in argv if a not in ("--help", "-h")])


if __name__ == "__main__":
    main()
