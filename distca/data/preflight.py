"""Pre-flight scan of data.paths: every input file is checked before step 1, so a bad line
fails the run at start-up with its path and line number, not hours later when the packer
reaches it (the corpora read text lazily).

Checks: the file can be opened and read; it is not empty; a text format (jsonl) holds no
NUL bytes (a binary file given as text); every non-blank jsonl line is a JSON object whose
`data.text_field` is a string. Problems are collected over all files (the first few are
listed, then a count) into one ValueError naming the field and the fix. Token files
(.bin/.npy) and parquet are checked where they are opened (sizes, schema).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

SHOWN = 10                 # problems listed in the message; the rest are counted
ANNOUNCE_BYTES = 1 << 30   # scans over this many bytes say so (they take a while)


def preflight_jsonl(paths: Sequence[str], text_field: str) -> None:
    """Scan jsonl files; ValueError listing the problems (path:line) if any."""
    total = sum(_size(p) for p in paths)
    announce = total >= ANNOUNCE_BYTES and _is_rank0()
    if announce:
        print(f"distca: checking {len(paths)} data file(s), {total / 2**30:.1f} GiB, before step 1 "
              "(data.preflight=false skips this)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    problems: list[str] = []
    for path in paths:
        problems += _scan_file(path, text_field)
    if announce:
        print(f"distca: data checked in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise ValueError("data.paths: the data has problems:\n  " + "\n  ".join(problems[:SHOWN]) + more +
                         "\nFix: repair or remove those files/lines (one JSON object per line with a "
                         f"string under data.text_field={text_field!r}), or point data.paths elsewhere")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _scan_file(path: str, text_field: str) -> list[str]:
    try:
        f = open(path, "rb")
    except OSError as e:
        return [f"{path}: cannot be read ({e.strerror or e})"]
    out: list[str] = []
    with f:
        n = 0
        for n, line in enumerate(f, start=1):
            if b"\0" in line:
                return out + [f"{path}:{n}: binary content (NUL bytes): not a text/jsonl file"]
            if not line.strip():
                continue
            problem = _check_line(line, text_field)
            if problem:
                out.append(f"{path}:{n}: {problem}")
        if n == 0:
            out.append(f"{path}: the file is empty")
    return out


def _check_line(line: bytes, text_field: str) -> str | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if text_field not in record:
        return f"no key {text_field!r} (keys: {sorted(record)[:5]})"
    if not isinstance(record[text_field], str):
        return f"{text_field!r} is {type(record[text_field]).__name__}, not text"
    return None
