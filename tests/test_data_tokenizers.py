"""data.tokenizer: hf (a tokenizer.json through the tokenizers library, BOS/EOS as its config
says), auto (the model folder's tokenizer, else bytes), and every bad tokenizer file or
vocabulary as one line naming the file and the fix. Tokenizers are trained inside the tests."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from distca.data import DataConfig, build_data, build_documents
from distca.data.choose_tokenizer import resolve_tokenizer
from distca.data.hf_tokenizer import HFTokenizer
from tests.data_helpers import texts, tiny_tokenizer, write_jsonl


def test_documents_are_the_tokenizers_own_ids_with_bos_and_eos(tmp_path):
    folder = tiny_tokenizer(tmp_path / "model")
    corpus = texts(30, seed=9)
    path = write_jsonl(tmp_path / "c.jsonl", corpus)
    tok, docs = build_documents(DataConfig(source="jsonl", paths=[path], tokenizer="hf", tokenizer_path=folder), 0)
    ref = Tokenizer.from_file(f"{folder}/tokenizer.json")
    bos, eos = ref.token_to_id("<s>"), ref.token_to_id("</s>")
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (bos, eos, ref.get_vocab_size())
    for i, text in enumerate(corpus):
        assert docs.tokens(i).tolist() == [bos] + ref.encode(text, add_special_tokens=False).ids + [eos]
    assert tok.decode(docs.tokens(3)) == corpus[3]
    # batch encoding (what the loader uses for lengths) gives the same ids
    lengths = docs.lengths(np.arange(len(corpus)))
    assert lengths.tolist() == [len(ref.encode(t, add_special_tokens=False).ids) + 2 for t in corpus]


def test_bos_follows_the_config_else_the_post_processor(tmp_path):
    folder = tmp_path / "m"
    tiny_tokenizer(folder, add_bos=False)
    tok = HFTokenizer(str(folder))
    assert not tok.add_bos and tok.document("the plan")[0] != tok.bos_id
    # no tokenizer_config.json: the tokenizer.json's post-processor decides (here: adds <s> ... </s>)
    from tokenizers.processors import TemplateProcessing
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[
        ("<s>", raw.token_to_id("<s>")), ("</s>", raw.token_to_id("</s>"))])
    alone = tmp_path / "alone"
    alone.mkdir()
    raw.save(str(alone / "tokenizer.json"))
    tok = HFTokenizer(str(alone / "tokenizer.json"))
    doc = tok.document("the plan").tolist()
    assert doc[0] == raw.token_to_id("<s>") and doc[-1] == raw.token_to_id("</s>")
    assert doc[1:-1] == raw.encode("the plan", add_special_tokens=False).ids  # one BOS, one EOS


def test_truncation_stored_in_the_file_is_ignored(tmp_path):
    folder = tmp_path / "m"
    tiny_tokenizer(folder)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.enable_truncation(8)
    raw.save(str(folder / "tokenizer.json"))
    long_text = " ".join(["the plan cuts attention"] * 50)
    assert len(HFTokenizer(str(folder)).document(long_text)) > 50  # a document is never cut here


def test_auto_is_the_model_folders_tokenizer_else_bytes(tmp_path):
    folder = tiny_tokenizer(tmp_path / "model")
    bare = tmp_path / "weights_only"
    bare.mkdir()
    assert resolve_tokenizer(DataConfig(), folder) == ("hf", folder)
    assert resolve_tokenizer(DataConfig(), str(bare)) == ("byte", "")
    assert resolve_tokenizer(DataConfig(), None) == ("byte", "")
    assert resolve_tokenizer(DataConfig(tokenizer="byte"), folder) == ("byte", "")
    assert resolve_tokenizer(DataConfig(tokenizer_path=folder), None) == ("hf", folder)
    data = build_data(DataConfig(max_documents=3), 0, model_dir=folder)
    assert data.tokenizer.path == f"{folder}/tokenizer.json"
    assert data.sources[0].tokens(0)[0] == data.tokenizer.bos_id
    assert build_data(DataConfig(max_documents=3), 0, model_dir=str(bare)).tokenizer.name == "byte"


def test_tokens_source_takes_its_vocabulary_from_the_tokenizer(tmp_path):
    from tests.data_helpers import indexed_dataset
    folder = tiny_tokenizer(tmp_path / "model", vocab_size=300)
    indexed_dataset(tmp_path / "d", [5, 9, 3], vocab=300)
    data = build_data(DataConfig(source="tokens", paths=[str(tmp_path / "d")], tokenizer_path=folder), 0)
    assert data.tokenizer.vocab_size == 300
    data = build_data(DataConfig(source="tokens", paths=[str(tmp_path / "d")]), 0, model_dir=folder)
    assert data.tokenizer.vocab_size == 300  # auto: the model folder's
    with pytest.raises(ValueError, match="token_vocab_size=512 but the tokenizer.*300 ids"):
        build_data(DataConfig(source="tokens", paths=[str(tmp_path / "d")], tokenizer_path=folder,
                              token_vocab_size=512), 0)


def one_line(match, **cfg) -> str:
    with pytest.raises(ValueError, match=match) as info:
        build_data(DataConfig(**cfg), 0)
    msg = str(info.value)
    assert "\n" not in msg and "Fix:" in msg, msg
    return msg


def test_missing_and_corrupt_tokenizer_files(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    one_line(f"{folder} has no tokenizer.json", tokenizer="hf", tokenizer_path=str(folder))
    one_line(f"{tmp_path / 'nope'} does not exist", tokenizer="hf", tokenizer_path=str(tmp_path / "nope"))
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    one_line(f"{folder}/tokenizer.json is not a readable tokenizer.json", tokenizer_path=str(folder))
    tiny_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text("{not json")
    one_line("tokenizer_config.json is not valid JSON", tokenizer_path=str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nowhere|>"}))
    one_line("names eos_token '<|nowhere|>'", tokenizer_path=str(folder))
    one_line("data.tokenizer_path", tokenizer="hf")  # hf without a path


def test_a_tokenizer_larger_than_the_model_is_a_config_error(tmp_path):
    from distca.config.validate import ConfigError
    from distca.train import train
    from tests.train_utils import tiny_cfg
    folder = tiny_tokenizer(tmp_path / "model", vocab_size=300)
    with pytest.raises(ConfigError) as info:
        train(tiny_cfg(tmp_path / "run", f"data.tokenizer_path={folder}", "model.vocab_size=256"))
    msg = str(info.value)
    assert "model.vocab_size=256" in msg and "300" in msg and f"{folder}/tokenizer.json" in msg
    assert "\n" not in msg and "Fix:" in msg
