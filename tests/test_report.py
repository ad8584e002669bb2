"""distca-report plots a run's metrics.jsonl; W&B gets the same keys grouped into panels."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from distca.observe.metrics import MetricsLogger, wandb_key
from distca.observe.report import main as report_main

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path, steps=12):
    rows = []
    for s in range(1, steps + 1):
        r = {"step": s, "loss": 7.0 - 0.25 * s, "tokens": 256, "tokens_per_s": 900.0 + s, "mfu": None,
             "max_mem_gib": 0.4, "lr": 1e-3, "grad_norm": 1.0, "step_time_s": 0.3,
             "cad_imbalance_before": 1.5, "cad_imbalance_after": 1.04, "cad_moved_work": 0.2,
             "cad_bytes": 1e6, "cad_server_bytes": 2e5, "cad_plan_ms": 1.5}
        if s % 4 == 0:
            r.update(eval_loss=r["loss"] + 0.1, eval_ppl=2.0)
        rows.append(r)
    rows.append(dict(rows[4], loss=99.0))  # a resume re-ran step 5: the later row wins
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 13, "lo'  # cut short by a crash
    (tmp_path / "metrics.jsonl").write_text(text)
    return tmp_path


def test_report_writes_png_and_html_listing_the_steps(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = _run(tmp_path)
    assert report_main([str(run)]) == 0
    png = (run / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    page = (run / "report.html").read_text()
    assert '<img src="report.png"' in page
    cells = [line.split("</td>")[0].removeprefix("<tr><td>") for line in page.splitlines()
             if line.startswith("<tr><td>")]
    assert cells == [str(s) for s in range(1, 13)]  # every step once, in order
    for key in ("eval_loss", "tokens_per_s", "mfu", "cad_imbalance_after", "cad_moved_work", "cad_plan_ms"):
        assert f"<th>{key}</th>" in page, key
    assert "<td>99</td>" in page and "<td>5.75</td>" not in page  # step 5's later row
    assert "<td>n/a</td>" in page  # mfu: no peak known
    assert "wrote" in capsys.readouterr().out


def test_missing_matplotlib_or_metrics_say_what_to_do(tmp_path, monkeypatch, capsys):
    run = _run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    assert report_main([str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "matplotlib is not installed" in err, err  # one line
    assert "pip install -e '.[report]'" in err and "'.[report]'" in (ROOT / "README.md").read_text()
    assert not (run / "report.html").exists() and not (run / "report.png").exists()  # no half report
    assert report_main([str(tmp_path / "nowhere")]) == 1
    assert "metrics.jsonl not found" in capsys.readouterr().err


class _FakeWandb:
    def __init__(self):
        self.logged = []

    def log(self, values, step):
        self.logged.append((step, values))


def test_wandb_panels_group_keys_and_keep_every_evaluation(tmp_path):
    assert [wandb_key(k) for k in ("loss", "eval_loss", "tokens_per_s", "mfu", "cad_bytes", "pp_bubble")] == \
        ["train/loss", "eval/loss", "perf/tokens_per_s", "perf/mfu", "cad/bytes", "pipeline/bubble"]
    lcfg = SimpleNamespace(wandb=False, progress=False)
    logger = MetricsLogger(str(tmp_path), {}, lcfg, total_steps=30, enabled=True, log_every=10)
    logger._wandb = fake = _FakeWandb()
    for s in range(1, 31):
        m = {"step": s, "loss": 1.0, "tokens_per_s": 1.0, "tflops_per_gpu": 0.0, "mfu": None,
             "max_mem_gib": 0.1, "lr": 1e-3}
        if s % 7 == 0:
            m.update(eval_loss=2.0, eval_ppl=7.4)
        logger.log(m)
    logger._wandb = None
    logger.close()
    assert [s for s, _ in fake.logged] == [1, 7, 10, 14, 20, 21, 28, 30]  # log_every, plus evals
    step7 = dict(fake.logged)[7]
    assert step7["eval/loss"] == 2.0 and step7["train/loss"] == 1.0 and "perf/mfu" not in step7
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert len(rows) == 30 and "eval_loss" in rows[6] and "loss" in rows[0]  # plain keys on disk


def test_eval_figure_draws_the_passkey_grid_and_the_position_curve(tmp_path):
    pytest.importorskip("matplotlib")
    from distca.observe.report_eval import eval_figure
    rows = [{"step": 1, "loss": 3.0},
            {"step": 2, "eval_position_loss": [3.0, 2.5, None], "eval_position_edges": [0, 10, 20, 30],
             "eval_passkey_grid": {"lengths": [100, 200], "depths": [0.0, 1.0], "acc": [[1.0, 0.5], [None, 0.0]]}}]
    out = eval_figure(rows, tmp_path / "e.png")
    assert out == tmp_path / "e.png" and out.stat().st_size > 1000
    assert eval_figure(rows[:1], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
