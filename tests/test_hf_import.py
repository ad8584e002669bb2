"""model.init_from: Hugging Face folders (tiny random models made by transformers here) give
transformers' logits and loss, at every layout, and every problem with a folder is a one-line
config error.

- logits and the summed loss equal transformers' (1e-5 relative) for Llama untied and tied,
  Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k norms, head_dim != hidden/heads), Llama with
  attention_bias, and for every RoPE scaling up to 8x the original context, both spellings of
  the RoPE settings;
- the first training step's loss (lr 0, so no update) equals transformers' loss on the same
  packed documents at tp=2, pp=2, ring cp=2 and cad cp=2 (one spawn of 2 ranks);
- each rank reads only its part: a TP rank its rows/columns, a pipeline stage its layers;
- bad folders: missing config.json, unknown model_type, a missing or mis-shaped tensor, a
  vocabulary smaller than the tokenizer's, an architecture override that contradicts the folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed_utils import run_distributed
from tests.hf_models import ARCHS, ROPES, VOCAB, hf_document_loss, import_model, make_hf_model, our_logits
from tests.train_utils import tiny_cfg

pytest.importorskip("transformers")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_and_loss_equal_transformers(tmp_path, arch):
    hf = make_hf_model(tmp_path / arch, arch)
    model, plan, _ = import_model(tmp_path / arch)
    tokens = torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens[None]).logits[0]
    assert _rel(our_logits(model, plan, tokens), ref) < 1e-5
    # the fused head's summed loss
    from distca.data.labels import next_token_labels
    shard = plan.build_shard([len(tokens)])
    with torch.no_grad():
        ours = model(shard.local(tokens), shard, shard.local(next_token_labels(tokens, [len(tokens)])))
    want, _ = hf_document_loss(hf, [tokens])
    assert abs(float(ours) - want) <= 1e-5 * want


@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("legacy", [False, True], ids=["rope_parameters", "rope_scaling"])
def test_rope_scalings_equal_transformers_up_to_8x_the_original_context(tmp_path, rope, legacy):
    hf = make_hf_model(tmp_path / rope, "llama", rope=rope, legacy_rope=legacy)
    model, plan, cfg = import_model(tmp_path / rope)
    assert str(cfg.model.rope_scaling) == ROPES[rope]["rope_type"]
    tokens = torch.randint(0, VOCAB, (512,), generator=torch.Generator().manual_seed(2))  # 8 x 64
    with torch.no_grad():
        ref = hf(tokens[None]).logits[0]
    assert _rel(our_logits(model, plan, tokens), ref) < 1e-5


# --- every layout, one spawn -------------------------------------------------------------

LAYOUTS = {"tp2": ["parallel.tp=2"], "pp2": ["parallel.pp=2"],
           "ring_cp2": ["parallel.cp=2", "parallel.cp_algo=ring"],
           "cad_cp2": ["parallel.cp=2", "parallel.cp_algo=cad", "model.recompute=full"]}
CASES = [("llama", None), ("llama_tied", None), ("mistral", None), ("qwen2", None), ("qwen3", None), ("llama_bias", None),
         ("llama", "yarn")]
RUN = ["train.steps=1", "train.lr=0", "train.warmup_steps=0", "data.seq_len=128", "train.global_batch_size=2"]


def _folder_of(tmp: Path, arch: str, rope) -> Path:
    return tmp / f"{arch}-{rope or 'none'}"


def _layouts_run(rank, world, tmp, refs):
    from distca.train import train
    for (arch, rope), want in zip(CASES, refs):
        folder = _folder_of(Path(tmp), arch, rope)
        for name, layout in LAYOUTS.items():
            history = train(tiny_cfg(f"{tmp}/{arch}-{rope}-{name}", f"model.init_from={folder}", *RUN, *layout))
            got = history[0]["loss"]
            assert abs(got - want) <= 1e-5 * want, (arch, rope, name, got, want)


@pytest.mark.slow
def test_first_step_loss_equals_transformers_at_every_layout(tmp_path):
    from distca.config import to_typed
    from distca.data import build_dataset
    refs = []
    for arch, rope in CASES:
        hf = make_hf_model(_folder_of(tmp_path, arch, rope), arch, rope=rope)
        cfg = to_typed(tiny_cfg(tmp_path / "ref", *RUN))
        _, packer = build_dataset(cfg.data, cfg.train.seed)
        docs = []
        for _ in range(cfg.train.global_batch_size):
            s = packer.next_sample()
            starts = [0, *torch.tensor(s.doc_lens).cumsum(0).tolist()]
            docs += [s.tokens[a:b] for a, b in zip(starts, starts[1:])]
        total, count = hf_document_loss(hf, docs)
        refs.append(total / count)
    run_distributed(_layouts_run, 2, str(tmp_path), refs)


# --- each rank reads only its part ---------------------------------------------------------

def _reads_run(rank, world, folder):
    from distca.checkpoint import hf_import
    seen = []
    real = hf_import.HFWeights.read

    def spy(self, name, dim=None, lo=0, hi=None):
        seen.append((name, dim, lo, hi))
        return real(self, name, dim, lo, hi)
    hf_import.HFWeights.read = spy
    from distca.train import train
    for layout in (["parallel.tp=2"], ["parallel.pp=2"]):
        seen.clear()
        train(tiny_cfg(f"{folder}-run-{layout[0].split('=')[0]}", f"model.init_from={folder}", *RUN, *layout))
        names = {n for n, *_ in seen}
        if layout == ["parallel.tp=2"]:
            q = [(d, lo, hi) for n, d, lo, hi in seen if n == "model.layers.0.self_attn.q_proj.weight"]
            o = [(d, lo, hi) for n, d, lo, hi in seen if n == "model.layers.0.self_attn.o_proj.weight"]
            emb = [(d, lo, hi) for n, d, lo, hi in seen if n == "model.embed_tokens.weight"]
            assert q == [(0, 32 * rank, 32 * (rank + 1))], q      # its query heads' rows
            assert o == [(1, 32 * rank, 32 * (rank + 1))], o      # its columns of the output projection
            assert emb == [(0, 160 * rank, 160 * (rank + 1))], emb  # its vocabulary rows
        else:
            layers = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}
            assert layers == {rank}, (rank, layers)  # only its stage's layer
            assert ("model.embed_tokens.weight" in names) == (rank == 0)
            assert ("lm_head.weight" in names) == (rank == 1)


@pytest.mark.slow
def test_each_rank_reads_only_its_part(tmp_path):
    make_hf_model(tmp_path / "m", "llama")
    run_distributed(_reads_run, 2, str(tmp_path / "m"))


# --- bad folders ---------------------------------------------------------------------------

def _fails(tmp_path, folder, match, *extra):
    from distca.train import ConfigError, train
    with pytest.raises(ConfigError, match=match):
        train(tiny_cfg(tmp_path / "run", f"model.init_from={folder}", *extra))


def _edit_config(folder: Path, **changes):
    path = folder / "config.json"
    c = json.loads(path.read_text())
    c.update(changes)
    path.write_text(json.dumps(c))


def test_bad_folders_are_one_line_config_errors(tmp_path):
    from safetensors.torch import load_file, save_file
    _fails(tmp_path, tmp_path / "nowhere", "is not a folder")
    (tmp_path / "empty").mkdir()
    _fails(tmp_path, tmp_path / "empty", "has no config.json")

    make_hf_model(tmp_path / "m", "llama")
    _edit_config(tmp_path / "m", model_type="gpt2")
    _fails(tmp_path, tmp_path / "m", "model_type 'gpt2' is not supported")
    _edit_config(tmp_path / "m", model_type="llama")

    weights = tmp_path / "m" / "model.safetensors"
    good = load_file(weights)
    save_file({k: v for k, v in good.items() if k != "model.layers.1.mlp.down_proj.weight"}, weights)
    _fails(tmp_path, tmp_path / "m", r"tensor model\.layers\.1\.mlp\.down_proj\.weight is missing")
    save_file({**good, "model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 64)}, weights)
    _fails(tmp_path, tmp_path / "m", r"k_proj\.weight has shape \[16, 64\] but config.json implies \[32, 64\]")
    save_file(good, weights)

    # the byte tokenizer has 258 ids; a model with 200 rows cannot embed them
    _edit_config(tmp_path / "m", vocab_size=200)
    _fails(tmp_path, tmp_path / "m", "the tokenizer has 258 ids but the model")
    _edit_config(tmp_path / "m", vocab_size=VOCAB)

    _fails(tmp_path, tmp_path / "m", r"model\.hidden=256 contradicts .*hidden = 64", "model.hidden=256")
    _fails(tmp_path, tmp_path / "m", r"model\.layers=SSS has 3 letters but .* has 2 layers", "model.layers=SSS")
    _edit_config(tmp_path / "m", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    _fails(tmp_path, tmp_path / "m", "RoPE type 'dynamic' in config.json is not supported")


def test_rope_fields_and_layer_letters_may_be_overridden(tmp_path):
    make_hf_model(tmp_path / "m", "llama")
    _, _, cfg = import_model(tmp_path / "m", "model.rope_scaling=yarn", "model.rope_factor=4",
                             "model.rope_original_max_position=128", "model.rope_theta=20000", "model.layers=LS")
    m = cfg.model
    assert (str(m.rope_scaling), m.rope_factor, m.rope_original_max_position, m.rope_theta, m.layers) == (
        "yarn", 4.0, 128, 20000.0, "LS")
    assert (m.hidden, m.heads, m.kv_heads, m.ffn_hidden, m.vocab_size) == (64, 4, 2, 96, VOCAB)


MORE_LAYOUTS = {  # world 4: the rest of the engines and CP algorithms
    "interleaved": ["parallel.pp=2", "parallel.pp_virtual=2", "parallel.pp_schedule=interleaved"],
    "joint_pipeline": ["parallel.pp=2", "parallel.cp=2", "parallel.cp_algo=cad", "parallel.cad.pipeline=joint",
                       "parallel.cad.overlap=halves", "parallel.cad.backward=resend"],
    "cad_pool": ["parallel.cp=2", "parallel.cp_algo=cad", "parallel.cad.pool=2"],
    "usp": ["parallel.cp=4", "parallel.cp_algo=usp", "parallel.ulysses=2"],
    "allgather": ["parallel.cp=2", "parallel.cp_algo=allgather"],
    "ulysses": ["parallel.cp=2", "parallel.cp_algo=ulysses"],
    "zero3": ["parallel.zero_stage=3"],
    "zero2_tied": ["parallel.zero_stage=2"],
}


def _more_layouts_run(rank, world, tmp, want):
    from distca.train import train
    for name, layout in MORE_LAYOUTS.items():
        folder = Path(tmp) / ("tied" if "tied" in name else "four")
        history = train(tiny_cfg(f"{tmp}/{name}", f"model.init_from={folder}", *RUN,
                                 "train.global_batch_size=4", *layout))
        got = history[0]["loss"]
        if rank == 0:
            assert abs(got - want[folder.name]) <= 1e-5 * want[folder.name], (name, got, want)


@pytest.mark.slow
def test_first_step_loss_equals_transformers_with_every_other_engine(tmp_path):
    from distca.config import to_typed
    from distca.data import build_dataset
    want = {}
    for name, arch in (("four", "llama"), ("tied", "llama_tied")):
        hf = make_hf_model(tmp_path / name, arch, num_hidden_layers=4)
        cfg = to_typed(tiny_cfg(tmp_path / "ref", *RUN, "train.global_batch_size=4"))
        _, packer = build_dataset(cfg.data, cfg.train.seed)
        docs = []
        for _ in range(4):
            s = packer.next_sample()
            starts = [0, *torch.tensor(s.doc_lens).cumsum(0).tolist()]
            docs += [s.tokens[a:b] for a, b in zip(starts, starts[1:])]
        total, count = hf_document_loss(hf, docs)
        want[name] = total / count
    run_distributed(_more_layouts_run, 4, str(tmp_path), want)
