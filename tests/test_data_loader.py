"""The per-rank loader: every rank plans the step from lengths alone, reads only its own share
(in the background or not: bitwise the same), and the ranks together hold exactly the
single-process global batch; mixes keep their proportions and resume exactly at another layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distca.data import DataConfig, MixSource, build_data
from distca.data.balance import assign_bins, attention_work, balanced_bins, imbalance
from tests.data_helpers import indexed_dataset, layout, texts, write_jsonl
from tests.distributed_utils import run_distributed


def _mix_cfg(tmp_path, seq_len=64, packing="sequential", **kw) -> DataConfig:
    """A 60/40 mix of an indexed dataset (mixed lengths, some longer than a sample) and jsonl text."""
    tmp_path = Path(tmp_path)
    if not (tmp_path / "idx.idx").exists():
        rng = np.random.default_rng(3)
        lengths = np.where(rng.random(120) < 0.1, rng.integers(100, 300, 120), rng.integers(2, 40, 120))
        indexed_dataset(tmp_path / "idx", lengths.tolist())
        write_jsonl(tmp_path / "text.jsonl", texts(150, seed=4, longest=200))
    mix = [MixSource(weight=0.6, name="idx", source="tokens", paths=[str(tmp_path / "idx")]),
           MixSource(weight=0.4, name="text", source="jsonl", paths=[str(tmp_path / "text.jsonl")])]
    return DataConfig(mix=mix, seq_len=seq_len, packing=packing, **kw)


def _full_stream(mb):
    """(the micro-batch's whole token stream rebuilt from this CP rank's share, which positions it held)."""
    n = mb.shard.total_tokens
    tokens, labels = torch.full((n,), -1, dtype=torch.int64), torch.full((n,), -7, dtype=torch.int64)
    tokens[mb.shard.index] = mb.input_ids
    labels[mb.shard.index] = mb.labels
    return tokens, labels, mb.shard.index.clone(), list(mb.shard.doc_lens)


def _reference(cfg, gbs, mbs, steps):
    """One process, dp = 1: the global batch of each step."""
    loader = build_data(cfg, seed=5).loader(layout(1, 0), gbs, mbs, "cpu", prefetch=False)
    out = []
    for _ in range(steps):
        b = loader.next_step()
        for mb in b.micro:  # labels: the next token inside each piece, -100 at every piece's end
            ids, lens = mb.input_ids.numpy(), list(mb.shard.doc_lens)
            want = np.append(ids[1:], -100)
            want[np.cumsum(lens) - 1] = -100
            assert np.array_equal(mb.labels.numpy(), want)
        assert b.n_labels == sum(map(sum, b.doc_lens)) - sum(map(len, b.doc_lens))
        out.append(([(mb.input_ids, mb.labels, list(mb.shard.doc_lens)) for mb in b.micro], b.n_labels, b.doc_lens))
    return out


def _rank(rank, world, tmp, dp, cp, gbs, mbs):
    import torch.distributed as dist

    from distca.config import to_typed
    from distca.config.validate import build_plan
    from tests.train_utils import tiny_cfg

    cfg = to_typed(tiny_cfg(f"{tmp}/run", f"parallel.dp={dp}", f"parallel.cp={cp}",
                            "parallel.cp_algo=" + ("ring" if cp > 1 else "local"),
                            f"train.global_batch_size={gbs}", f"train.micro_batch_size={mbs}"))
    plan = build_plan(cfg, world, 320)
    plan.setup(torch.device("cpu"))
    records = {}
    for packing in ("sequential", "balanced"):
        data = build_data(_mix_cfg(tmp, packing=packing), seed=5)
        for prefetch in (False, True):
            loader = data.loader(plan, gbs, mbs, torch.device("cpu"), prefetch=prefetch, steps=3)
            reads = []
            loader.read_hook = lambda *r: reads.append(r)
            steps = []
            for _ in range(3):
                b = loader.next_step()
                steps.append(([_full_stream(mb) for mb in b.micro], b.n_labels, b.doc_lens))
            records[packing, prefetch] = (steps, sorted(reads))
    gathered = [None] * world
    dist.all_gather_object(gathered, (plan.dp_rank, plan.state.cp_rank, records))
    if rank != 0:
        return
    for packing in ("sequential", "balanced"):
        ref = _reference(_mix_cfg(tmp, packing=packing), gbs, mbs, 3)
        planner = build_data(_mix_cfg(tmp, packing=packing), seed=5).planner(gbs, mbs, dp)
        plans = [planner.next_plan() for _ in range(3)]
        for prefetch in (False, True):
            for s in range(3):
                per_dp = {}
                for dp_rank, cp_rank, rec in gathered:
                    mbs_here, n_labels, doc_lens = rec[packing, prefetch][0][s]
                    assert n_labels == ref[s][1] and doc_lens == ref[s][2]  # every rank knows the global step
                    per_dp.setdefault(dp_rank, []).append(mbs_here)
                union = []
                for dp_rank in range(dp):
                    cps = per_dp[dp_rank]
                    assert len(cps) == cp
                    for j in range(len(cps[0])):  # CP ranks of one replica: shares of the same stream
                        held = torch.cat([c[j][2] for c in cps])
                        assert torch.equal(held.sort().values, torch.arange(cps[0][j][0].numel()))
                        tokens, labels = cps[0][j][0].clone(), cps[0][j][1].clone()
                        for c in cps[1:]:
                            tokens[c[j][2]], labels[c[j][2]] = c[j][0][c[j][2]], c[j][1][c[j][2]]
                        union.append((tokens, labels, cps[0][j][3]))
                want = [(t, lab, d) for t, lab, d in ref[s][0]]
                key = lambda m: (m[0].numpy().tobytes(), str(m[2]))  # noqa: E731
                if packing == "balanced":  # the same micro-batches, spread over ranks by cost
                    union, want = sorted(union, key=key), sorted(want, key=key)
                assert len(union) == len(want), (packing, prefetch, s)
                for (t, lab, d), (rt, rlab, rd) in zip(union, want):
                    assert torch.equal(t, rt) and torch.equal(lab, rlab) and d == rd, (packing, prefetch, s)
            # a rank reads exactly the token ranges of its own micro-batches, never another's
            for dp_rank, cp_rank, rec in gathered:
                reads = rec[packing, prefetch][1]
                own = sorted((int(p.src[i]), int(p.doc[i]), int(p.start[i]), int(p.start[i] + p.length[i]))
                             for pl in plans for b in pl.ranks[dp_rank] for p in [pl.bins[b]] for i in range(len(p)))
                assert reads == own, (packing, prefetch, dp_rank)
        # prefetch on and off: bitwise the same on every rank
        for _, _, rec in gathered:
            for (off, on) in zip(rec[packing, False][0], rec[packing, True][0]):
                for a, b in zip(off[0], on[0]):
                    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[3] == b[3]


@pytest.mark.slow
@pytest.mark.parametrize("dp,cp,gbs,mbs", [(2, 1, 8, 2), (2, 2, 4, 1), (3, 1, 6, 1)])
def test_ranks_together_hold_the_single_process_batch(tmp_path, dp, cp, gbs, mbs):
    _mix_cfg(tmp_path)  # the files, before the ranks start
    run_distributed(_rank, dp * cp, str(tmp_path), dp, cp, gbs, mbs)


def _pieces_of(plan):
    return sorted((int(p.src[i]), int(p.doc[i]), int(p.start[i]), int(p.length[i]))
                  for p in plan.bins for i in range(len(p)))


def _tokens_of(plan):
    """Every token the step takes, as (source, document, position) triples."""
    return sorted((int(p.src[i]), int(p.doc[i]), int(p.start[i]) + k)
                  for p in plan.bins for i in range(len(p)) for k in range(int(p.length[i])))


def test_mix_proportions_and_determinism(tmp_path):
    cfg = _mix_cfg(tmp_path)
    planner = build_data(cfg, seed=5).planner(10, 1, 1)
    shares = []
    for _ in range(40):  # every global batch: each source within one sample of its weight
        p = planner.next_plan()
        per_source = np.asarray(p.source_tokens) / 64
        assert abs(per_source[0] - 6) <= 1 and per_source.sum() == 10
        shares.append(per_source)
    assert np.sum(shares, 0)[0] / np.sum(shares) == pytest.approx(0.6, abs=0.01)
    a = [_pieces_of(build_data(cfg, seed=5).planner(10, 1, 1).next_plan()) for _ in range(2)]
    assert a[0] == a[1]  # deterministic for a seed
    assert _pieces_of(build_data(cfg, seed=6).planner(10, 1, 1).next_plan()) != a[0]  # another order


@pytest.mark.parametrize("weights", [(0.9, 0.1), (0.25, 0.75)])
def test_mix_proportions_over_many_samples(tmp_path, weights):
    cfg = _mix_cfg(tmp_path)
    cfg.mix[0].weight, cfg.mix[1].weight = weights
    planner = build_data(cfg, seed=1).planner(7, 1, 1)
    tokens = np.sum([planner.next_plan().source_tokens for _ in range(60)], 0)
    assert tokens[0] / tokens.sum() == pytest.approx(weights[0] / sum(weights), abs=0.005)


@pytest.mark.parametrize("packing", ["sequential", "balanced"])
def test_resume_across_a_layout_change_with_a_mix(tmp_path, packing):
    """dp=2 with prefetch runs 3 steps and saves; dp=1 resumes: steps 4-6 equal an
    uninterrupted dp=1 run's, bitwise (and so does dp=3 from the same state)."""
    cfg = _mix_cfg(tmp_path, packing=packing)
    gbs, mbs = 6, 1
    ref = _reference(cfg, gbs, mbs, 6)
    data = build_data(cfg, seed=5)
    ranks = [data.loader(layout(2, r), gbs, mbs, "cpu", prefetch=True) for r in range(2)]
    for loader in ranks:
        loader.start()
        for _ in range(3):
            loader.next_step()
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict()  # the state is global: the same on every rank
    resumed = build_data(cfg, seed=5).loader(layout(1, 0), gbs, mbs, "cpu", prefetch=True)
    resumed.start()  # a step prepared from the old position must be dropped by the load
    resumed.load_state_dict(state)
    for s in range(3, 6):
        b = resumed.next_step()
        got = [(mb.input_ids, mb.labels, list(mb.shard.doc_lens)) for mb in b.micro]
        assert b.n_labels == ref[s][1] and b.doc_lens == ref[s][2]
        for (t, lab, d), (rt, rlab, rd) in zip(got, ref[s][0]):
            assert torch.equal(t, rt) and torch.equal(lab, rlab) and d == rd
    three = [build_data(cfg, seed=5).loader(layout(3, r), gbs, mbs, "cpu", prefetch=False) for r in range(3)]
    for loader in three:
        loader.load_state_dict(state)
    union = [mb.input_ids for loader in three for mb in loader.next_step().micro]
    key = lambda t: t.numpy().tobytes()  # noqa: E731
    assert sorted(map(key, union)) == sorted(key(t) for t, _, _ in ref[3][0])


