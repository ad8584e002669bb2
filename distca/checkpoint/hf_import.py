"""Weights from a Hugging Face folder, streamed straight into each rank's part.

`HFWeights` indexes a folder's safetensors files (sharded through
model.safetensors.index.json, or not) by their headers only, and reads a tensor or a slice of
its rows or columns without loading the rest (safetensors' `get_slice`). `local_value` gives
one parameter of this rank's model part: a tensor-parallel rank reads its rows (columns) of
each part of a fused weight, a pipeline stage only its layers' tensors (it has no other
parameters), a vocabulary-parallel rank its range of the embedding. `check_folder` compares
every tensor the model needs with the headers at config time, so a missing or mis-shaped
tensor is a config error naming it, before anything is built.

Softmax layers turned into linear-attention layers (`model.layers` letters L over a softmax
folder, item 6 of the on-ramp): q, k, v and o come from that layer's attention projections,
k and v repeated per query head of their group (grouped-query attention has fewer K/V heads
than the linear layer's one per query head); the output gate starts at zero weights (a
constant 0.5 gate), the per-head output norm at ones, and the per-token decay projection at
zero weights with bias 4 (log-sigmoid(4)/16 = -0.0011: almost no decay at first; with
model.linear_decay=head the decays are the architecture's fixed slopes). Biases and q/k norms
of the source attention have no place in a linear layer and are dropped.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from distca.checkpoint.hf_names import hf_tensors, layer_of
from distca.model.init import canonical_name, initial_value

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class HFWeights:
    """The tensors of one folder, by name; `reads` records every read (name, dim, lo, hi)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.folder / f for name, f in weight_map.items()}
        else:
            self.files = {}
            for f in sorted(self.folder.glob("*.safetensors")):
                for name in _header(f):
                    self.files[name] = f
        if not self.files:
            raise ValueError(f"model.init_from={folder} holds no *.safetensors weights; save the model with "
                             "safe_serialization (transformers' default) or convert its .bin files")
        self.reads: list[tuple] = []
        self._shapes: dict[str, list[int]] = {}

    def shape(self, name: str) -> list[int] | None:
        if name not in self.files:
            return None
        if name not in self._shapes:
            header = _header(self.files[name])
            if name not in header:
                raise ValueError(f"{self.files[name]} does not hold {name}, which "
                                 "model.safetensors.index.json says it does; re-download the model")
            self._shapes[name] = header[name]["shape"]
        return self._shapes[name]

    def read(self, name: str, dim: int | None = None, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """The tensor, or rows (dim 0) / columns (dim 1) lo:hi of it, in fp32 on the CPU."""
        from safetensors import safe_open

        self.reads.append((name, dim, lo, hi))
        with safe_open(str(self.files[name]), "pt") as f:
            part = f.get_slice(name)
            if dim is None:
                t = part[:]
            elif dim == 0:
                t = part[lo:hi]
            else:
                t = part[:, lo:hi]
        return t.to(torch.float32)


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def part_sizes(name: str, shape: tuple[int, ...], mcfg) -> list[int]:
    """Rows of each HF tensor inside our fused parameter (one part for unfused ones)."""
    if name.endswith("mixer.qkv.weight") or name.endswith("mixer.qkv.bias"):
        i = layer_of(name)
        d = mcfg.head_dim if mcfg.head_dim > 0 else mcfg.hidden // mcfg.heads
        q = mcfg.heads * d
        kv = q if mcfg.layers[i] == "L" else mcfg.kv_heads * d
        return [q, kv, kv]
    if name.endswith("mlp.gate_up.weight"):
        return [mcfg.ffn_hidden, mcfg.ffn_hidden]
    return [shape[0]]


def source_of(name: str, mcfg, source_layers: str, tied_in_folder: bool) -> list[str] | None:
    """The folder's tensors behind our parameter, or None where a converted layer starts from
    its initial value."""
    name = canonical_name(name, mcfg.tie_embeddings)
    if name == "lm_head.weight" and tied_in_folder:
        name = "embed.weight"
    i = layer_of(name)
    if i is not None and mcfg.layers[i] == "L" and source_layers[i] == "S":  # softmax -> linear
        rest = name.split(".", 2)[2]
        if rest in ("mixer.qkv.weight", "mixer.out.weight"):
            return hf_tensors(name, source_layers)
        if rest.startswith("mixer."):
            return None  # gate, output norm, decay: initial values (module docstring)
    return hf_tensors(name, source_layers)


def check_folder(weights: HFWeights, mcfg, shapes: dict[str, tuple[int, ...]], source_layers: str,
                 tied_in_folder: bool) -> None:
    """Every tensor the model (full shapes `shapes`, by our names) needs is in the folder with
    the shape config.json implies; else a ValueError naming it."""
    for name, shape in shapes.items():
        names = source_of(name, mcfg, source_layers, tied_in_folder)
        if names is None:
            continue
        sizes = part_sizes(name, shape, mcfg)
        converted = len(names) == 3 and layer_of(name) is not None and mcfg.layers[layer_of(name)] == "L" \
            and source_layers[layer_of(name)] == "S"
        if converted:  # k and v of the source have kv_heads heads, repeated to one per query head
            d = sizes[0] // mcfg.heads
            sizes = [sizes[0], mcfg.kv_heads * d, mcfg.kv_heads * d]
        for hf_name, rows in zip(names, sizes):
            want = [rows, *shape[1:]]
            got = weights.shape(hf_name)
            if got is None:
                raise ValueError(f"model.init_from={weights.folder}: tensor {hf_name} is missing (needed for "
                                 f"{name}); the folder is incomplete or its config.json does not match its weights")
            if list(got) != want:
                raise ValueError(f"model.init_from={weights.folder}: tensor {hf_name} has shape {list(got)} but "
                                 f"config.json implies {want}; fix config.json or use the matching weights")


def _repeat_heads(t: torch.Tensor, groups: int, head_dim: int) -> torch.Tensor:
    """K/V rows of kv heads -> one copy per query head of each group (grouped-query to MHA)."""
    return t.view(-1, head_dim, t.shape[-1]).repeat_interleave(groups, 0).reshape(-1, t.shape[-1])


def local_value(weights: HFWeights, name: str, local_shape: tuple[int, ...], tp_slice, rank: int, tp: int,
                mcfg, source_layers: str, tied_in_folder: bool, seed: int) -> torch.Tensor:
    """This rank's part of parameter `name` (a full-model name) read from the folder."""
    dim = tp_slice.dim if tp_slice is not None else None
    full = list(local_shape)
    if tp_slice is not None:
        full[dim] = sum(tp_slice.parts)
    names = source_of(name, mcfg, source_layers, tied_in_folder)
    if names is None:  # a converted layer's gate, norm or decay
        value = initial_value(name, tuple(full), mcfg, seed, tp_slice, rank, tp)
        return torch.zeros_like(value) if name.endswith(("gate.weight", "decay_proj.weight")) else value
    sizes = tp_slice.parts if tp_slice is not None else part_sizes(name, tuple(full), mcfg)
    i = layer_of(name)
    convert = i is not None and mcfg.layers[i] == "L" and source_layers[i] == "S" and len(names) == 3
    pieces = []
    for j, (hf_name, size) in enumerate(zip(names, sizes)):
        if convert and j > 0:  # k, v: read whole (small), repeat per query head, then slice
            d = sizes[0] // mcfg.heads
            t = _repeat_heads(weights.read(hf_name), mcfg.heads // mcfg.kv_heads, d)
            pieces.append(t.chunk(tp, 0)[rank] if tp_slice is not None else t)
            continue
        if tp_slice is None or tp == 1:
            pieces.append(weights.read(hf_name))
            continue
        step = size // tp
        pieces.append(weights.read(hf_name, dim, rank * step, (rank + 1) * step))
    cat_dim = dim if dim is not None else 0
    return torch.cat(pieces, cat_dim).contiguous() if len(pieces) > 1 else pieces[0].contiguous()
