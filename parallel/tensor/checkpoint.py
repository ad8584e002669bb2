"""Checkpoints of tensor-sliced parameters that load at any tp.

torch.distributed.checkpoint treats a plain tensor as replicated: it would keep one rank's
slice and hand it to every rank. So, only while a state dict is saved or loaded, each sliced
parameter (and each optimizer state shaped like it) becomes one entry per logical part
(`<name>/part<i>`: q, k, v of a fused QKV weight, gate and up of SwiGLU), each a DTensor
sharded over the TP group along the sliced dimension with the part's full shape. At tp = 1
the parts are plain full tensors. The entries are views of the live tensors, so a load writes
straight into the model and optimizer state; the checkpoint itself knows nothing of the
layout it was saved at.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

PART = "/part"


def _wrap(part: torch.Tensor, dim: int, mesh, tp: int):
    if mesh is None:
        return part
    from torch.distributed.tensor import DTensor, Shard

    shape = list(part.shape)
    shape[dim] *= tp
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(part, mesh, [Shard(dim)], run_check=False, shape=torch.Size(shape),
                              stride=stride)


def layout_free(state: dict, sliced: dict, tp_group, device_type: str) -> dict:
    """A copy of `state` (a flat model or optimizer state dict: parameter names, or
    "state.<name>.<key>" entries) in which every entry of a sliced parameter is split into its
    parts as above. `sliced` maps parameter names to their TPSlice."""
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    mesh = None
    if tp > 1:
        from torch.distributed.device_mesh import DeviceMesh
        mesh = DeviceMesh.from_group(tp_group, device_type)
    out = {}
    for key, value in state.items():
        name = _param_of(key, sliced)
        if name is None or not isinstance(value, torch.Tensor) or value.dim() == 0:
            out[key] = value
            continue
        spec = sliced[name]
        for i, part in enumerate(spec.local_parts(value, tp)):
            out[f"{key}{PART}{i}"] = _wrap(part, spec.dim, mesh, tp)
    return out


def _param_of(key: str, sliced: dict):
    if key in sliced:
        return key
    if key.startswith("state."):  # flattened optimizer state: state.<param name>.<state key>
        name = key[len("state."):].rpartition(".")[0]
        return name if name in sliced else None
    return None


def rename_tied(state: dict, alias: str, name: str) -> dict:
    """Entries of the parameter called `alias` here stored under `name` instead: a weight tied
    across pipeline stages is `embed.weight` on the first stage and `lm_head.weight` on the
    last, and must be one entry in the checkpoint. Where both names are present (one stage,
    one parameter) the alias's entries are dropped."""
    present = {key.split(PART)[0] for key in state}
    out = {}
    for key, value in state.items():
        new = _renamed(key, alias, name)
        if new != key and new.split(PART)[0] in present:
            continue
        out[new] = value
    return out


def _renamed(key: str, alias: str, name: str) -> str:
    for prefix in ("", "state.", "param_groups."):
        head = prefix + alias
        if key == head or key.startswith(head + ".") or key.startswith(head + PART):
            return prefix + name + key[len(head):]
    return key
