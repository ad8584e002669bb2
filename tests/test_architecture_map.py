"""docs/ARCHITECTURE.md opens with a map of the rooms: every code folder, and every file
directly in distca/, one line each. The map and the tree must agree both ways."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("distca_kernels", "parallel", "distca", "launch", "configs", "benchmarks", "tests")


def map_entries(text: str) -> list[str]:
    block = re.search(r"<!-- rooms -->\n```\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md has no rooms map (<!-- rooms --> and a code block)"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def tree_entries(root: Path) -> set[str]:
    out = {f"{r}/" for r in ROOMS if (root / r).is_dir()}
    for top in ("distca_kernels", "parallel", "distca"):
        for d in (root / top).iterdir():
            if d.is_dir() and any(d.glob("*.py")):
                out.add(f"{top}/{d.name}/")
    out |= {f"distca/{f.name}" for f in (root / "distca").glob("*.py") if f.name != "__init__.py"}
    return out


def test_the_map_lists_every_room_and_nothing_else():
    listed = map_entries((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    assert len(listed) == len(set(listed)), "a room is listed twice"
    tree = tree_entries(ROOT)
    assert not tree - set(listed), f"rooms missing from the map: {sorted(tree - set(listed))}"
    assert not set(listed) - tree, f"the map lists what the tree lacks: {sorted(set(listed) - tree)}"


def test_the_checker_sees_a_new_room(tmp_path):
    for d in ("distca_kernels/op", "parallel", "distca/new_room", "launch", "configs", "benchmarks", "tests"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "distca_kernels" / "op" / "k.py").write_text("")
    (tmp_path / "distca" / "new_room" / "m.py").write_text("")
    (tmp_path / "distca" / "loop.py").write_text("")
    assert tree_entries(tmp_path) == {"distca_kernels/", "parallel/", "distca/", "launch/", "configs/", "benchmarks/",
                                      "tests/", "distca_kernels/op/", "distca/new_room/", "distca/loop.py"}


def test_at_most_ten_modules_directly_in_distca():
    assert len(list((ROOT / "distca").glob("*.py"))) <= 10
