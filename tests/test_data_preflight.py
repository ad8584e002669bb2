"""Pre-flight scan of data.paths: bad inputs fail at start-up with path and line (not a byte
offset), all of them in one message; data.preflight=false defers the check to the read,
which also names the line."""
import json

import pytest

from distca.data import DataConfig, build_dataset


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _cfg(paths, **kw):
    return DataConfig(source="jsonl", paths=paths, tokenizer="byte", seq_len=64, **kw)


def test_every_bad_input_is_listed_with_its_line(tmp_path):
    good = _write(tmp_path / "good.jsonl", [json.dumps({"text": "fine " * 20})] * 3)
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"text": "ok"}), "", "{not json",
                                           json.dumps({"body": "x"}), json.dumps({"text": 5}), "[1, 2]"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(b'{"text": "a"}\n\x00\x01\x02garbage\n')
    with pytest.raises(ValueError) as e:
        build_dataset(_cfg([good, bad, str(empty), str(binary)]), 0)
    msg = str(e.value)
    assert msg.startswith("data.paths") and "Fix:" in msg
    for expected in (f"{bad}:3: not valid JSON", f"{bad}:4: no key 'text'", f"{bad}:5: 'text' is int",
                     f"{bad}:6: a JSON list", f"{empty}: the file is empty",
                     f"{binary}:2: binary content"):
        assert expected in msg, (expected, msg)
    assert f"{good}" not in msg


def test_a_clean_corpus_passes_and_many_problems_are_counted(tmp_path):
    good = _write(tmp_path / "good.jsonl", [json.dumps({"text": "fine " * 20})] * 3)
    build_dataset(_cfg([good]), 0)
    bad = _write(tmp_path / "bad.jsonl", ["{"] * 12)
    with pytest.raises(ValueError, match=r"and 2 more"):
        build_dataset(_cfg([bad]), 0)


def test_without_preflight_the_read_names_the_line(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"text": "x" * 40}), "{broken"])
    _, packer = build_dataset(_cfg([bad], preflight=False), 0)  # starts: no scan
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid JSON"):
        for _ in range(4):
            packer.next_sample()
