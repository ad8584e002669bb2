"""distca-tokenize: text corpora (or raw id files) into a Megatron indexed dataset.

    distca-tokenize INPUT... --tokenizer PATH --output PREFIX [--workers N] [--text-field F]
    distca-tokenize --from-ids FILE.bin --token-dtype uint16 --eos-id ID [--output PREFIX]
    (also: python -m distca.data.tokenize_cli ...)

INPUT: files, folders or globs; `.jsonl`/`.json` (one JSON object per line, the text under
--text-field), `.parquet` (the string column --text-field) and any other file as plain text
(one document per file). --tokenizer is a tokenizer.json, a model folder holding one, or
`byte`. Every document becomes one sequence of PREFIX.bin + PREFIX.idx (distca/data/indexed.py)
with the tokenizer's BOS where it wants one and its EOS appended, in input order whatever
the worker count: the output loads in Megatron unchanged, and in distca with
`data=tokens data.paths=[PREFIX] data.tokenizer_path=PATH`.

The inputs are cut into units of a few MB (jsonl byte ranges, parquet row groups, files)
that worker processes encode, one thread each; the main process writes the results in order.
A progress bar shows documents, tokens/s and MB/s; the end is one summary line. Bad input
(a bad JSON line, a missing text field, an unreadable tokenizer) stops with one line naming
the file (and line) and the fix, and leaves no output files behind.

--from-ids turns the raw EOS-separated id files earlier releases trained on into indexed
datasets (distca/data/raw_ids.py): a single raw .bin just gets its .idx written beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

UNIT_BYTES = 4 << 20  # bytes of jsonl per work unit: a few per worker keep all workers busy
TEXT_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


@dataclass(frozen=True)
class Unit:
    kind: str        # jsonl | parquet | text
    path: str
    start: int = 0   # jsonl: byte offset; parquet: row group
    stop: int = 0    # jsonl: byte end
    line: int = 1    # jsonl: line number of `start`
    size: int = 0    # bytes of input (progress)


def _kind(path: str) -> str:
    if path.endswith((".jsonl", ".json")):
        return "jsonl"
    return "parquet" if path.endswith(".parquet") else "text"


def plan_units(files: list[str], unit_bytes: int = UNIT_BYTES) -> list[Unit]:
    """Cut the inputs into work units, in input order."""
    units = []
    for path in files:
        kind = _kind(path)
        size = os.path.getsize(path)
        if kind == "parquet":
            import pyarrow.parquet as pq
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as e:
                raise ValueError(f"{path} is not a readable parquet file ({e}). Fix: give parquet files, or "
                                 "rename a text file") from None
            total = max(1, meta.num_rows)
            units += [Unit("parquet", path, g, size=size * meta.row_group(g).num_rows // total)
                      for g in range(meta.num_row_groups)]
        elif kind == "jsonl" and size:
            with open(path, "rb") as f:
                data = np.memmap(f, dtype=np.uint8, mode="r")
                start, line = 0, 1
                while start < size:
                    stop = size if start + unit_bytes >= size else start + unit_bytes
                    if stop < size:  # end the unit after a newline
                        nl = np.flatnonzero(data[stop:min(size, stop + (1 << 24))] == 10)
                        stop = stop + int(nl[0]) + 1 if nl.size else size
                    units.append(Unit("jsonl", path, start, stop, line, stop - start))
                    line += int(np.count_nonzero(data[start:stop] == 10))
                    start = stop
                del data
        elif kind == "text":
            units.append(Unit("text", path, size=size))
    return units


def _texts(unit: Unit, text_field: str) -> list:
    """The documents of one unit: str (or bytes for plain files)."""
    if unit.kind == "text":
        with open(unit.path, "rb") as f:
            return [f.read()]
    if unit.kind == "parquet":
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(unit.path)
        if text_field not in pf.schema_arrow.names:
            raise ValueError(f"{unit.path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}). "
                             "Fix: --text-field NAME")
        out = []
        for value in pf.read_row_group(unit.start, columns=[text_field]).column(0).to_pylist():
            if value is None:
                value = ""
            if not isinstance(value, (str, bytes)):
                raise ValueError(f"{unit.path}: column {text_field!r} holds {type(value).__name__}, not text. "
                                 "Fix: --text-field naming a string column")
            out.append(value)
        return out
    with open(unit.path, "rb") as f:
        f.seek(unit.start)
        data = f.read(unit.stop - unit.start)
    out = []
    for n, line in enumerate(data.split(b"\n"), start=unit.line):
        if not line.strip():
            continue  # blank lines (and a lone \r) are not documents, as in data=jsonl
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{unit.path}:{n}: not valid JSON ({str(e)[:80]}). Fix: one JSON object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            what = "no key" if not isinstance(record, dict) or text_field not in record else "a non-text value under"
            raise ValueError(f"{unit.path}:{n}: {what} {text_field!r}. Fix: --text-field naming the text key")
        out.append(record[text_field])
    return out


def load_tokenizer(spec: str):
    from .hf_tokenizer import HFTokenizer
    from .tokenizer import ByteTokenizer
    return ByteTokenizer() if spec == "byte" else HFTokenizer(spec, field="--tokenizer")


_worker: dict = {}


def _init_worker(spec: str, text_field: str, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _worker.update(tokenizer=load_tokenizer(spec), text_field=text_field, dtype=np.dtype(dtype))


def _encode(unit: Unit) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids of the unit's documents back to back, their lengths, input bytes)."""
    docs = _worker["tokenizer"].documents(_texts(unit, _worker["text_field"]))
    lens = np.fromiter((d.size for d in docs), dtype=np.int64, count=len(docs))
    ids = np.concatenate(docs).astype(_worker["dtype"]) if docs else np.zeros(0, _worker["dtype"])
    return ids, lens, unit.size


