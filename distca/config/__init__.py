"""Typed config schema (dataclasses registered in Hydra's ConfigStore) and composition."""
from distca.config.compose import compose_config, register_schema, to_typed
from distca.config.schema import RootConfig

__all__ = ["RootConfig", "compose_config", "register_schema", "to_typed"]
