"""A Hugging Face `tokenizer.json`, run by the `tokenizers` library (Rust: fast, and it
encodes a batch in parallel threads, without the GIL).

`data.tokenizer_path` names the file, or a folder holding `tokenizer.json` and usually
`tokenizer_config.json` (every model download has both). The config says which tokens are
BOS and EOS and whether BOS starts a sequence (`add_bos_token`); where it does not say, the
`tokenizer.json`'s own post-processor does (Llama 3's adds `<|begin_of_text|>`). A document
is then [BOS if wanted] + its text's ids + EOS: the EOS ends every document, as Megatron's
preprocessing appends its end-of-document token. Truncation and padding stored in the file
are switched off: a document is never cut here (the packer cuts samples).

Every problem with the files is one ValueError naming the file and the fix.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

# End-of-document tokens of common tokenizers, tried in order when the config names none.
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")


def tokenizer_files(path: str, field: str = "data.tokenizer_path") -> tuple[str, Optional[str]]:
    """(tokenizer.json, tokenizer_config.json or None) for a file or a model folder."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise ValueError(f"{field}: the folder {path} has no tokenizer.json. Fix: point it at a "
                             "tokenizer.json, or at a model folder that has one (a model download does)")
        config = os.path.join(path, "tokenizer_config.json")
    elif os.path.isfile(path):
        file = path
        config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    else:
        raise ValueError(f"{field}: {path} does not exist. Fix: give the path of a tokenizer.json "
                         "or of a model folder holding one")
    return file, (config if os.path.isfile(config) else None)


def has_tokenizer(folder: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(folder), "tokenizer.json"))


def _token_text(value) -> Optional[str]:
    """A special token in tokenizer_config.json: a string or an AddedToken object."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizer:
    name = "hf"

    def __init__(self, path: str, field: str = "data.tokenizer_path") -> None:
        from tokenizers import Tokenizer

        self.path, config_path = tokenizer_files(path, field)
        try:
            tok = Tokenizer.from_file(self.path)
        except Exception as e:  # the Rust side raises its own exception type
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ValueError(f"{field}: {self.path} is not a readable tokenizer.json ({reason}). Fix: "
                             "download or copy the file again, or point at another tokenizer") from None
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        config = {}
        if config_path is not None:
            try:
                with open(config_path, encoding="utf-8") as f:
                    config = json.load(f)
                if not isinstance(config, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                raise ValueError(f"{field}: {config_path} is not valid JSON ({str(e)[:120]}). Fix: copy the "
                                 "file again, or delete it (BOS/EOS then come from tokenizer.json)") from None
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
        self.bos_id = self._special(config.get("bos_token"), config_path, "bos_token")
        self.eos_id = self._special(config.get("eos_token"), config_path, "eos_token")
        with_specials = tok.encode("a", add_special_tokens=True).ids
        plain = tok.encode("a", add_special_tokens=False).ids or [None]
        if self.eos_id is None:  # the post-processor's closing token, else a well-known name
            if len(with_specials) > len(plain) and with_specials[-1] != plain[-1]:
                self.eos_id = with_specials[-1]
            else:
                self.eos_id = next((vocab[n] for n in _EOS_NAMES if n in vocab), None)
        if self.eos_id is None:
            raise ValueError(f"{field}: {self.path} names no end-of-document token (no eos_token in "
                             "tokenizer_config.json, none of " + ", ".join(_EOS_NAMES) + "). Fix: add "
                             '"eos_token": "<your EOS>" to tokenizer_config.json beside it')
        if "add_bos_token" in config:
            self.add_bos = bool(config["add_bos_token"]) and self.bos_id is not None
        else:  # the post-processor decides (Llama 3's TemplateProcessing adds BOS)
            self.add_bos = bool(with_specials) and with_specials[0] != plain[0] and \
                (self.bos_id is None or with_specials[0] == self.bos_id)
            if self.add_bos and self.bos_id is None:
                self.bos_id = with_specials[0]

    def _special(self, value, config_path: Optional[str], key: str) -> Optional[int]:
        text = _token_text(value)
        if text is None:
            return None
        token_id = self._tok.token_to_id(text)
        if token_id is None:
            raise ValueError(f"data.tokenizer_path: {config_path} names {key} {text!r}, which {self.path} "
                             "does not contain. Fix: use the tokenizer_config.json that came with this tokenizer.json")
        return token_id

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """The text's ids alone (no BOS, no EOS)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def _wrap(self, ids: Sequence[int]) -> np.ndarray:
        head = 1 if self.add_bos else 0
        out = np.empty(len(ids) + head + 1, dtype=np.int64)
        if head:
            out[0] = self.bos_id
        out[head:-1] = ids
        out[-1] = self.eos_id
        return out

    @staticmethod
    def _text(raw: Union[str, bytes]) -> str:
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw

    def document(self, raw: Union[str, bytes]) -> np.ndarray:
        return self._wrap(self.encode(self._text(raw)))

    def documents(self, raws: Sequence[Union[str, bytes]]) -> list[np.ndarray]:
        texts = [self._text(r) for r in raws]
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets: faster
        return [self._wrap(e.ids) for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)  # specials carry no text
