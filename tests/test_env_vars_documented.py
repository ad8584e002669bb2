"""No hidden configuration: every environment variable the product code reads (distca/,
parallel/, distca_kernels/, launch/) is listed in the README's environment-variable table."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READS = re.compile(r"""(?:os\.environ(?:\.get|\.setdefault|\.pop)?\(\s*|os\.environ\[\s*|os\.getenv\(\s*)["']([A-Z][A-Z0-9_]+)["']"""
                   r"""|["']([A-Z][A-Z0-9_]+)["']\s+(?:not\s+)?in\s+os\.environ""")


def variables_read(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for top in ("distca", "parallel", "distca_kernels", "launch"):
        for path in (root / top).rglob("*.py"):
            for m in READS.finditer(path.read_text()):
                out.setdefault(m.group(1) or m.group(2), set()).add(str(path.relative_to(root)))
    return out


def documented(readme: str) -> set[str]:
    table = readme[readme.index("| variable | read by | effect |"):]
    table = table[:table.index("\n\n")]
    names = set()
    for row in table.splitlines()[2:]:
        names |= {n.split("=")[0] for n in re.findall(r"`([A-Z][A-Z0-9_=:]*)`", row.split("|")[1])}
    return names


def test_every_variable_the_code_reads_is_in_the_readme_table():
    read = variables_read(ROOT)
    missing = {k: sorted(v) for k, v in read.items() if k not in documented((ROOT / "README.md").read_text())}
    assert not missing, f"environment variables read but not in the README's table: {missing}"


def test_the_scanner_sees_each_way_of_reading(tmp_path):
    (tmp_path / "distca").mkdir()
    for top in ("parallel", "distca_kernels", "launch"):
        (tmp_path / top).mkdir()
    (tmp_path / "distca" / "m.py").write_text(
        'a = os.environ.get("A_VAR", "0")\nb = os.environ["B_VAR"]\nos.environ.setdefault("C_VAR", "1")\n'
        'd = os.getenv("D_VAR")\nif "E_VAR" not in os.environ: pass\n')
    assert set(variables_read(tmp_path)) == {"A_VAR", "B_VAR", "C_VAR", "D_VAR", "E_VAR"}
