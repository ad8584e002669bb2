"""Model semantics: documents never see each other, RoPE and linear state restart per document,
and initial weights depend only on the seed (the fused loss: tests/test_linear_ce.py)."""
import pytest
import torch

from distca.config import compose_config, to_typed
from distca.data.labels import next_token_labels
from distca.model import build_model
from parallel.context.local import LocalCoreAttention, LocalLinearAttention
from parallel.context.shard import build_shard


def _model(layers, decay="head", seed=0):
    cfg = compose_config(["experiment=tiny", f"model.layers={layers}", f"model.linear_decay={decay}"])
    return build_model(to_typed(cfg).model, 64, LocalCoreAttention(), LocalLinearAttention(), seed).double()


@pytest.mark.parametrize("layers,decay", [("SSSS", "head"), ("LLLL", "head"), ("LSLS", "token"), ("LL", "none")])
def test_packed_documents_are_independent(layers, decay):
    torch.manual_seed(0)
    m = _model(layers, decay)
    docs = [torch.randint(0, 64, (n,)) for n in (7, 1, 12, 5)]
    packed = m(torch.cat(docs), build_shard([len(d) for d in docs]))
    alone = torch.cat([m(d, build_shard([len(d)])) for d in docs])
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)


def test_init_depends_only_on_seed():
    a, b = _model("LSLS", seed=3), _model("LSLS", seed=3)
    c = _model("LSLS", seed=4)
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


def test_labels_stop_at_document_ends():
    tok = torch.arange(10)
    lab = next_token_labels(tok, [3, 5, 2])
    assert lab.tolist() == [1, 2, -100, 4, 5, 6, 7, -100, 9, -100]