def test_balanced_trains_the_same_pieces_and_evens_attention(tmp_path):
    """Balanced packing rearranges the sequential step's pieces (the same tokens, the same
    cuts but for about one more per micro-batch, the same stream position after) into
    micro-batches of exactly mbs x seq_len tokens, and evens the attention work over DP ranks."""
    from distca.data.synthetic import SyntheticDocuments
    docs = SyntheticDocuments("pretrain", 1 << 20, 100, seed=0, max_len=8192)
    before, after = [], []
    from distca.data.step_plan import StepPlanner
    seq = StepPlanner([docs], ["s"], [1.0], 8192, 0, 16, 1, 4, "sequential")
    bal = StepPlanner([docs], ["s"], [1.0], 8192, 0, 16, 1, 4, "balanced")
    for _ in range(8):
        a, b = seq.next_plan(), bal.next_plan()
        assert _tokens_of(a) == _tokens_of(b) and a.state_after == b.state_after
        cuts = lambda plan: {(int(p.src[i]), int(p.doc[i]), int(p.start[i]))  # noqa: E731
                             for p in plan.bins for i in range(len(p))}
        assert cuts(a) <= cuts(b) and len(cuts(b) - cuts(a)) <= len(b.bins)  # sequential's cuts, few more
        assert 0 <= a.n_labels - b.n_labels <= len(b.bins)
        assert all(x.tokens == 8192 for x in b.bins) and sorted(sum(b.ranks, [])) == list(range(16))
        before.append(a.dp_imbalance())
        after.append(b.dp_imbalance())
    assert np.mean(after) < 1.1 < np.mean(before), (before, after)


