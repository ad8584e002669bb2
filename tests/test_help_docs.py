"""`--help` and docs/CONFIG.md come from the schema: every field described, the docs current."""
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from distca.config.describe import describe, source_comments, undescribed
from distca.config.help import CONFIG_MD, REGENERATE, render_docs
from parallel.config import Choice

ROOT = Path(__file__).resolve().parent.parent


class _Color(Choice):
    red = "red"    # warm
    blue = "blue"


@dataclass
class _Sample:
    # the comment right above a field describes it when its line has none
    above: int = 1
    trailing: float = 0.5       # on the field's line
    wrapped: str = "x"          # a long description that
                                # continues on the next line
    plain: bool = False
    # a comment above a field that has its own: ignored
    own: Optional[str] = None   # its own
    colors: List[int] = None    # wrapped lines stop at code
    after: int = 0


def test_descriptions_come_from_trailing_wrapped_and_leading_comments():
    notes = source_comments(_Sample)
    assert notes["above"] == "the comment right above a field describes it when its line has none"
    assert notes["trailing"] == "on the field's line"
    assert notes["wrapped"] == "a long description that continues on the next line"
    assert "plain" not in notes and notes["own"] == "its own"
    assert notes["colors"] == "wrapped lines stop at code" and "after" not in notes
    assert source_comments(_Color) == {"red": "warm"}


def test_every_schema_field_is_described():
    missing = undescribed()
    assert not missing, (f"config fields without a description: {missing}. Add a trailing `# ...` "
                         f"comment on the field's line, then run `{REGENERATE}`")
    paths = {d.path for d in describe()}
    assert {"model.layers", "parallel.cad.block", "data.holdout", "eval.every", "run_dir"} <= paths
    cp_algo = next(d for d in describe() if d.path == "parallel.cp_algo")
    assert ("ring", "K/V blocks travel around the CP group") in cp_algo.choices


def test_config_md_is_current():
    assert CONFIG_MD.exists(), f"docs/CONFIG.md is missing: run `{REGENERATE}`"
    assert CONFIG_MD.read_text() == render_docs(), (
        f"docs/CONFIG.md is stale (a config field or preset changed): run `{REGENERATE}`")
    text = CONFIG_MD.read_text()
    for d in describe():
        assert f"`{d.path}`" in text, d.path


def test_help_lists_every_field_with_this_command_lines_values(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "distca.train", "--help", "model=1b"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for d in describe():
        assert (f"{d.path}:" if d.section else f"  {d.path} = ") in out, d.path
    assert "  train.lr = 0.0004  (float)" in out  # the 1b preset's, not the schema's 3e-3
    assert "  model.recompute = full  (none | selective | full)" in out
    assert "held-out evaluation" in out and "1b*" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()  # nothing ran
    script = shutil.which("distca-train")  # the console script (pip install -e .) takes the same path
    if script:
        proc = subprocess.run([script, "-h"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "  train.lr = 0.003  (float)" in proc.stdout, proc.stderr[-2000:]
