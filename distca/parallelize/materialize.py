"""From a model part on the meta device to real parameters on this rank's device.

The model is built with meta parameters (shapes only), cut and sliced by the parallel plan,
and only then each parameter this rank still holds is made real, filled by a source:
`random_source` (the initial values of distca/model/init.py, made slice by slice: the same
weights at every layout) or
`hf_source` (a Hugging Face folder, each slice read from disk: distca/checkpoint/hf_import.py).
A rank never holds more than its share plus one block of rows (random init) or one tensor
(a converted layer's K/V, repeated per head). Parameters shared by two modules (tied
embeddings) stay shared.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from distca.checkpoint import hf_import
from distca.model.init import initial_value

# fill(full-model name, meta parameter) -> this rank's values (CPU, fp32)
Fill = Callable[[str, nn.Parameter], torch.Tensor]


def full_shape(param: nn.Parameter) -> tuple[int, ...]:
    """The whole parameter's shape (a tensor-parallel slice records its parts' full sizes)."""
    spec = getattr(param, "tp_slice", None)
    shape = list(param.shape)
    if spec is not None:
        shape[spec.dim] = sum(spec.parts)
    return tuple(shape)


def materialize(model: nn.Module, device: torch.device, fill: Fill) -> None:
    """Replace every meta parameter of `model` in place by a real one on `device`."""
    made: dict[int, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        for key, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            new = made.get(id(param))
            if new is None:
                name = f"{prefix}.{key}" if prefix else key
                value = fill(name, param)
                if tuple(value.shape) != tuple(param.shape):
                    raise RuntimeError(f"{name}: the source gave {tuple(value.shape)}, the model part is "
                                       f"{tuple(param.shape)}")
                new = nn.Parameter(value.to(device=device, dtype=param.dtype), requires_grad=param.requires_grad)
                if getattr(param, "tp_slice", None) is not None:
                    new.tp_slice = param.tp_slice
                made[id(param)] = new
            module._parameters[key] = new


def random_source(mcfg, seed: int, rank: int, tp: int) -> Fill:
    def fill(name, param):  # this rank's slice only: the whole parameter is never made
        return initial_value(name, full_shape(param), mcfg, seed, getattr(param, "tp_slice", None), rank, tp)
    return fill


def hf_source(weights: "hf_import.HFWeights", mcfg, source_layers: str, tied_in_folder: bool, seed: int,
              rank: int, tp: int) -> Fill:
    def fill(name, param):
        return hf_import.local_value(weights, name, tuple(param.shape), getattr(param, "tp_slice", None), rank,
                                     tp, mcfg, source_layers, tied_in_folder, seed)
    return fill


def phantom_source(device: torch.device) -> Fill:
    """A CAD pool rank's weights: a stride-0 view of one zero per parameter, nothing read."""
    def fill(name, param):
        return torch.zeros((), dtype=param.dtype, device=device).expand(param.shape)
    return fill
