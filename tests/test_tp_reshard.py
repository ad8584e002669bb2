"""Moving the sequence-parallel stream into CAD's nano-batch layout (parallel/tensor/reshard.py):
on gloo at tp=2 and tp=3 (padding on the last rank), the moved rows are exactly each
nano-batch's rows sharded P_n per rank with zero padding, the move back restores the stream,
and the backward of a move is the reverse move (gradients land on the rows they came from)."""
import numpy as np
import pytest
import torch

from tests.distributed_utils import run_distributed


def _check(rank, world, tokens):
    import torch.distributed as dist

    from parallel.tensor.comm import rows_per_rank
    from parallel.tensor.reshard import move_rows, nano_layout
    group = dist.group.WORLD
    rng = np.random.default_rng(tokens)
    perm = rng.permutation(tokens)
    cut = int(rng.integers(1, tokens))
    rows = [np.sort(perm[:cut]), perm[cut:]]  # any order within a nano-batch
    full = torch.arange(tokens * 3, dtype=torch.float64).view(tokens, 3) + 1  # no zero rows
    P = rows_per_rank(tokens, world)
    mine = torch.zeros(P, 3, dtype=torch.float64)
    own = full[rank * P:(rank + 1) * P]
    mine[:own.shape[0]] = own
    mine.requires_grad_()
    move, chunks = nano_layout(rows, tokens, world, rank, "cpu")
    assert chunks == [rows_per_rank(len(r), world) for r in rows]
    got = move_rows(mine, move, group).split(chunks)
    for n, r in enumerate(rows):
        want = torch.zeros(chunks[n], 3, dtype=torch.float64)
        part = full[torch.from_numpy(r[rank * chunks[n]:(rank + 1) * chunks[n]])]
        want[:part.shape[0]] = part
        assert torch.equal(got[n], want), (rank, n)
    back = move_rows(torch.cat(got), move.reversed(), group)
    assert torch.equal(back, mine.detach())
    # a weight per nano-layout row: each source row's gradient is its own row's weight
    w = torch.cat(got).detach() * 0 + torch.arange(sum(chunks), dtype=torch.float64)[:, None] + 7 * rank
    (torch.cat(got) * w).sum().backward()
    # the weights of the nano layout, moved back, are what each source row received
    expect = move_rows(w, move.reversed(), group)
    assert torch.equal(mine.grad[:own.shape[0]], expect[:own.shape[0]])
    assert not mine.grad[own.shape[0]:].any()  # padding rows get nothing


@pytest.mark.slow
@pytest.mark.parametrize("world, tokens", [(2, 9), (3, 20), (3, 4)])
def test_nano_layout_moves_rows_and_gradients(world, tokens):
    run_distributed(_check, world, tokens)
