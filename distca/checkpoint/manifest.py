"""What a complete checkpoint holds, written with it and verified before it is loaded.

`manifest.json` in a step folder lists every file below it with its size, and a CRC-32 of
the files small enough to read back cheaply (trainer state, RNG, metadata; the large shards
are checked by size, which is what a truncated or torn write changes). It is written after
every rank has finished writing and before the folder gets its final name, so a folder with
a final name and no manifest predates manifests (accepted), and one whose files disagree
with its manifest was damaged after the fact (rejected, with the first difference named).
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

MANIFEST = "manifest.json"
CRC_MAX_BYTES = 64 << 20  # files up to this size also get a checksum


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: str | Path) -> None:
    """List folder's files (size, CRC of the small ones) in folder/manifest.json, durably."""
    folder = Path(folder)
    entries = {}
    for p in _files(folder):
        size = p.stat().st_size
        entries[str(p.relative_to(folder))] = {"size": size, **({"crc32": _crc(p)} if size <= CRC_MAX_BYTES else {})}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": entries}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def verify(folder: str | Path) -> str | None:
    """None if folder is a complete checkpoint, else what is wrong with it."""
    folder = Path(folder)
    if not folder.is_dir():
        return "the folder does not exist"
    path = folder / MANIFEST
    if not path.exists():  # a checkpoint from before manifests: complete if its state is there
        return None if (folder / "trainer_state.json").exists() else "no manifest and no trainer_state.json"
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"its manifest is unreadable ({e})"
    for name, want in files.items():
        p = folder / name
        if not p.exists():
            return f"{name} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']} (truncated or torn)"
        if "crc32" in want and _crc(p) != want["crc32"]:
            return f"{name} does not match its checksum"
    return None
