"""The parallel plan: the one owner of the parallel layout, built once from the typed config.

`ParallelPlan(cfg.parallel, model_shape, world_size)` checks everything that can be checked
without a process group (degrees against the world size, heads against Ulysses degrees, the
shard layout against the CP algorithm and LASP-2, CAD options against the CAD group) and
raises one `ValueError` naming the field and the fix. `plan.setup(device)` then creates
every process group (USP's too) and the strategies, and the trainer gets from it all it
needs: the core and linear attention strategies to inject into the model, the shard
builder for micro-batches, and the step metrics. Nothing else reads `parallel.cp_algo` or
decides the shard layout.

Applied outside the model (torchtitan's `parallelize_*` idea): the model receives the
strategies and never imports `parallel`.
"""
from __future__ import annotations

import torch

from parallel.cad.attention import check_cad_config
from parallel.config import CPAlgo, CPLayout, ModelShape, ParallelConfig, PPSchedule
from parallel.context.api import CORE_ATTENTION, LINEAR_ATTENTION
from parallel.context.shard import Shard, build_shard, empty_shard
from parallel.context.strategy import Strategy
from parallel.context.ulysses import kv_replication
from parallel.dims import ParallelDims, ParallelState
from parallel.pipeline.split import balanced_split, manual_split


class ParallelPlan:
    def __init__(self, cfg: ParallelConfig, model: ModelShape, world_size: int):
        self.cfg, self.model = cfg, model
        self.cp_algo = _choice(CPAlgo, cfg.cp_algo, "parallel.cp_algo")
        pool = _check_pool(cfg, self.cp_algo)
        self.dims = ParallelDims.resolve(world_size, cfg.dp, cfg.tp, cfg.pp, cfg.cp, pool)
        self._check()
        self.layout = self._resolve_layout()
        self.state: ParallelState | None = None
        self.core_attention: Strategy | None = None
        self.linear_attention: Strategy | None = None

    # ---- config-time checks (no process group yet) ---------------------------------------
    def _check(self) -> None:
        c, d, m = self.cfg, self.dims, self.model
        if m.heads % d.tp or m.kv_heads % d.tp:
            raise ValueError(f"model.heads={m.heads} and model.kv_heads={m.kv_heads} must be divisible "
                             f"by parallel.tp={d.tp} (each TP rank runs its share of the heads); "
                             "choose a tp that divides both")
        if m.ffn_hidden % d.tp:
            raise ValueError(f"model.ffn_hidden={m.ffn_hidden} must be divisible by parallel.tp={d.tp}; "
                             "choose a tp that divides it")
        if d.tp > 1 and c.zero_stage > 1:
            raise ValueError(f"parallel.zero_stage={c.zero_stage} with parallel.tp={d.tp}: only ZeRO "
                             "stage 1 (optimizer state partitioned) composes with tensor parallelism "
                             "here; use parallel.zero_stage=1 (ZeRO-1) or parallel.zero_stage=0 (DDP)")
        self._check_pipeline()
        if d.cp > 1 and self.cp_algo == CPAlgo.local:
            raise ValueError(f"parallel.cp={d.cp} needs a context-parallel algorithm; set "
                             "parallel.cp_algo to ring, allgather, ulysses, usp or cad")
        if self.cp_algo == CPAlgo.usp:
            if c.ulysses < 1 or d.cp % c.ulysses:
                raise ValueError(f"parallel.ulysses={c.ulysses} must divide parallel.cp={d.cp} for usp")
            if d.cp > 1:  # the heads of one TP rank are split over the Ulysses group
                kv_replication(m.heads // d.tp, m.kv_heads // d.tp, c.ulysses, "parallel.ulysses")
        if self.cp_algo == CPAlgo.ulysses and d.cp > 1:
            kv_replication(m.heads // d.tp, m.kv_heads // d.tp, d.cp, "parallel.cp")
        if isinstance(c.kv_head_groups, bool) or not isinstance(c.kv_head_groups, int) \
                or c.kv_head_groups < 1:
            raise ValueError(f"parallel.kv_head_groups={c.kv_head_groups!r} must be an integer >= 1 "
                             "(1 gathers all K/V heads at once)")
        if c.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"parallel.zero_stage={c.zero_stage} must be 0 (DDP) or 1, 2, 3 (ZeRO)")
        if self.cp_algo == CPAlgo.cad:
            check_cad_config(c.cad, d.dp * d.cp)
            if c.cad.pipeline == "joint":
                self._check_joint_pipeline()

    def _check_pipeline(self) -> None:
        c, d, m = self.cfg, self.dims, self.model
        schedule = _choice(PPSchedule, c.pp_schedule, "parallel.pp_schedule")
        v = c.pp_virtual
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"parallel.pp_virtual={v!r} must be an integer >= 1")
        if schedule == PPSchedule("1f1b") and v != 1:
            raise ValueError(f"parallel.pp_virtual={v} needs parallel.pp_schedule=interleaved "
                             "(1f1b runs one chunk per pipeline rank)")
        if schedule == PPSchedule("interleaved") and v < 2:
            raise ValueError("parallel.pp_schedule=interleaved needs parallel.pp_virtual >= 2 "
                             "(chunks per pipeline rank); or use parallel.pp_schedule=1f1b")
        chunks = d.pp * v
        if chunks > len(m.layers):
            raise ValueError(f"parallel.pp x parallel.pp_virtual = {chunks} pipeline chunks but "
                             f"model.layers has {len(m.layers)} layers; each chunk needs one")
        if d.pp > 1 and c.zero_stage > 1:
            raise ValueError(f"parallel.zero_stage={c.zero_stage} with parallel.pp={d.pp}: only ZeRO "
                             "stage 1 (optimizer state partitioned) composes with pipeline "
                             "parallelism here; use parallel.zero_stage=1 (ZeRO-1) or parallel.zero_stage=0 (DDP)")
        if c.pp_split:
            self.chunks = manual_split(list(c.pp_split), len(m.layers), chunks)
        else:
            costs = list(m.layer_costs) or [1.0] * len(m.layers)
            self.chunks = balanced_split(costs, chunks, m.embed_cost, m.head_cost)

    def _check_joint_pipeline(self) -> None:
        """parallel.cad.pipeline=joint: one CAD group over DP x PP x CP, planned per tick of a
        lock-step 1F1B (parallel/pipeline/timeline.py lockstep_timeline)."""
        c, d = self.cfg, self.dims
        field = "parallel.cad.pipeline=joint"
        if d.pp < 2:
            raise ValueError(f"{field} pools attention across pipeline stages and needs "
                             f"parallel.pp > 1 (it is {d.pp}); drop it or set parallel.pp")
        if c.cad.backward != "resend":
            raise ValueError(f"{field} needs parallel.cad.backward=resend: a backward tick pairs "
                             "micro-batches whose forwards ran in different ticks, so servers "
                             "cannot keep state between them")
        if c.pp_schedule != PPSchedule("1f1b"):
            raise ValueError(f"{field} runs the lock-step 1F1B schedule; set parallel.pp_schedule=1f1b")
        if c.cad.overlap == "nanobatch":  # auto: halves (or none where nothing moves) per tick
            raise ValueError(f"{field} runs one CAD call per layer and tick (a backward tick replans "
                             "micro-batches in other stages' company, which two nano-batches per "
                             "micro-batch do not follow); set parallel.cad.overlap=halves")
        counts = [sum(self.model.layers[i] == "S" for i in chunk) for chunk in self.chunks]
        if len(set(counts)) > 1:
            raise ValueError(f"{field}: every stage must run the same number of softmax layers "
                             f"(their attention is served in the same rounds), but the split "
                             f"{[list(ch) for ch in self.chunks]} gives {counts}; set "
                             "parallel.pp_split so that each stage holds as many S layers")

    def chunks_of(self, pp_rank: int) -> list[int]:
        """The global chunk indices pipeline rank pp_rank runs (c % pp == pp_rank)."""
        return list(range(pp_rank, len(self.chunks), self.dims.pp))

    def _resolve_layout(self) -> str:
        core = self._core_class()
        linear = LINEAR_ATTENTION["lasp2"] if self.model.has_linear and self.dims.cp > 1 else None
        want = _choice(CPLayout, self.cfg.cp_layout, "parallel.cp_layout")
        if want == CPLayout.auto:
            layout = core.default_layout
            if linear is not None and layout not in linear.layouts:
                layout = next(x for x in core.layouts if x in linear.layouts)
            return layout
        if want not in core.layouts:
            raise ValueError(f"parallel.cp_layout={want} is not supported by parallel.cp_algo="
                             f"{self.cp_algo}; use one of {core.layouts} or auto")
        if linear is not None and want not in linear.layouts:
            raise ValueError(f"parallel.cp_layout={want}: the linear-attention layers of model.layers="
                             f"{self.model.layers!r} run LASP-2, which supports {linear.layouts}; set "
                             "parallel.cp_layout to one of them (or auto)")
        return str(want)

    def _core_class(self) -> type[Strategy]:
        return CORE_ATTENTION[self.core_algo]

    @property
    def core_algo(self) -> CPAlgo:
        """The algorithm that runs: CAD also balances over DP alone; others need cp > 1."""
        return self.cp_algo if self.dims.cp > 1 or self.cp_algo == CPAlgo.cad else CPAlgo.local

    # ---- runtime ---------------------------------------------------------------------------
    def setup(self, device: torch.device | None = None) -> ParallelState:
        """Create every process group and the strategies. Collective: every rank, same order."""
        usp = self.core_algo == CPAlgo.usp
        st = ParallelState.create(self.dims, device, ulysses=self.cfg.ulysses if usp else None,
                                  tied_embeddings=self.model.tied_embeddings,
                                  cad_across_pp=self.joint_pipeline,
                                  cad_meta=self.core_algo == CPAlgo.cad and not self.joint_pipeline)
        self.state = st
        self.core_attention = self._build_core(st)
        linear = "lasp2" if self.dims.cp > 1 else "local"
        self.linear_attention = (LINEAR_ATTENTION[linear](st.cp_group) if linear == "lasp2"
                                 else LINEAR_ATTENTION[linear]())
        return st

    def _build_core(self, st: ParallelState) -> Strategy:
        algo, cls = self.core_algo, self._core_class()
        if algo == CPAlgo.local:
            return cls()
        if algo == CPAlgo.allgather:
            return cls(st.cp_group, self.cfg.kv_head_groups)
        if algo == CPAlgo.usp:
            return cls(st.cp_group, st.ulysses_group, st.ring_group, self.cfg.ulysses)
        if algo == CPAlgo.cad:
            # a pool rank has no micro-batch stream of its own: an id after the DP replicas'
            stream = st.dp_rank if st.pool_index is None else self.dims.dp + st.pool_index
            if self.joint_pipeline:  # every stage's micro-batch is a stream of its own
                stream = st.pp_rank * self.dims.dp + st.dp_rank
            return cls(st.cad_group, stream, self.cfg.cad, meta_group=st.cad_meta_group)
        return cls(st.cp_group)  # ring, ulysses

    def build_shard(self, doc_lens: list[int]) -> Shard:
        """This rank's shard of a micro-batch stream with these document lengths (a pool
        rank holds no tokens: an empty shard, so it runs every layer on nothing and serves)."""
        if self.is_pool:
            return empty_shard(self.layout)
        return build_shard(doc_lens, self._state().cp_rank, self.dims.cp, layout=self.layout)

    @property
    def joint_pipeline(self) -> bool:
        """CAD pooled across pipeline stages (parallel.cad.pipeline=joint) is in effect."""
        return self.core_algo == CPAlgo.cad and self.dims.pp > 1 and self.cfg.cad.pipeline == "joint"

    @property
    def is_pool(self) -> bool:
        """This rank is in the dedicated CAD attention pool (parallel.cad.pool)."""
        return self._state().pool_index is not None

    def plan_ahead(self, shards: list[Shard]) -> None:
        """The micro-batches about to run, in order (every rank calls this for its own, at the
        same point of the loop): CAD starts planning them in the background, so planning
        micro-batch i + 1 overlaps micro-batch i. No collective on the training groups."""
        for shard in shards:
            self.core_attention.plan_ahead(shard)

    def step_metrics(self) -> dict[str, float]:
        """What the strategies measured since the last call (one optimizer step)."""
        return {**self.core_attention.step_metrics(), **self.linear_attention.step_metrics()}

    @property
    def dp_rank(self) -> int:
        return self._state().dp_rank

    def _state(self) -> ParallelState:
        if self.state is None:
            raise RuntimeError("ParallelPlan.setup(device) must run before the plan is used")
        return self.state


