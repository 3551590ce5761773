"""Normalization and cost of randomly initialized MCNFs (a quick self-check of a fresh install).

    python -m scripts.random_model_check [--scale 1.0]

For each manifold and chart mode: the quadrature integral of exp(log_prob) (must be 1) and the
number of function evaluations (NFE) of one forward pass of 1000 random points (dopri5,
atol = rtol = 1e-5, float64). ``--scale`` multiplies the last layer so that the flow moves mass far.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from flows import MCNF, model_integral
from utils import run_cli

GRID = {
    "Sphere": dict(n_radial=150, n_angular=300),
    "Hyperboloid": dict(n_radial=200, n_angular=300, r_max=8.0),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print("| manifold | charts | integral | NFE of one forward pass | seconds (integral) |")
    print("|---|---|---|---|---|")
    for M in ("Sphere", "Hyperboloid"):
        for charts in (1, 4, "adaptive"):
            torch.manual_seed(a.seed)
            m = MCNF(M, charts=charts, eval_solver=dict(atol=1e-5, rtol=1e-5)).double().eval()
            with torch.no_grad():
                m.field.layers[-1].weight.mul_(a.scale)
                m.field.layers[-1].bias.mul_(a.scale)
                m(m.manifold.random(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
                nfe = m.nfe_forward
                t0 = time.perf_counter()
                total = model_integral(m, **GRID[M])
            print(f"| {M} | {charts} | {total:.5f} | {nfe} | {time.perf_counter() - t0:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m scripts.random_model_check"))
