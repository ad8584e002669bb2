"""distca-export: a run's checkpoint -> a Hugging Face folder that transformers loads with our
logits; re-imported, the same weights bit for bit; the same folder whatever layout wrote the
checkpoint (tp2 x pp2, ZeRO-1, one process); hybrids in our own format, refused by
transformers, read back by distca."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed_utils import run_distributed
from tests.hf_models import VOCAB, import_model, make_hf_model, our_logits
from tests.train_utils import tiny_cfg

pytest.importorskip("transformers")

RUN = ["train.steps=2", "data.seq_len=128", "train.global_batch_size=2", "checkpoint.save_final=true"]


def _train(tmp, name, *overrides):
    from distca.train import train
    run = Path(tmp) / name
    train(tiny_cfg(run, *RUN, *overrides))
    return run


def _export(run, out, *args):
    from distca.checkpoint.hf_export import main
    main([str(run), str(out), *args])
    return out


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("arch,rope", [("llama", None), ("qwen2", "yarn"), ("qwen3", None)])
def test_transformers_loads_the_export_and_gives_our_logits(tmp_path, arch, rope):
    from transformers import AutoModelForCausalLM
    make_hf_model(tmp_path / "src", arch, rope=rope)
    run = _train(tmp_path, "run", f"model.init_from={tmp_path / 'src'}")
    out = _export(run, tmp_path / "out", "--dtype", "fp32")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch and config["vocab_size"] == VOCAB
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ours, plan, _ = import_model(out)  # the trained weights, as distca reads the folder
    tokens = torch.randint(0, VOCAB, (256,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(tokens[None]).logits[0]
    got = our_logits(ours, plan, tokens)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    # and the weights did train: the export is not the source folder again
    assert not torch.equal(_tensors(out)["model.norm.weight"], _tensors(tmp_path / "src")["model.norm.weight"])


def test_reimport_is_bitwise_and_bf16_halves_the_bytes(tmp_path):
    make_hf_model(tmp_path / "src", "llama_tied")
    run = _train(tmp_path, "run", f"model.init_from={tmp_path / 'src'}")
    out = _export(run, tmp_path / "fp32", "--dtype", "fp32")
    model, _, _ = import_model(out)
    exported = _tensors(out)
    assert "lm_head.weight" not in exported  # tied: one tensor, as transformers writes it
    assert torch.equal(model.embed.weight, exported["model.embed_tokens.weight"])
    q = exported["model.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(model.blocks[1].mixer.qkv.weight[:q.shape[0]], q)
    again = _export(_train(tmp_path, "run2", f"model.init_from={out}", "train.lr=0", "train.warmup_steps=0"),
                    tmp_path / "again", "--dtype", "fp32")
    assert all(torch.equal(v, _tensors(again)[k]) for k, v in exported.items())
    half = _export(run, tmp_path / "bf16")
    assert sum(t.numel() * t.element_size() for t in _tensors(half).values()) * 2 == \
        sum(t.numel() * t.element_size() for t in exported.values())
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_shards_and_index(tmp_path):
    run = _train(tmp_path, "run")  # random init, a byte-level run: a synthesized Llama config
    out = _export(run, tmp_path / "out", "--dtype", "fp32", "--max-shard-gb", str(0.2 / 1024))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("model-*.safetensors"))
    assert len(files) > 1 and set(index["weight_map"].values()) == {f.name for f in files}
    assert max(f.stat().st_size for f in files) < 0.2 * 2**20 + 64 * 1024  # a tensor may exceed alone
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(out)  # loads through the index


LAYOUT_RUN = ["train.lr=0", "train.warmup_steps=0", "model.tie_embeddings=true", "model.layers=SSSS"]


def _layouts(rank, world, tmp):
    from distca.train import train
    layouts = {4: [("tp2pp2", ["parallel.tp=2", "parallel.pp=2"])],
               2: [("zero1", ["parallel.zero_stage=1"])]}[world]
    for name, layout in layouts:
        train(tiny_cfg(Path(tmp) / name, *RUN, *LAYOUT_RUN, *layout))


@pytest.mark.slow
def test_every_layout_exports_the_same_weights(tmp_path):
    """lr 0 keeps the initial weights, which are the same at every layout: so must the exports be."""
    one = _export(_train(tmp_path, "one", *LAYOUT_RUN), tmp_path / "one_out", "--dtype", "fp32")
    run_distributed(_layouts, 4, str(tmp_path))
    run_distributed(_layouts, 2, str(tmp_path))
    ref = _tensors(one)
    for name in ("tp2pp2", "zero1"):
        got = _tensors(_export(tmp_path / name, tmp_path / f"{name}_out", "--dtype", "fp32"))
        assert got.keys() == ref.keys(), name
        assert all(torch.equal(got[k], ref[k]) for k in ref), name


def test_hybrid_exports_in_our_format_and_reimports(tmp_path):
    make_hf_model(tmp_path / "src", "llama")
    run = _train(tmp_path, "run", f"model.init_from={tmp_path / 'src'}", "model.layers=LS")
    out = _export(run, tmp_path / "out", "--dtype", "fp32")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "distca_hybrid" and config["layers"] == "LS"
    from transformers import AutoModelForCausalLM
    with pytest.raises((ValueError, KeyError)):
        AutoModelForCausalLM.from_pretrained(out)
    model, _, cfg = import_model(out)
    assert cfg.model.layers == "LS"
    assert torch.equal(model.blocks[0].mixer.gate.weight, _tensors(out)["model.layers.0.linear_attn.g_proj.weight"])


def test_export_errors(tmp_path, capsys):
    from distca.checkpoint.hf_export import main
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert e.value.code == 2 and "no config.yaml" in capsys.readouterr().err
    run = _train(tmp_path, "run")
    with pytest.raises(SystemExit):
        main([str(run), str(tmp_path / "out"), "--step", "7"])
    assert "has no step_00000007" in capsys.readouterr().err
