"""Monte Carlo entropies of the test densities, and their quadrature integrals.

    python -m scripts.entropies [--n 200000] [--seed 1]

Entropy H = -mean log p(x) over n exact samples (with its standard error); integral: quadrature
of exp(log p) over the manifold (must be 1). These are the floors no model's test NLL can beat.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from data import DATASETS, get_density
from manifolds import integrate
from utils import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    print("| manifold | dataset | entropy (nats) | integral |")
    print("|---|---|---|---|")
    for M, names in DATASETS.items():
        for name in names:
            den = get_density(M, name, dtype=torch.float64)
            lp = den.log_prob(den.sample(a.n, generator=torch.Generator().manual_seed(a.seed)))
            grid = dict(n_radial=600, n_angular=1200) if name == "bigcheckerboard" else {}
            total = integrate(den.log_prob, den.manifold, **grid)
            print(f"| {M} | {name} | {-lp.mean():.4f} +- {lp.std() / math.sqrt(a.n):.4f} | {total:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m scripts.entropies"))
