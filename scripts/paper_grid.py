"""Paper-style grid figure from finished runs: one row per run, ground truth beside the model.

    python -m scripts.paper_grid OUT.png RUN_DIR [RUN_DIR ...] [--res 200]

Each ``RUN_DIR`` is an output folder of ``main_density.py`` (it reads ``checkpoint.pt`` safely:
weights only). The drawing itself is :func:`viz.paper_grid.paper_grid`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from data import get_density
from flows import CheckpointError, figure_model, load_model, read_checkpoint
from train.objectives import accurate_figures
from viz.paper_grid import paper_grid


def runs_from_dirs(dirs):
    """``(title, manifold, true_log_prob, model_log_prob)`` for each run folder."""
    runs = []
    for d in dirs:
        path = Path(d) / "checkpoint.pt"
        args = read_checkpoint(path, required=("args",))["args"]
        accurate = accurate_figures(args.get("objective"))
        model = figure_model(load_model(path), accurate=accurate)
        density = get_density(args["M"], args["dataset"], dtype=torch.float64)
        kind = args.get("model", "mcnf")
        title = f"{args['M']} {args['dataset']}" + ("" if kind == "mcnf" else f" ({kind})")
        runs.append((title, args["M"], density.log_prob,
                     lambda x, m=model, dt=torch.float64 if accurate else torch.float32: m.log_prob(x.to(dt))))  # fmt: skip
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
    try:
        runs = runs_from_dirs(a.runs)
    except (CheckpointError, ValueError) as e:
        print(f"paper_grid: error: {e}", file=sys.stderr)
        return 2
    with torch.no_grad():
        paper_grid(runs, a.out, res=a.res, progress=True)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
