"""Reading strategy options and checking call arguments, with errors that say the fix.

Strategies receive one options dict shared by every strategy (the trainer passes e.g. the
CAD keys to all of them), so keys a strategy does not read are ignored, not rejected."""
from __future__ import annotations

from parallel.context.shard import LAYOUTS


def read_layout(options: dict, default: str, who: str) -> str:
    layout = options.get("layout", default) or default
    if layout not in LAYOUTS:
        raise ValueError(f"{who} option layout={layout!r} is unknown; choose one of {LAYOUTS}")
    return layout


def read_positive_int(options: dict, key: str, default: int, who: str) -> int:
    val = options.get(key, default)
    if val is None:
        return default
    if not isinstance(val, int) or isinstance(val, bool) or val < 1:
        raise ValueError(f"{who} option {key}={val!r} must be an int >= 1")
    return val


def check_call(q, k, v, shard, n: int, rank: int, who: str) -> None:
    if shard.cp_size != n or shard.cp_rank != rank:
        raise ValueError(f"{who}: the shard is for rank {shard.cp_rank} of {shard.cp_size} but this "
                         f"rank is {rank} of a CP group of {n}; build it with "
                         f"build_shard(doc_lens, state.cp_rank, state.dims.cp, layout=strategy.layout)")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"{who}: q/k/v must be [T_local, heads, head_dim], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    t = shard.num_tokens
    if q.shape[0] != t or k.shape[0] != t or v.shape[0] != t:
        raise ValueError(f"{who}: q/k/v have {q.shape[0]}/{k.shape[0]}/{v.shape[0]} tokens but the "
                         f"shard owns {t}; pass this rank's tokens in the shard's local order")
    if k.shape != v.shape:
        raise ValueError(f"{who}: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{who}: query heads {q.shape[1]} must be a multiple of KV heads {k.shape[1]}")
