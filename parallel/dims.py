"""Parallel degrees and the process groups built from them.

Rank order (innermost first): tp, cp, pp, dp. So the ranks of one CP group are adjacent,
and the CAD group (all DP x CP ranks sharing a tp and pp rank) is built from the same grid.
A dedicated CAD attention pool (`parallel.cad.pool` = K) adds K x tp ranks after the model
grid: pool rank k of TP position t is `model_world + k * tp + t`. They hold no weights and
join the CAD group of their TP position as its only attention servers.
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
    pool: int = 0   # dedicated CAD attention ranks per TP position (parallel.cad.pool)

    @property
    def model_world(self) -> int:
        """Ranks that hold model weights (the dp x tp x pp x cp grid); the pool follows them."""
        return self.world_size - self.pool * self.tp

    def is_pool(self, rank: int) -> bool:
        return rank >= self.model_world

    def pool_coords(self, rank: int) -> tuple[int, int]:
        """(pool index k, TP position t) of a pool rank."""
        i = rank - self.model_world
        return i // self.tp, i % self.tp

    @staticmethod
    def resolve(world_size: int, dp: int = -1, tp: int = 1, pp: int = 1, cp: int = 1,
                pool: int = 0) -> "ParallelDims":
        """Fill dp=-1 from the world size and check every degree; errors name the field and fix."""
        for name, val in (("parallel.tp", tp), ("parallel.pp", pp), ("parallel.cp", cp)):
            if val < 1:
                raise ValueError(f"{name}={val} must be >= 1")
        if pool:
            if pool * tp >= world_size:
                raise ValueError(
                    f"parallel.cad.pool={pool} x parallel.tp={tp} = {pool * tp} pool ranks leave no "
                    f"model ranks in a world of {world_size}; launch more processes (model ranks + "
                    f"{pool * tp} pool ranks) or lower parallel.cad.pool")
            full = world_size
            world_size -= pool * tp
        inner = tp * pp * cp
        if dp == -1:
            if world_size % inner:
                if pool:
                    raise ValueError(
                        f"world size {full} less the {pool * tp} ranks of parallel.cad.pool={pool} "
                        f"leaves {world_size} model ranks, not divisible by parallel.tp*parallel.pp*"
                        f"parallel.cp={tp}*{pp}*{cp}={inner}; launch {-(-world_size // inner) * inner + pool * tp} "
                        "processes or change the degrees")
                raise ValueError(
                    f"world size {world_size} is not divisible by parallel.tp*parallel.pp*parallel.cp="
                    f"{tp}*{pp}*{cp}={inner}; change the degrees or the number of processes")
            dp = world_size // inner
        if dp < 1:
            raise ValueError(f"parallel.dp={dp} must be >= 1 or -1 (the rest of the world)")
        if dp * inner != world_size:
            pool_note = (f" ({world_size} model ranks once the {pool * tp} ranks of "
                         f"parallel.cad.pool={pool} are set aside)" if pool else "")
            raise ValueError(
                f"parallel.dp*tp*pp*cp = {dp}*{tp}*{pp}*{cp} = {dp * inner} but the world size is "
                f"{world_size}{pool_note}; set parallel.dp=-1 or launch {dp * inner + pool * tp} processes")
        if pool:
            return ParallelDims(full, dp, tp, pp, cp, pool)
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
    """All rank lists that differ only along `axis` (or along dp and cp for 'dpcp', along
    dp, pp and cp for 'dpppcp')."""
    axes = {"dp": dims.dp, "pp": dims.pp, "cp": dims.cp, "tp": dims.tp}
    vary = {"dpcp": ("dp", "cp"), "dpppcp": ("dp", "pp", "cp")}.get(axis, (axis,))
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
    dpcp_group: object = None     # all DP x CP ranks of one (tp, pp) position: gradients, loss
    cad_group: object = None      # the CAD group: dpcp_group, plus its TP position's pool ranks
    cad_meta_group: object = None  # a CPU (gloo) twin of cad_group: CAD's plan-ahead metadata
    model_group: object = None    # with a pool: every model rank (checkpoints); None = the world
    pool_index: int | None = None  # this rank's index in the attention pool; None: a model rank
    tp_group: object = None       # the ranks that split one layer's weights (adjacent ranks)
    pp_group: object = None       # the ranks holding consecutive pipeline stages
    ulysses_group: object = None  # USP only: this rank's Ulysses group inside its CP group
    ring_group: object = None     # USP only: the ring across Ulysses groups
    embed_group: object = None    # tied embeddings with pp > 1: the first and last stage's ranks

    @staticmethod
    def create(dims: ParallelDims, device: torch.device | None = None,
               ulysses: int | None = None, tied_embeddings: bool = False,
               cad_across_pp: bool = False, cad_meta: bool = False) -> "ParallelState":
        """Build every group (USP's when `ulysses` is given; the first and last pipeline
        stage's pair when embeddings are tied and pp > 1; with `cad_meta` a gloo twin of each
        CAD group, where CAD all-gathers plan metadata from a background thread without
        meeting the training collectives). Must be called on all ranks in the same order:
        creating a group is collective."""
        device = device or torch.device("cpu")
        if not dist.is_initialized():
            if dims.world_size != 1:
                raise RuntimeError("torch.distributed is not initialised but world_size > 1")
            return ParallelState(dims, 0, device)
        rank = dist.get_rank()
        if dims.is_pool(rank):  # outside the model grid: no dp/cp/pp peers of its own
            k, t = dims.pool_coords(rank)
            st = ParallelState(dims, rank, device, tp_rank=t, pool_index=k)
        else:
            c = dims.coords(rank)
            st = ParallelState(dims, rank, device, c["dp"], c["cp"], c["tp"], c["pp"])
        grid = ParallelDims(dims.model_world, dims.dp, dims.tp, dims.pp, dims.cp)
        lists = {"dp_group": _groups_along(grid, "dp"), "cp_group": _groups_along(grid, "cp"),
                 "dpcp_group": _groups_along(grid, "dpcp")}
        for axis in ("tp", "pp"):  # groups of one rank would only cost start-up time
            if getattr(dims, axis) > 1:
                lists[f"{axis}_group"] = _groups_along(grid, axis)
        if cad_across_pp:  # CAD pooled across pipeline stages: DP x PP x CP of a TP position
            lists["cad_group"] = _groups_along(grid, "dpppcp")
        if dims.pool:
            for attr, groups in _pool_groups(dims).items():
                lists[attr] = lists.get(attr, []) + groups
        if tied_embeddings and dims.pp > 1:
            lists["embed_group"] = [[g[0], g[-1]] for g in _groups_along(dims, "pp")]
        if ulysses is not None:
            lists["ulysses_group"], lists["ring_group"] = _ulysses_splits(dims, ulysses)
        for attr, groups in lists.items():
            for ranks in groups:
                g = dist.new_group(ranks)
                if rank in ranks:
                    setattr(st, attr, g)
        if st.cad_group is None:  # no pool: the CAD group is the DP x CP group
            st.cad_group = st.dpcp_group
        if cad_meta:
            for ranks in lists.get("cad_group", lists["dpcp_group"]):
                g = dist.new_group(ranks, backend="gloo")
                if rank in ranks:
                    st.cad_meta_group = g
        return st


def _pool_groups(dims: ParallelDims) -> dict[str, list[list[int]]]:
    """The pool's groups: each TP position's CAD group (its DP x CP ranks, pp must be 1, plus
    its pool ranks), the model ranks (checkpoints skip the pool), and the TP groups of the
    pool's ranks (a pool rank slices heads like a model rank of its TP position)."""
    grid = ParallelDims(dims.model_world, dims.dp, dims.tp, dims.pp, dims.cp)
    pool = [[dims.model_world + k * dims.tp + t for k in range(dims.pool)] for t in range(dims.tp)]
    cad = [sorted(g) + pool[grid.coords(g[0])["tp"]] for g in _groups_along(grid, "dpcp")]
    out = {"cad_group": cad, "model_group": [list(range(dims.model_world))]}
    if dims.tp > 1:
        out["tp_group"] = [[dims.model_world + k * dims.tp + t for t in range(dims.tp)]
                           for k in range(dims.pool)]
    return out
