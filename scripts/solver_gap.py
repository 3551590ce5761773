"""Is a model exploiting its training solver? Compare its NLL under the training solver and under
the accurate evaluation solver (dopri5, float64) on the same points.

    python -m scripts.solver_gap RUN_DIR [--tol 1e-5]

RUN_DIR is a main_density.py output folder (its checkpoint.pt is used). For Earth data the points
are the training and validation splits; for synthetic densities, 5000 samples of the true density.
A training-solver NLL far below the accurate one means that the model has learned the solver's
log-determinant error instead of the data (see README, "Earth event data").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from train.objectives import get_objective
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--tol", type=float, default=1e-5)
    a = p.parse_args(argv)
    from flows import SolverSettings, load_model, read_checkpoint, solver_gap
    from flows.solver import FIXED_STEP

    ckpt = read_checkpoint(Path(a.run) / "checkpoint.pt", required=("args",))
    args = ckpt["args"]
    model = load_model(Path(a.run) / "checkpoint.pt").double()
    from data.earth import EARTH

    if args["dataset"] in EARTH:
        from data.earth import EarthData

        d = EarthData(args["dataset"], args.get("data_dir"), args.get("split_seed", 0))
        sets = {"train split": d.train, "validation split": d.val}
    else:
        from data import get_density

        den = get_density(args["M"], args["dataset"])
        sets = {"true samples": den.sample(5000, generator=torch.Generator().manual_seed(0))}
    train = model.train_solver
    tight = dict(solver=SolverSettings(atol=a.tol, rtol=a.tol))
    step = f", step {train.step_size:g}" if train.step_size is not None and train.method in FIXED_STEP else ""
    if not get_objective(args.get("objective")).solves_ode:  # flow matching: no training solver to exploit
        print(f"{a.run} (epoch {ckpt['epoch']}; objective fm, which trains without an ODE solve; the "
              f"'training solver' row is the cheap fixed-step solver {train.method}{step} for comparison)")  # fmt: skip
    else:
        print(f"{a.run} (epoch {ckpt['epoch']}; training solver {train.method}{step})")
    for name, x in sets.items():
        # the training solve as in training (float64 here, to isolate the solver's error from round-off)
        lp_train, lp_tight = solver_gap(model, x.double(), dict(train=True), tight)
        print(f"  NLL on the {name} ({len(x)} points): training solver {-lp_train.mean().item():.4f}, "
              f"dopri5 at {a.tol:g} {-lp_tight.mean().item():.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m scripts.solver_gap"))