def _check_pool(cfg: ParallelConfig, algo: CPAlgo) -> int:
    """parallel.cad.pool's checks that need other fields; returns the pool size in effect."""
    pool = cfg.cad.pool
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise ValueError(f"parallel.cad.pool={pool!r} must be an integer >= 0 (0: no dedicated pool)")
    if not pool:
        return 0
    if algo != CPAlgo.cad:
        raise ValueError(f"parallel.cad.pool={pool} serves core attention for CAD only; set "
                         "parallel.cp_algo=cad, or parallel.cad.pool=0")
    if cfg.pp > 1:
        raise ValueError(f"parallel.cad.pool={pool} with parallel.pp={cfg.pp}: a pool serving every "
                         "pipeline stage is not built yet; use parallel.pp=1 or parallel.cad.pool=0")
    if cfg.zero_stage:
        raise ValueError(f"parallel.cad.pool={pool} with parallel.zero_stage={cfg.zero_stage}: "
                         "DeepSpeed's engine spans the whole world, pool ranks included; use "
                         "parallel.zero_stage=0 (DDP) with a pool")
    return pool


def _choice(enum, value, field: str):
    """An enum member from a member or its string (configs built in code skip Hydra's check)."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{field}={value!r} is unknown; choose one of {enum.names()}") from None
