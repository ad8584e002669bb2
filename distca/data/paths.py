"""Turn `data.paths` (files, directories, globs) into one sorted list of files.

Sorted by path string so that every rank, on every run, sees the same documents in the
same order regardless of what order the filesystem lists them in.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

_GLOB_CHARS = set("*?[")


def expand_paths(patterns: Sequence[str], suffixes: Sequence[str], source: str) -> list[str]:
    """Files named by `patterns`; directories contribute their files ending in `suffixes`
    (recursively). Every pattern must match at least one file, else ValueError."""
    if not patterns:
        raise ValueError(f"data.paths: source {source!r} needs files but data.paths is empty. "
                         f"Fix: e.g. data.paths='[/data/train/*{suffixes[0]}]'")
    files: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if _GLOB_CHARS & set(pattern):
            matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            if not matched:
                raise ValueError(f"data.paths: pattern {pattern!r} matched no files. "
                                 f"Fix: check the pattern and that the files exist")
        elif os.path.isdir(pattern):
            matched = [os.path.join(root, name)
                       for root, _, names in os.walk(pattern) for name in names
                       if name.endswith(tuple(suffixes))]
            if not matched:
                raise ValueError(f"data.paths: directory {pattern!r} has no {'/'.join(suffixes)} files "
                                 f"for source {source!r}. Fix: point data.paths at the data files "
                                 f"or set data.source to their format")
        elif os.path.isfile(pattern):
            matched = [pattern]
        else:
            raise ValueError(f"data.paths: {pattern!r} does not exist. "
                             f"Fix: give existing files, directories or glob patterns")
        files.update(os.path.abspath(p) for p in matched)
    return sorted(files)
