"""Pipeline schedules as one static timeline that every rank computes alike.

The model is cut into C = pp x v chunks (v virtual stages per rank for the interleaved
schedule); chunk c runs on pipeline rank c % pp. Each rank gets the order of its compute
actions, Megatron's:

- 1F1B (v = 1): rank r runs min(pp - r - 1, M) warm-up forwards, then alternates one forward
  and one backward (oldest micro-batch first), then the remaining backwards.
- interleaved (v > 1, M a multiple of pp): forwards go chunk by chunk in groups of pp
  micro-batches, backwards the same with the chunks reversed; warm-up
  (pp - r - 1) x 2 + (v - 1) x pp forwards, then 1F1B, then cool-down.

`timeline` plays those orders in lock-step ticks: at each tick a rank runs its next action
if its input exists (a forward needs the previous chunk's forward of that micro-batch, a
backward the next chunk's backward, both from an earlier tick), else it idles. Every rank
gets the same timeline, so after each tick the activations and gradients to move are known
to both ends and travel in one batched exchange without any handshake; the idle ticks are the
bubble (`bubble_fraction`, the schedule's own, for equal-cost actions).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    forward: bool
    chunk: int        # global chunk index, 0 .. C-1
    micro_batch: int

    def __repr__(self) -> str:
        return f"{'F' if self.forward else 'B'}{self.chunk}.{self.micro_batch}"


def owner(chunk: int, pp: int) -> int:
    return chunk % pp


def rank_orders(pp: int, virtual: int, micro_batches: int) -> list[list[Action]]:
    """The order of compute actions of every pipeline rank."""
    if virtual == 1:
        return [_one_f_one_b(r, pp, micro_batches) for r in range(pp)]
    if micro_batches % pp:
        raise ValueError(f"the interleaved schedule needs micro-batches per step ({micro_batches}) "
                         f"to be a multiple of parallel.pp={pp}")
    return [_interleaved(r, pp, virtual, micro_batches) for r in range(pp)]


def _one_f_one_b(r: int, pp: int, m: int) -> list[Action]:
    warm = min(pp - r - 1, m)
    out = [Action(True, r, i) for i in range(warm)]
    for i in range(m - warm):
        out += [Action(True, r, warm + i), Action(False, r, i)]
    out += [Action(False, r, m - warm + i) for i in range(warm)]
    return out


def _interleaved(r: int, pp: int, v: int, m: int) -> list[Action]:
    total = m * v

    def forward(k):   # k-th forward of this rank
        local = (k // pp) % v
        return Action(True, local * pp + r, (k // (pp * v)) * pp + k % pp)

    def backward(k):  # k-th backward: chunks in reverse
        local = v - 1 - (k // pp) % v
        return Action(False, local * pp + r, (k // (pp * v)) * pp + k % pp)

    warm = min((pp - r - 1) * 2 + (v - 1) * pp, total)
    out = [forward(k) for k in range(warm)]
    for i in range(total - warm):
        out += [forward(warm + i), backward(i)]
    out += [backward(total - warm + i) for i in range(warm)]
    return out


def timeline(pp: int, virtual: int, micro_batches: int) -> list[list[Action | None]]:
    """ticks[t][r]: the action rank r runs at tick t (None: idle). Raises if the orders can
    never finish (they always can for the schedules above)."""
    orders = rank_orders(pp, virtual, micro_batches)
    chunks = pp * virtual
    done: dict[Action, int] = {}
    heads = [0] * pp
    ticks: list[list[Action | None]] = []
    while any(h < len(o) for h, o in zip(heads, orders)):
        t = len(ticks)
        row: list[Action | None] = [None] * pp
        for r in range(pp):
            if heads[r] == len(orders[r]):
                continue
            a = orders[r][heads[r]]
            if a.forward:
                need = Action(True, a.chunk - 1, a.micro_batch) if a.chunk > 0 else None
            else:
                need = (Action(False, a.chunk + 1, a.micro_batch) if a.chunk < chunks - 1
                        else Action(True, a.chunk, a.micro_batch))
            if need is None or done.get(need, t) < t:
                row[r] = a
        if not any(row):
            raise RuntimeError(f"pipeline schedule stalls at tick {t}: {[o[h:h + 1] for o, h in zip(orders, heads)]}")
        for r, a in enumerate(row):
            if a is not None:
                done[a] = t
                heads[r] += 1
        ticks.append(row)
    return ticks


def bubble_fraction(ticks: list[list[Action | None]]) -> float:
    """Idle share of all (tick, rank) slots: the schedule's bubble for equal-cost actions."""
    slots = len(ticks) * len(ticks[0]) if ticks else 0
    idle = sum(a is None for row in ticks for a in row)
    return idle / slots if slots else 0.0


def lockstep_timeline(pp: int, micro_batches: int) -> list[list[Action | None]]:
    """1F1B in lock-step for CAD pooled across stages (DistCA's schedule): every tick is a
    forward tick (each rank runs a forward or idles) or a backward tick, alternating, so the
    core attention of all stages in a tick can be planned and served together. Stage r runs
    the forward of micro-batch j at forward tick j + r and its backward at backward tick
    j + 2(pp - 1) - r: the last stage's backward follows its forward in the same tick pair,
    and gradients climb one stage per pair. Ticks where every rank would idle are dropped."""
    m = micro_batches
    ticks: list[list[Action | None]] = []
    for k in range(m + 2 * pp - 2):
        fwd = [Action(True, r, k - r) if 0 <= k - r < m else None for r in range(pp)]
        j = [k - 2 * (pp - 1) + r for r in range(pp)]
        bwd = [Action(False, r, j[r]) if 0 <= j[r] < m else None for r in range(pp)]
        ticks += [row for row in (fwd, bwd) if any(row)]
    return ticks


def tick_kind(row: list[Action | None]) -> bool:
    """True for a forward tick (every action in a lock-step tick has the same kind)."""
    return next(a for a in row if a is not None).forward
