"""Parallel degrees and the process groups built from them.

Rank order (innermost first): tp, cp, pp, dp. So the ranks of one CP group are adjacent,
and the CAD group (all DP x CP ranks sharing a tp and pp rank) is built from the same grid.
No module-level globals: `ParallelState` is created once (by `ParallelPlan.setup`) and
passed explicitly. Which algorithm runs on these groups is the plan's business (plan.py).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1

    @staticmethod
    def resolve(world_size: int, dp: int = -1, tp: int = 1, pp: int = 1, cp: int = 1) -> "ParallelDims":
        """Fill dp=-1 from the world size and check every degree; errors name the field and fix."""
        for name, val in (("parallel.tp", tp), ("parallel.pp", pp), ("parallel.cp", cp)):
            if val < 1:
                raise ValueError(f"{name}={val} must be >= 1")
        inner = tp * pp * cp
        if dp == -1:
            if world_size % inner:
                raise ValueError(
                    f"world size {world_size} is not divisible by parallel.tp*parallel.pp*parallel.cp="
                    f"{tp}*{pp}*{cp}={inner}; change the degrees or the number of processes")
            dp = world_size // inner
        if dp < 1:
            raise ValueError(f"parallel.dp={dp} must be >= 1 or -1 (the rest of the world)")
        if dp * inner != world_size:
            raise ValueError(
                f"parallel.dp*tp*pp*cp = {dp}*{tp}*{pp}*{cp} = {dp * inner} but the world size is "
                f"{world_size}; set parallel.dp=-1 or launch {dp * inner} processes")
        return ParallelDims(world_size, dp, tp, pp, cp)

    def coords(self, rank: int) -> dict[str, int]:
        tp_rank = rank % self.tp
        cp_rank = (rank // self.tp) % self.cp
        pp_rank = (rank // (self.tp * self.cp)) % self.pp
        dp_rank = rank // (self.tp * self.cp * self.pp)
        return {"dp": dp_rank, "pp": pp_rank, "cp": cp_rank, "tp": tp_rank}

    def rank_of(self, dp: int, pp: int, cp: int, tp: int) -> int:
        return ((dp * self.pp + pp) * self.cp + cp) * self.tp + tp


def _groups_along(dims: ParallelDims, axis: str) -> list[list[int]]:
    """All rank lists that differ only along `axis` (or along dp and cp for 'dpcp')."""
    axes = {"dp": dims.dp, "pp": dims.pp, "cp": dims.cp, "tp": dims.tp}
    vary = ("dp", "cp") if axis == "dpcp" else (axis,)
    fixed = [a for a in axes if a not in vary]
    groups = []
    for fixed_vals in itertools.product(*[range(axes[a]) for a in fixed]):
        base = dict(zip(fixed, fixed_vals))
        ranks = []
        for vary_vals in itertools.product(*[range(axes[a]) for a in vary]):
            c = {**base, **dict(zip(vary, vary_vals))}
            ranks.append(dims.rank_of(c["dp"], c["pp"], c["cp"], c["tp"]))
        groups.append(sorted(ranks))
    return groups


def _ulysses_splits(dims: ParallelDims, u: int) -> tuple[list[list[int]], list[list[int]]]:
    """USP's sub-groups of every CP group: Ulysses groups of u adjacent CP ranks, and rings of
    the CP ranks at the same position inside their Ulysses group."""
    uly, rings = [], []
    for cp_ranks in _groups_along(dims, "cp"):
        uly += [cp_ranks[g * u:(g + 1) * u] for g in range(dims.cp // u)]
        rings += [cp_ranks[i::u] for i in range(u)]
    return uly, rings


@dataclass
class ParallelState:
    """This rank's coordinates and process groups. `None` groups mean 'not distributed'."""
    dims: ParallelDims
    rank: int
    device: torch.device
    dp_rank: int = 0
    cp_rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    dp_group: object = None
    cp_group: object = None
    dpcp_group: object = None     # the CAD group: all DP x CP ranks of one (tp, pp) position
    tp_group: object = None       # the ranks that split one layer's weights (adjacent ranks)
    pp_group: object = None       # the ranks holding consecutive pipeline stages
    ulysses_group: object = None  # USP only: this rank's Ulysses group inside its CP group
    ring_group: object = None     # USP only: the ring across Ulysses groups
    embed_group: object = None    # tied embeddings with pp > 1: the first and last stage's ranks

    @staticmethod
    def create(dims: ParallelDims, device: torch.device | None = None,
               ulysses: int | None = None, tied_embeddings: bool = False) -> "ParallelState":
        """Build every group (USP's when `ulysses` is given; the first and last pipeline
        stage's pair when embeddings are tied and pp > 1). Must be called on all ranks in the
        same order: creating a group is collective."""
        device = device or torch.device("cpu")
        if not dist.is_initialized():
            if dims.world_size != 1:
                raise RuntimeError("torch.distributed is not initialised but world_size > 1")
            return ParallelState(dims, 0, device)
        rank = dist.get_rank()
        c = dims.coords(rank)
        st = ParallelState(dims, rank, device, c["dp"], c["cp"], c["tp"], c["pp"])
        lists = {"dp_group": _groups_along(dims, "dp"), "cp_group": _groups_along(dims, "cp"),
                 "dpcp_group": _groups_along(dims, "dpcp")}
        for axis in ("tp", "pp"):  # groups of one rank would only cost start-up time
            if getattr(dims, axis) > 1:
                lists[f"{axis}_group"] = _groups_along(dims, axis)
        if tied_embeddings and dims.pp > 1:
            lists["embed_group"] = [[g[0], g[-1]] for g in _groups_along(dims, "pp")]
        if ulysses is not None:
            lists["ulysses_group"], lists["ring_group"] = _ulysses_splits(dims, ulysses)
        for attr, groups in lists.items():
            for ranks in groups:
                g = dist.new_group(ranks)
                if rank in ranks:
                    setattr(st, attr, g)
        return st
