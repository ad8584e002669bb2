"""The config sections `parallel/` consumes, as typed dataclasses.

The trainer's schema (`distca/config/schema.py`) composes them under `parallel`, so Hydra
types and checks every override, while `parallel/` never imports the trainer. Choice fields
are enums: an unknown value fails at composition with the list of choices
(`parallel.cp_algo=rnig` -> "Invalid value 'rnig', expected one of [local, ring, ...]").
Checks that need several fields or the world size live in `parallel/plan.py`.

Hydra's structured-config rules shape this file: simple field types, `Optional[...]` from
`typing`, nested sections through `field(default_factory=...)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional


class Choice(str, Enum):
    """An enum whose members are their own (string) values: `CPAlgo.ring == "ring"`, and
    f-strings and dict keys see the plain string, in every Python version."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:  # error messages quote the value as the user typed it
        return repr(str.__str__(self))

    __format__ = str.__format__

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class CPAlgo(Choice):
    local = "local"          # one rank holds the whole sequence (cp = 1)
    ring = "ring"            # K/V blocks travel around the CP group
    allgather = "allgather"  # every rank gathers all K/V (per head group)
    ulysses = "ulysses"      # all-to-all from sequence to head sharding
    usp = "usp"              # ulysses inside groups, ring across them
    cad = "cad"              # core attention disaggregation (balanced over DP x CP)


class CPLayout(Choice):
    auto = "auto"                # the CP algorithm's own choice
    contiguous = "contiguous"    # the stream cut into cp runs
    zigzag = "zigzag"            # 2 cp chunks, rank r holds r and 2cp-1-r
    head_tail = "head_tail"      # every document cut into 2 cp chunks, head + tail per rank


# "1f1b": one chunk per rank, one forward / one backward in steady state; "interleaved":
# parallel.pp_virtual chunks per rank (Megatron's). Built with the functional API because
# "1f1b" is not an identifier (OmegaConf matches a value by member name).
PPSchedule = Choice("PPSchedule", [("1f1b", "1f1b"), ("interleaved", "interleaved")])


class CADOverlap(Choice):
    auto = "auto"            # per micro-batch, the cheapest of the three by a cost model of its plan
    none = "none"            # one dispatch, one kernel, one return
    halves = "halves"        # two halves of the tasks, one's all-to-all under the other's kernel
    nanobatch = "nanobatch"  # two nano-batches of documents, comm under the other's layer work


class CADBackward(Choice):
    stateful = "stateful"  # servers keep the received rows, o and LSE until the backward
    resend = "resend"      # servers keep nothing: origins keep o and LSE and resend q, k, v


class CADPipeline(Choice):
    stage = "stage"  # with pp > 1, each stage's DP x CP ranks form their own CAD group
    joint = "joint"  # lock-step 1F1B ticks; every tick's attention balanced over DP x PP x CP


@dataclass
class CADConfig:
    tolerance: float = 0.02     # servers balanced to within (1 + tolerance) x the mean cost
    servers: int = 0            # 0: every rank serves in place; K > 0: K dedicated servers
    block: int = 128            # cuts on multiples of this (the kernel's tile); halved per step
                                # while pieces are too short to balance at it (metric cad_block)
    ping_pong: bool = True      # two halves, one's all-to-all overlapping the other's kernel
    memory_cap: Optional[float] = None  # bytes a server may hold for attention tasks; null: no cap
    cost_table: str = "auto"    # auto (the GPU's measured table: h200 on H200s, else h100; causal FLOPs
                                # on CPU) | h100 | h200 | none | a JSON path
    backward: CADBackward = CADBackward.stateful  # what servers keep between forward and backward
    overlap: CADOverlap = CADOverlap.auto  # auto (per micro-batch, from its plan: metric cad_overlap) |
                                           # nanobatch (DistCA's ping-pong) | halves (needs ping_pong=true)
                                           # | none; joint pipelines: auto or halves
    link_gbps: float = 50.0     # GB/s per rank and direction that auto prices the exchange at; 0: measured
                                # at the first step (one timed all-to-all, the group's slowest rank)
    pipeline: CADPipeline = CADPipeline.stage  # joint: pool attention across pipeline stages (needs backward=resend)
    pool: int = 0               # K > 0: K extra ranks per TP position that hold no weights and serve all attention


@dataclass
class ParallelConfig:
    dp: int = -1                # data-parallel degree (-1: the rest of the world)
    tp: int = 1                 # tensor-parallel degree (Megatron-style, sequence parallel)
    pp: int = 1                 # pipeline-parallel degree
    cp: int = 1                 # context-parallel degree (needs a cp_algo other than local)
    cp_algo: CPAlgo = CPAlgo.local  # how attention spans the CP group (cad: over DP x CP)
    cp_layout: CPLayout = CPLayout.auto  # which tokens each CP rank holds (parallel/context/shard.py)
    ulysses: int = 1            # ulysses degree inside usp (cp = ulysses x ring)
    kv_head_groups: int = 2     # allgather: K/V gathered in this many head groups (caps memory)
    pp_schedule: PPSchedule = PPSchedule("1f1b")  # pipeline schedule (interleaved needs pp_virtual > 1)
    pp_virtual: int = 1         # chunks (virtual stages) per pipeline rank; > 1 with interleaved
    pp_split: List[int] = field(default_factory=list)  # layers per chunk; empty: balanced by cost
    zero_stage: int = 0         # 0: torch DDP; 1-3: DeepSpeed ZeRO
    cad: CADConfig = field(default_factory=CADConfig)  # core attention disaggregation (cp_algo=cad)


@dataclass(frozen=True)
class ModelShape:
    """What the parallel plan needs to know of the model to validate a layout."""
    heads: int
    kv_heads: int
    layers: str   # one letter per layer: S softmax attention, L linear attention
    ffn_hidden: int = 0  # 0: not checked
    # per-layer cost (any unit) and the embedding's / LM head's, for balancing pipeline chunks
    layer_costs: tuple = ()
    embed_cost: float = 0.0
    head_cost: float = 0.0
    tied_embeddings: bool = False  # one weight on the first and last pipeline stage

    @property
    def has_linear(self) -> bool:
        return "L" in self.layers
