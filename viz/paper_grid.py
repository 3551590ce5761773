"""Paper-style grid figure from finished runs: one row per run, ground truth beside the model.

    python -m viz.paper_grid OUT.png RUN_DIR [RUN_DIR ...] [--res 200]

Each ``RUN_DIR`` is an output folder of ``main_density.py`` (it reads ``checkpoint.pt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from viz.figures import DPI, PANEL_INCHES, density_values, draw_panel, plt


def paper_grid(runs, path, res: int = 200, progress: bool = False):
    """``runs``: list of ``(title, manifold, true_log_prob, model_log_prob)``; writes ``path``."""
    n = len(runs)
    width = 2 * 2 * PANEL_INCHES  # two columns wide enough for a 2:1 Mollweide panel each
    fig = plt.figure(figsize=(width, PANEL_INCHES * n), dpi=DPI)
    for i, (title, manifold, lp_true, lp_model) in enumerate(runs):
        truth = density_values(lp_true, manifold, res, progress)
        model = density_values(lp_model, manifold, res, progress)
        vmax = float(max(truth.max(), model.max())) or 1.0
        y0 = 1 - (i + 1) / n
        for j, (vals, name) in enumerate([(truth, "ground truth"), (model, "model")]):
            w = 0.5 if manifold == "Sphere" else 0.25
            x0 = j * 0.5 + (0.5 - w) / 2
            draw_panel(fig, [x0, y0 + 0.02 / n, w, 0.85 / n], manifold, vals, vmax=vmax,
                       title=f"{title}: {name}" if title else name)  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def runs_from_dirs(dirs):
    """Load ``(title, manifold, true_log_prob, model_log_prob)`` from run folders."""
    from data import get_density
    from flows import figure_model, load_model, read_checkpoint

    runs = []
    for d in dirs:
        d = Path(d)
        ckpt = read_checkpoint(d / "checkpoint.pt", required=("args",))
        args = ckpt["args"]
        model = figure_model(load_model(d / "checkpoint.pt"))
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            density = get_density(args["M"], args["dataset"])
        finally:
            torch.set_default_dtype(prev)
        runs.append((f"{args['M']} {args['dataset']}", args["M"], density.log_prob,
                     lambda x, m=model: m.log_prob(x.float())))  # fmt: skip
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("runs", nargs="+")
    p.add_argument("--res", type=int, default=200)
    a = p.parse_args(argv)
    missing = [r for r in a.runs if not (Path(r) / "checkpoint.pt").is_file()]
    if missing:
        print(f"paper_grid: error: no checkpoint.pt in {', '.join(missing)}", file=sys.stderr)
        return 2
    with torch.no_grad():
        paper_grid(runs_from_dirs(a.runs), a.out, res=a.res, progress=True)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
