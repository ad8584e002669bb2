"""The config: the typed schema (dataclasses registered in Hydra's ConfigStore) and its
composition (`compose`), the checks that reject a config before anything runs (`validate`:
the parallel plan, cross-field rules, `ConfigError`), and the field descriptions that
`distca-train --help` and docs/CONFIG.md are rendered from (`describe`, `help`)."""
from distca.config.compose import compose_config, register_schema, to_typed
from distca.config.schema import RootConfig

__all__ = ["RootConfig", "compose_config", "register_schema", "to_typed"]