class Progress:
    """Documents, tokens/s and MB/s: a rich bar in a terminal, else a line every 30 s."""

    def __init__(self, total_bytes: int, enabled: bool) -> None:
        self.total, self.docs, self.tokens, self.bytes = total_bytes, 0, 0, 0
        self.t0 = self._last = time.perf_counter()
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeRemainingColumn
            self._bar = Bar(BarColumn(), TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                            transient=True)
            self._task = self._bar.add_task("tokenize", total=max(1, total_bytes), stats="")
            self._bar.start()
        self.enabled = enabled

    def stats(self) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return (f"{self.docs:,} docs, {self.tokens / dt / 1e6:.2f}M tokens/s, "
                f"{self.bytes / dt / 1e6:.1f} MB/s")

    def update(self, docs: int, tokens: int, nbytes: int) -> None:
        self.docs, self.tokens, self.bytes = self.docs + docs, self.tokens + tokens, self.bytes + nbytes
        if self._bar is not None:
            self._bar.update(self._task, completed=self.bytes, stats=self.stats())
        elif self.enabled and time.perf_counter() - self._last > 30:
            self._last = time.perf_counter()
            print(f"distca-tokenize: {self.bytes / max(1, self.total):.0%} {self.stats()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def tokenize(inputs: list[str], tokenizer: str, output: str, workers: int = 0, text_field: str = "text",
             progress: bool = True) -> dict:
    """Tokenize `inputs` into PREFIX.bin/.idx; returns the summary's figures."""
    from .indexed import IndexedWriter, token_dtype
    from .paths import expand_paths

    t0 = time.perf_counter()
    tok = load_tokenizer(tokenizer)  # fails here, once, on a bad tokenizer file
    dtype = token_dtype(tok.vocab_size)
    try:
        files = expand_paths(inputs, TEXT_SUFFIXES, "distca-tokenize")
    except ValueError as e:
        raise ValueError(str(e).replace("data.paths: ", "").replace("data.paths", "INPUT")) from None
    units = plan_units(files)
    workers = workers or os.cpu_count() or 1
    bar = Progress(sum(u.size for u in units), progress)
    writer = IndexedWriter(output, dtype)
    docs = 0
    try:
        if workers == 1:
            _init_worker(tokenizer, text_field, dtype.str)
            results = map(_encode, units)
            pool = None
        else:
            import multiprocessing as mp
            pool = mp.get_context("fork").Pool(workers, _init_worker, (tokenizer, text_field, dtype.str))
            results = pool.imap(_encode, units)  # in order, whatever finishes first
        for ids, lens, nbytes in results:
            writer.add(ids, lens)
            docs += lens.size
            bar.update(int(lens.size), int(ids.size), nbytes)
        if pool is not None:
            pool.close()
            pool.join()
        bin_path, idx_path = writer.close()
    except BaseException:
        writer.abort()
        if workers != 1 and "pool" in locals() and pool is not None:
            pool.terminate()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return {"documents": docs, "tokens": writer.tokens, "input_bytes": sum(u.size for u in units),
            "seconds": seconds, "workers": workers, "dtype": dtype.name, "bin": bin_path, "idx": idx_path,
            "tokenizer": getattr(tok, "path", "") or tok.name, "vocab_size": tok.vocab_size}


def summary(r: dict) -> str:
    dt = max(r["seconds"], 1e-9)
    return (f"distca-tokenize: {r['documents']:,} documents, {_human(r['tokens'])} tokens ({r['dtype']}) from "
            f"{r['input_bytes'] / 1e6:.1f} MB in {dt:.1f} s ({_human(r['tokens'] / dt)} tokens/s, "
            f"{r['input_bytes'] / 1e6 / dt:.1f} MB/s, {r['workers']} workers) -> {r['bin'][:-4]}.bin/.idx")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="distca-tokenize", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="jsonl / parquet / text files, folders, globs")
    ap.add_argument("--tokenizer", help="a tokenizer.json, a model folder holding one, or 'byte'")
    ap.add_argument("--output", help="output PREFIX: writes PREFIX.bin and PREFIX.idx")
    ap.add_argument("--workers", type=int, default=0, help="encoding processes (default: one per core)")
    ap.add_argument("--text-field", default="text", help="jsonl key / parquet column holding the text")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    ap.add_argument("--from-ids", action="store_true",
                    help="the inputs are raw id files (.bin, .npy) separated by --eos-id, not text")
    ap.add_argument("--token-dtype", default="uint16", help="--from-ids: element type of raw .bin files")
    ap.add_argument("--eos-id", type=int, help="--from-ids: the id that ends every document")
    ap.add_argument("--vocab-size", type=int, help="--from-ids: check every id is below it")
    args = ap.parse_args(argv)
    if args.from_ids:
        if args.eos_id is None:
            ap.error("--from-ids needs --eos-id (the id that separates documents)")
    else:
        if not args.tokenizer or not args.output:
            ap.error("--tokenizer and --output are required (or --from-ids for raw id files)")
    if args.workers < 0:
        ap.error("--workers must be >= 0 (0: one per core)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.from_ids:
            from .raw_ids import convert_raw
            t0 = time.perf_counter()
            prefix, docs, tokens = convert_raw(args.inputs, args.token_dtype, args.eos_id, args.output,
                                               args.vocab_size)
            print(f"distca-tokenize: {docs:,} documents, {_human(tokens)} tokens indexed in "
                  f"{time.perf_counter() - t0:.1f} s -> {prefix}.bin/.idx")
            return 0
        print(summary(tokenize(args.inputs, args.tokenizer, args.output, args.workers, args.text_field,
                               not args.no_progress)))
        return 0
    except ValueError as e:
        print(f"distca-tokenize: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
