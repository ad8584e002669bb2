"""The default corpus: the Python standard library's source files, one document each.

Real text that every machine with Python already has, so the main job never downloads
anything. Listing takes a directory walk (~0.1 s for ~1.8K files); files are read only when
the packer reaches them. The corpus is the running interpreter's stdlib, so two machines
with different Python versions train on different (equally valid) text.
"""

from __future__ import annotations

import os
import sysconfig
from typing import Optional

# Installed third-party packages live under the stdlib directory on some layouts; they are
# not the standard library and differ between machines.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


class StdlibCorpus:
    """Non-empty `.py` files under the stdlib, sorted by their path relative to the root."""

    def __init__(self, root: Optional[str] = None) -> None:
        self.root = root or stdlib_root()
        if not os.path.isdir(self.root):
            raise ValueError(f"data.source: stdlib directory {self.root!r} not found. "
                             f"Fix: use another data.source (jsonl, parquet, tokens, synthetic)")
        entries: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    size = os.stat(path).st_size
                except OSError:  # a dangling symlink is not a document
                    continue
                if size > 0:  # empty __init__.py files would be EOS-only documents
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                    entries.append((rel, size))
        if not entries:
            raise ValueError(f"data.source: no .py files under {self.root!r}. "
                             f"Fix: use another data.source")
        entries.sort()
        self.relpaths = [rel for rel, _ in entries]
        self.sizes = [size for _, size in entries]

    def __len__(self) -> int:
        return len(self.relpaths)

    def raw(self, index: int) -> bytes:
        with open(os.path.join(self.root, self.relpaths[index]), "rb") as f:
            return f.read()

    def byte_length(self, index: int) -> int:
        return self.sizes[index]
