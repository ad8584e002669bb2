"""Random initial values from `train.seed` and the parameter's name, made one slice at a time.

A matrix's rows are drawn in blocks of `BLOCK` rows, each block from its own generator seeded
from (seed, name, block), so any rows can be made without the rest: a rank that keeps a slice
of a parameter (tensor parallelism: some rows of each part of a fused weight, or some columns)
makes only the blocks it touches, one block at a time, and never holds the whole parameter.
The values depend only on the seed and the full model's shape, never on the parallel layout,
the device, or the order in which parameters are made (distca/parallelize/materialize.py).
"""
from __future__ import annotations

import hashlib

import torch

BLOCK = 256  # rows per generator: small enough to be a negligible transient, large enough to be fast


def canonical_name(name: str, tie_embeddings: bool) -> str:
    """The name a parameter is initialised (and imported) under: a tied LM head is the embedding."""
    return "embed.weight" if tie_embeddings and name == "lm_head.weight" else name


def _generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _std(name: str, mcfg) -> float:
    # output projections scaled by 1/sqrt(2 x layers): GPT-2's residual scaling
    if name.endswith(("out.weight", "down.weight")):
        return mcfg.init_std / (2 * len(mcfg.layers)) ** 0.5
    return mcfg.init_std


def _normal_rows(name: str, shape: tuple[int, ...], std: float, seed: int, lo: int, hi: int,
                 cols: slice = slice(None)) -> torch.Tensor:
    """Rows lo:hi (and columns `cols`) of the normal(0, std) matrix `name` of `shape`."""
    width = len(range(*cols.indices(shape[1])))
    out = torch.empty((hi - lo, width, *shape[2:]))
    for b in range(lo // BLOCK, -(-hi // BLOCK)):
        start, stop = b * BLOCK, min((b + 1) * BLOCK, shape[0])
        block = torch.empty((stop - start, *shape[1:])).normal_(0.0, std, generator=_generator(seed, f"{name}#{b}"))
        a, z = max(lo, start), min(hi, stop)
        out[a - lo:z - lo] = block[a - start:z - start, cols]
    return out


def initial_value(name: str, shape: tuple[int, ...], mcfg, seed: int, tp_slice=None, rank: int = 0,
                  tp: int = 1) -> torch.Tensor:
    """The fp32 CPU values parameter `name` (a name of the full model, e.g. blocks.3.mixer.qkv.weight,
    of full shape `shape`) starts from, or this rank's slice of them (`tp_slice`): normal(0,
    init_std) for matrices, ones for norm weights, zeros for biases, and 4 for the per-token
    decay bias of linear attention (log-sigmoid(4)/16: close to no decay)."""
    name = canonical_name(name, mcfg.tie_embeddings)
    if len(shape) < 2:
        fill = 4.0 if name.endswith("decay_proj.bias") else 0.0 if name.endswith(".bias") else 1.0
        full = torch.full(shape, fill)
        return tp_slice.local(full, rank, tp) if tp_slice is not None else full
    std = _std(name, mcfg)
    if tp_slice is None or tp == 1:
        return _normal_rows(name, shape, std, seed, 0, shape[0])
    if tp_slice.dim == 0:  # this rank's rows of every part
        pieces, offset = [], 0
        for part in tp_slice.parts:
            step = part // tp
            pieces.append(_normal_rows(name, shape, std, seed, offset + rank * step, offset + (rank + 1) * step))
            offset += part
        return torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]
    pieces, offset = [], 0  # dim 1: this rank's columns of every part, all rows
    for part in tp_slice.parts:
        step = part // tp
        lo = offset + rank * step
        pieces.append(_normal_rows(name, shape, std, seed, 0, shape[0], slice(lo, lo + step)))
        offset += part
    return torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]
