"""Composing the config outside `@hydra.main` (tests, notebooks, benchmarks, and the command
line's check before Hydra runs), with Hydra's composition errors (a wrong type, an unknown
choice, key or preset, an override that does not parse) turned into one-line `ConfigError`s
that name the field and the fix."""
from __future__ import annotations

import re

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from distca.config.errors import ConfigError, section_fields, unknown_key_message
from distca.config.schema import RootConfig

_registered = False


def register_schema() -> None:
    """Register the dataclass schema as `schema`, which configs/train.yaml extends."""
    global _registered
    if not _registered:
        ConfigStore.instance().store(name="schema", node=RootConfig)
        _registered = True


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The resolved config for these overrides, exactly as `distca-train` would see it;
    ConfigError (one line, naming the field and the fix) when they do not compose."""
    register_schema()
    GlobalHydra.instance().clear()
    overrides = list(overrides or [])
    try:
        with initialize_config_module(config_module="configs", version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(explain_composition_error(e, overrides)) from e
    finally:
        GlobalHydra.instance().clear()


def check_composes(overrides: list[str], multirun: bool = False) -> None:
    """ConfigError if the command line's overrides do not compose: what `distca-train` checks
    before Hydra runs (and writes anything). Under -m every value of every swept key is
    tried (with the other sweeps at their first value)."""
    if not multirun:
        compose_config(overrides)
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(explain_composition_error(e, overrides)) from e
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    first = [values[0] for values in choices]
    compose_config(first)
    for i, values in enumerate(choices):
        for value in values[1:]:
            compose_config(first[:i] + [value] + first[i + 1:])


def _given(overrides: list[str], key: str) -> str | None:
    """The override the user wrote for `key` or a field under it (the last one wins, as in
    Hydra)."""
    found = None
    for o in overrides:
        name, eq, _ = o.lstrip("~+").partition("=")
        if eq and (name == key or name.startswith(key + ".")):
            found = o.lstrip("~+")
    return found


def _default(full_key: str):
    section, _, name = full_key.rpartition(".")
    field = (section_fields(section) or {}).get(name)
    if field is None or field.default is field.default_factory:  # neither set: no default
        return None
    value = getattr(field.default, "value", field.default)  # an enum choice: its name
    return str(value).lower() if isinstance(value, bool) else value


_KINDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def explain_composition_error(e: Exception, overrides: list[str]) -> str:
    """Hydra's (multi-line) composition error as one line with the fix; unknown keys get our
    "did you mean", never Hydra's `+key` hint (which adds a key the schema then rejects)."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        options = ", ".join(e.options or []) or "none"
        fields = f", or set single fields with {group}.FIELD=VALUE" if section_fields(group) else ""
        return f"{group}={name} is not one of the {group} presets; use one of {options} (configs/{group}/){fields}"
    if isinstance(e, HydraException) and getattr(e, "override", None):  # OverrideParseException
        return (f"the override {e.override} does not parse ({str(getattr(e, 'message', e)).splitlines()[0]}); "
                "write KEY=VALUE, quote a value holding spaces or brackets, lists as KEY=[a,b]")
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and full_key:
        return unknown_key_message(full_key)
    if isinstance(cause, ValidationError) and full_key:
        given = _given(overrides, full_key) or full_key
        text = str(getattr(cause, "msg", "") or cause).splitlines()[0]
        if (m := re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", text)):
            return f"{given} is not a choice of {full_key}; use one of {m.group(2)}"
        if (m := re.search(r"could not be converted to (\w+)|is not a valid (bool)", text)):
            kind = _KINDS.get(m.group(1) or "Boolean", m.group(1))
            default = _default(full_key)
            example = f" (default {full_key}={default})" if default is not None else ""
            return f"{given}: {full_key} takes {kind}{example}"
        if section_fields(full_key) is not None:
            return f"{given}: {full_key} is a section, not a value; set its fields ({full_key}.FIELD=VALUE)"
        return f"{given}: {text}"
    if (m := re.match(r"Ambiguous value for argument '(.*)'", str(e))):
        return (f"{m.group(1)} holds a comma: add -m to sweep over its values (distca-train -m {m.group(1)}), "
                "write KEY=[a,b] for a list, or quote the value for a string")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(ln for ln in lines if not ln.startswith(("Config search path", "provider=", "See https://")))


def to_typed(cfg) -> RootConfig:
    """The schema's dataclasses (RootConfig with typed sections) from a composed DictConfig;
    a RootConfig passes through. Components take these sections, never a DictConfig."""
    if isinstance(cfg, RootConfig):
        return cfg
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"expected a composed config (DictConfig) or RootConfig, got {type(cfg).__name__}")
    return OmegaConf.to_object(cfg)
