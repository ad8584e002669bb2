"""distca-tokenize against the tokenizers library's own encode_batch, on the same cores.

Corpus: the Python standard library's .py files (about 30 MB of text, no download) as one
jsonl file, repeated --repeat times. Tokenizer: a 32K byte-level BPE trained here with the
tokenizers library on a 4 MB sample of that corpus (GPT-2 style; no model download is
possible on this machine), saved as a model folder would hold it. Each round, interleaved:

  distca-tokenize   the command (a fresh process, as a user runs it): jsonl parsing, encoding
                    in --workers processes, writing PREFIX.bin/.idx; wall time of the whole run
  encode_batch      tokenizers' encode_batch_fast over the texts already in memory (no
                    parsing, no writing), RAYON_NUM_THREADS = the same core count, in a fresh
                    process; only the call is timed: an upper bound for any pipeline

Both run on 1 core and on every core (--cores); rounds alternate the two so machine load
hits both alike; the medians are reported, in wall time and in CPU time (user + system of
the processes: on a shared machine the CPU time is the steadier measure of the work). Writes benchmarks/results/tokenize_throughput_cpu.json.

Usage: python benchmarks/tokenize_throughput.py [--cores 1 2] [--rounds 3] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.data_common import RESULTS, provenance, write_result  # noqa: E402

ENCODE_BATCH = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
with open(sys.argv[2], "rb") as f:
    texts = [json.loads(line)["text"] for line in f]
t = time.perf_counter()
enc = tok.encode_batch_fast(texts, add_special_tokens=False)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "tokens": sum(len(e.ids) for e in enc) + 2 * len(texts), "documents": len(texts)}))
"""


def build_corpus(path: str, repeat: int, limit: int = 0) -> tuple[int, int]:
    from distca.data.stdlib_corpus import StdlibCorpus
    corpus = StdlibCorpus()
    n = 0
    with open(path, "w") as f:
        for _ in range(repeat):
            for i in range(min(len(corpus), limit or len(corpus))):
                f.write(json.dumps({"text": corpus.raw(i).decode("utf-8", errors="replace")}) + "\n")
                n += 1
    return n, os.path.getsize(path)


def train_tokenizer(folder: str, jsonl: str, vocab: int) -> None:
    from distca.data.bpe import train_bpe
    sample, total = [], 0
    with open(jsonl, "rb") as f:
        for line in f:
            t = json.loads(line)["text"].encode()[:64 << 10]
            sample.append(t)
            total += len(t)
            if total > 4 << 20:
                break
    train_bpe(sample, vocab, folder)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(jsonl: str, folder: str, tmp: str, cores: int, rounds: int) -> tuple[list, list]:
    env = {**os.environ, "RAYON_NUM_THREADS": str(cores), "TOKENIZERS_PARALLELISM": "true"}
    ours, theirs = [], []
    for r in range(rounds):
        t0, c0 = time.perf_counter(), _cpu()
        out = subprocess.run([sys.executable, "-m", "distca.data.tokenize_cli", jsonl, "--tokenizer", folder,
                              "--output", os.path.join(tmp, "out"), "--workers", str(cores), "--no-progress"],
                             capture_output=True, text=True, check=True, env=env)
        ours.append({"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0,
                     "summary": out.stdout.strip(), "load_avg": os.getloadavg()[0]})
        c0 = _cpu()
        res = subprocess.run([sys.executable, "-c", ENCODE_BATCH, folder, jsonl], capture_output=True,
                             text=True, check=True, env=env)
        # the whole process's CPU (reading the texts too); the call alone is in "seconds"
        theirs.append({**json.loads(res.stdout), "process_cpu_seconds": _cpu() - c0, "load_avg": os.getloadavg()[0]})
        print(f"{cores} core(s), round {r + 1}: distca-tokenize {ours[-1]['seconds']:.1f} s, encode_batch "
              f"{theirs[-1]['seconds']:.1f} s", flush=True)
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="copies of the stdlib corpus")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="200 documents, a 2K vocabulary, 1 round (smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.cores, args.rounds, args.vocab = [1], 1, 2000
    args.out = args.out or (os.path.join(tempfile.gettempdir(), "tokenize_throughput_quick.json") if args.quick
                            else os.path.join(RESULTS, "tokenize_throughput_cpu.json"))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        jsonl, folder = os.path.join(tmp, "stdlib.jsonl"), os.path.join(tmp, "tok")
        docs, nbytes = build_corpus(jsonl, args.repeat, 200 if args.quick else 0)
        train_tokenizer(folder, jsonl, args.vocab)
        for cores in args.cores:
            ours, theirs = measure(jsonl, folder, tmp, cores, args.rounds)
            from distca.data.indexed import IndexedDataset
            tokens = IndexedDataset(os.path.join(tmp, "out")).num_tokens
            ours_s = float(np.median([o["seconds"] for o in ours]))
            theirs_s = float(np.median([t["seconds"] for t in theirs]))
            runs.append({
                "cores": cores,
                "distca_tokenize": {"seconds_median": ours_s, "tokens_per_s": tokens / ours_s,
                                    "MB_per_s": nbytes / 1e6 / ours_s, "documents_per_s": docs / ours_s,
                                    "cpu_seconds_median": float(np.median([o["cpu_seconds"] for o in ours])),
                                    "rounds": ours},
                "encode_batch": {"seconds_median": theirs_s, "tokens_per_s": theirs[0]["tokens"] / theirs_s,
                                 "MB_per_s": nbytes / 1e6 / theirs_s,
                                 "process_cpu_seconds_median": float(np.median([t["process_cpu_seconds"] for t in theirs])),
                                 "rounds": theirs},
                "distca_time_over_encode_batch": ours_s / theirs_s})
            print(f"{cores} core(s): distca-tokenize {tokens / ours_s / 1e6:.2f}M tokens/s ({nbytes / 1e6 / ours_s:.1f} "
                  f"MB/s), encode_batch {theirs[0]['tokens'] / theirs_s / 1e6:.2f}M tokens/s "
                  f"({nbytes / 1e6 / theirs_s:.1f} MB/s)", flush=True)
    result = {
        "benchmark": "distca-tokenize vs tokenizers encode_batch_fast, same cores",
        "provenance": provenance(),
        "corpus": {"what": f"Python {sys.version.split()[0]} standard library .py files as jsonl x{args.repeat}",
                   "documents": docs, "bytes": nbytes, "tokens": tokens},
        "tokenizer": {"what": f"byte-level BPE, {args.vocab} ids, trained here with tokenizers' BpeTrainer on 4 MB "
                              "of the corpus (no model download on this machine)"},
        "what_is_timed": {"distca_tokenize": "the command end to end: process start, jsonl parsing, encoding in "
                                             "--workers processes, writing .bin/.idx",
                          "encode_batch": "the encode_batch_fast call alone, texts already in memory, "
                                          "RAYON_NUM_THREADS = cores"},
        "runs": runs,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
