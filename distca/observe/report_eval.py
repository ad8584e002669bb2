"""The evaluation tasks' figures for distca-report (RUN_DIR/report_eval.png): the passkey
accuracy as a length x depth heatmap (the latest evaluation) and the held-out loss by position,
one curve per evaluation (later steps darker). Nothing is drawn for a run that logged neither."""
from __future__ import annotations

from pathlib import Path


def eval_figure(rows: list[dict], out: Path) -> Path | None:
    grids = [r for r in rows if isinstance(r.get("eval_passkey_grid"), dict)]
    curves = [r for r in rows if isinstance(r.get("eval_position_loss"), list)]
    if not grids and not curves:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p, there in (("passkey", grids), ("position", curves)) if there]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        if panel == "passkey":
            last = grids[-1]
            g = last["eval_passkey_grid"]
            acc = [[float("nan") if a is None else a for a in row] for row in g["acc"]]
            im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            ax.set_xticks(range(len(g["depths"])), [f"{d:g}" for d in g["depths"]])
            ax.set_yticks(range(len(g["lengths"])), [str(n) for n in g["lengths"]])
            ax.set_xlabel("depth of the key (0 start, 1 end)")
            ax.set_ylabel("prompt length (tokens)")
            ax.set_title(f"passkey accuracy, step {last['step']}", fontsize=10)
            for i, row in enumerate(acc):
                for j, a in enumerate(row):
                    ax.text(j, i, "-" if a != a else f"{a:.0%}", ha="center", va="center", color="w", fontsize=8)
            fig.colorbar(im, ax=ax)
        else:
            cmap = plt.get_cmap("Blues")
            for k, r in enumerate(curves):
                edges = r.get("eval_position_edges") or list(range(len(r["eval_position_loss"]) + 1))
                mids = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
                pts = [(x, y) for x, y in zip(mids, r["eval_position_loss"]) if y is not None]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o", markersize=3, color=cmap(0.3 + 0.7 * (k + 1) / len(curves)),
                            label=f"step {r['step']}")
            ax.set_xlabel("position in the document (tokens)")
            ax.set_ylabel("held-out loss")
            ax.set_title("loss by position", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