def test_balanced_bins_fill_exactly_and_split_only_when_needed():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 200).tolist()
    cap = 512
    if sum(lengths) % cap:
        lengths.append(cap - sum(lengths) % cap)
    bins_n = sum(lengths) // cap
    bins = balanced_bins(lengths, bins_n, cap)
    assert all(sum(n for _, _, n in b) == cap for b in bins)
    covered = {}
    for b in bins:
        for d, a, n in b:
            covered.setdefault(d, []).append((a, n))
    for d, parts in covered.items():  # every document exactly once, its pieces contiguous
        parts.sort()
        assert parts[0][0] == 0 and sum(n for _, n in parts) == lengths[d]
        assert all(parts[i][0] + parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
    assert sum(len(p) - 1 for p in covered.values()) <= bins_n  # at most about one split per bin
    work = [attention_work([n for _, _, n in b]) for b in bins]
    assert imbalance(work) < imbalance([attention_work(lengths[i::bins_n]) for i in range(bins_n)])
    with pytest.raises(ValueError, match="needs"):
        balanced_bins([5, 5], 2, 4)


def test_assign_bins_gives_each_rank_its_share_heaviest_first():
    work = [9.0, 1.0, 1.0, 8.0, 2.0, 2.0]
    ranks = assign_bins(work, 3)
    assert sorted(sum(ranks, [])) == list(range(6)) and all(len(r) == 2 for r in ranks)
    loads = [sum(work[b] for b in r) for r in ranks]
    assert max(loads) == 10.0  # the 9 shares a rank with at least a 1: no split does better


def test_balanced_bins_by_hand():
    # two micro-batches of 16 tokens: the 8 alone first (work 64), the 4s go to the lighter one
    # until it is full (64), the 2s to the room left beside the 8 (64 + 16); first-fit would
    # give 8+4+4 (96) against 4+4+2+2+2+2 (48)
    bins = balanced_bins([8, 4, 4, 4, 4, 2, 2, 2, 2], 2, 16)
    assert sorted(attention_work([n for _, _, n in b]) for b in bins) == [64.0, 80.0]
    # a piece longer than a micro-batch is cut to fill it, the rest placed like any piece
    bins = balanced_bins([20, 6, 6], 2, 16)
    assert sorted(sorted(n for _, _, n in b) for b in bins) == [[4, 6, 6], [16]]


def test_bad_data_met_while_training_is_one_clear_failure(tmp_path, monkeypatch, capsys):
    """Ids outside the vocabulary are found when a rank reads them (opening reads only the
    index): a DataError (distca-train prints it once, exit 1) naming the file and the fix, said
    by the rank that met it, with or without prefetch."""
    from distca.data.loader import DataError
    indexed_dataset(tmp_path / "d", [30, 30, 30], vocab=258)  # ids up to 256 (EOS)
    data = build_data(DataConfig(source="tokens", paths=[str(tmp_path / "d")], token_vocab_size=200, seq_len=16), 0)
    monkeypatch.setenv("RANK", "3")
    for prefetch in (False, True):
        loader = data.loader(layout(1, 0), 2, 1, "cpu", prefetch=prefetch)
        with pytest.raises(DataError, match=r"d\.bin holds token id \d+, outside the vocabulary of 200.*Fix:"):
            loader.next_step()
        assert "error on rank 3" in capsys.readouterr().err
