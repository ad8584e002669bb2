"""Composing the config outside `@hydra.main` (tests, notebooks, benchmarks)."""
from __future__ import annotations

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from distca.config.schema import RootConfig

_registered = False


def register_schema() -> None:
    """Register the dataclass schema as `schema`, which configs/train.yaml extends."""
    global _registered
    if not _registered:
        ConfigStore.instance().store(name="schema", node=RootConfig)
        _registered = True


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The resolved config for these overrides, exactly as `distca-train` would see it."""
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def to_typed(cfg) -> RootConfig:
    """The schema's dataclasses (RootConfig with typed sections) from a composed DictConfig;
    a RootConfig passes through. Components take these sections, never a DictConfig."""
    if isinstance(cfg, RootConfig):
        return cfg
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"expected a composed config (DictConfig) or RootConfig, got {type(cfg).__name__}")
    return OmegaConf.to_object(cfg)
