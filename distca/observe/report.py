"""`distca-report RUN_DIR`: plots of a run from its metrics.jsonl, as RUN_DIR/report.png and
RUN_DIR/report.html (the image and a table of the plotted values per step).

Panels: loss with eval loss, tokens/s, MFU, and the CAD figures (`cad_*` keys, written under
parallel.cp_algo=cad: balance before/after, moved work, bytes, and any other cad_ key).
A panel whose keys the run never logged is left out. The evaluation tasks' figures (passkey
accuracy by length and depth, loss by position) go to RUN_DIR/report_eval.png. A resumed run appends to metrics.jsonl
and may repeat steps: the last row written for a step wins.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

from distca.observe.report_eval import eval_figure

# (title, keys) in order; every cad_ key not listed gets a panel of its own
PANELS = [
    ("loss", ("loss", "eval_loss")),
    ("tokens/s", ("tokens_per_s",)),
    ("MFU", ("mfu",)),
    ("CAD imbalance (max / mean attention cost)", ("cad_imbalance_before", "cad_imbalance_after")),
    ("CAD moved work (share of attention run off its rank)", ("cad_moved_work",)),
    ("CAD bytes per layer", ("cad_bytes", "cad_server_bytes")),
]
MAX_TABLE_ROWS = 500


class ReportError(Exception):
    """A run dir the report cannot read: the message says what to do."""


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path} not found: RUN_DIR is the folder a run wrote (it holds "
                          "metrics.jsonl and config.yaml)")
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(row, dict) and "step" in row:
            by_step[row["step"]] = row
    if not by_step:
        raise ReportError(f"{path} holds no steps yet")
    return [by_step[s] for s in sorted(by_step)]


def panels(rows: list[dict]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels this run logged keys for (mfu is null where the device's peak is unknown: its
    panel says n/a)."""
    logged = {k for r in rows for k in r}
    out = [(title, keys) for title, keys in PANELS if logged & set(keys)]
    listed = {k for _, keys in PANELS for k in keys}
    out += [(k, (k,)) for k in sorted(logged) if k.startswith("cad_") and k not in listed]
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _matplotlib():
    """matplotlib, or a ReportError saying how to install it (checked before anything is written:
    no half report)."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("matplotlib is not installed, and the report needs it for its plots: "
                          "pip install -e '.[report]' (or pip install matplotlib); nothing was written") from None
    return matplotlib


def plot(rows: list[dict], chosen, out: Path) -> None:
    matplotlib = _matplotlib()
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    cols = 2 if len(chosen) > 1 else 1
    nrows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 3 * nrows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, chosen):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if _number(r.get(key))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 or key == "eval_loss" else None,
                        markersize=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "n/a (no values: for mfu, no peak is known for this device)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=9)
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_html(rows: list[dict], chosen, out: Path, image: str, run_dir: Path) -> None:
    keys = ["step"] + [k for _, ks in chosen for k in ks]
    stride = max(1, math.ceil(len(rows) / MAX_TABLE_ROWS))
    shown = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])

    def cell(v):
        if v is None:
            return "n/a"
        return f"{v:.6g}" if _number(v) and not isinstance(v, int) else str(v)

    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(cell(r[k]) if k in r else '')}</td>" for k in keys)
                     + "</tr>"
                     for r in shown)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    img = f'<img src="{image}" alt="plots">'
    note = f"<p>every {stride}th step of {len(rows)}</p>" if stride > 1 else ""
    out.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>distca report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:right}}
tr:nth-child(even){{background:#f4f4f4}}</style></head>
<body><h1>{html.escape(str(run_dir))}</h1>
{img}
{note}<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table></body></html>
""")


def report(run_dir: str | Path) -> list[Path]:
    """Write report.png and report.html into run_dir; returns the files written. Raises
    ReportError, having written nothing, when the run dir or matplotlib is missing."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    _matplotlib()
    chosen = panels(rows)
    png, page = run_dir / "report.png", run_dir / "report.html"
    plot(rows, chosen, png)
    write_html(rows, chosen, page, png.name, run_dir)
    evals = eval_figure(rows, run_dir / "report_eval.png")  # passkey heatmap, loss by position
    return [png, page] + ([evals] if evals else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="distca-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run's folder (holds metrics.jsonl)")
    args = ap.parse_args(argv)
    try:
        for path in report(args.run_dir):
            print(f"wrote {path}")
    except ReportError as e:
        print(f"distca-report: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
