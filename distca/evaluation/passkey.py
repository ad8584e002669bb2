"""Passkey retrieval (needle in a haystack): a random number hidden at a depth inside filler
text of a given length, then asked for; the model passes a sample when its greedy
continuation reproduces the number.

Greedy decoding reproduces the key exactly when, at every position of the key, the id the
model ranks first given the true prefix is the key's next id (by induction: the first
mismatch is where greedy decoding would leave the key). So one forward pass per sample,
teacher-forced, scores it: no generation loop, and it runs under any training layout.

A sample is one document of `length` tokens in the run's tokenizer: an instruction, filler
sentences, the needle ("The pass key is 71432. Remember it. 71432 is the pass key.") after
`depth` of the filler, more filler, the question and the key. Documents are padded with a
second filler document to a length the layout can shard.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it "
         "and memorize it. I will ask you about it.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass
class PasskeySample:
    length: int
    depth: float
    tokens: list[int]       # the document: prompt and key
    answer_start: int       # index of the key's first token in `tokens`
    key: str


def _encode(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer.encode(text))
    bos = getattr(tokenizer, "bos_id", None)
    return ids[1:] if bos is not None and ids and ids[0] == bos else ids


def make_sample(tokenizer, length: int, depth: float, rng: random.Random, digits: int = 5) -> PasskeySample:
    """One sample of exactly `length` tokens (ValueError when the prompt alone does not fit)."""
    key = "".join(rng.choice("0123456789") for _ in range(digits))
    key = str(rng.randint(1, 9)) + key[1:]  # no leading zero
    intro, needle, question = (_encode(tokenizer, t) for t in (INTRO, NEEDLE.format(key=key), QUESTION))
    answer = _encode(tokenizer, QUESTION + " " + key)[len(question):]
    if not answer or _encode(tokenizer, QUESTION + " " + key)[:len(question)] != question:
        answer = _encode(tokenizer, " " + key)
    bos = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
    filler = _encode(tokenizer, FILLER)
    room = length - len(bos) - len(intro) - len(needle) - len(question) - len(answer)
    if room < 0:
        raise ValueError(f"eval.passkey.lengths: {length} tokens are too few for the passkey prompt "
                         f"({length - room} tokens without filler); use lengths >= {length - room + len(filler)}")
    hay = (filler * (room // len(filler) + 1))[:room]  # whole sentences, the last one cut to fit
    cut = int(round(depth * room))
    tokens = bos + intro + hay[:cut] + needle + hay[cut:] + question + answer
    return PasskeySample(length, depth, tokens, len(tokens) - len(answer), key)


def make_samples(tokenizer, lengths, depths, samples: int, seed: int) -> list[PasskeySample]:
    rng = random.Random(seed)
    return [make_sample(tokenizer, L, d, rng) for L in lengths for d in depths for _ in range(samples)]


def padded_document(sample: PasskeySample, multiple: int, filler_id: int) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """(tokens, document lengths, labels): the sample, then a filler document up to a multiple of
    `multiple` tokens; labels are the key's ids at the positions that predict them, else -100."""
    n = len(sample.tokens)
    pad = -n % multiple
    if 0 < pad < 2:
        pad += multiple  # a document of one token has no next token; keep the pad a real document
    tokens = torch.tensor(sample.tokens + [filler_id] * pad, dtype=torch.long)
    labels = torch.full_like(tokens, -100)
    labels[sample.answer_start - 1:n - 1] = tokens[sample.answer_start:n]
    return tokens, [n] + ([pad] if pad else []), labels


def score(matched: list[int], samples: list[PasskeySample]) -> dict:
    """eval_passkey_acc overall, per length, and the length x depth grid (fraction of samples
    retrieved whole), and eval_passkey_token_acc (fraction of key tokens ranked first)."""
    ok = [m == len(s.tokens) - s.answer_start for m, s in zip(matched, samples)]
    lengths = sorted({s.length for s in samples})
    depths = sorted({s.depth for s in samples})

    def acc(pred):
        sel = [o for o, s in zip(ok, samples) if pred(s)]
        return sum(sel) / len(sel) if sel else None
    answer_tokens = sum(len(s.tokens) - s.answer_start for s in samples)
    return {"eval_passkey_acc": acc(lambda s: True),
            # partial credit: the share of key tokens ranked first (rises before whole keys do)
            "eval_passkey_token_acc": sum(min(m, len(s.tokens) - s.answer_start)
                                          for m, s in zip(matched, samples)) / max(answer_tokens, 1),
            "eval_passkey_acc_by_length": {str(L): acc(lambda s, L=L: s.length == L) for L in lengths},
            "eval_passkey_grid": {"lengths": lengths, "depths": depths,
                                  "acc": [[acc(lambda s, L=L, d=d: s.length == L and s.depth == d) for d in depths]
                                          for L in lengths]}}
