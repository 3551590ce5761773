"""Float32 hyperboloid models far from the origin: accuracy and cost of the float64 geometry.

    python -m benchmarks.precision [--checkpoint RUN/checkpoint.pt] [--reps 7] [--threads 1]

Side by side in one process, for a float32 hyperboloid model (a trained checkpoint, or a random
model whose last layer is scaled by 4), with the geometry in float64 (the code's policy,
``Hyperboloid.compute_dtype``) and with the geometry in float32 (the policy before, forced here):

- relative error of ``log_prob`` against the float64 model at geodesic radii 1..12 (500 points in
  all directions; the training solver rk4 step 1/8 and dopri5 at 1e-5), with the function
  evaluations dopri5 needed;
- seconds per training step (batch 200 of 5gaussians, rk4 step 1/8, Adam), medians of interleaved
  repetitions.

Writes docs/precision.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
RADII = (1, 3, 5, 7, 8, 10, 12)


class float32_geometry:
    """Context manager: run the hyperboloid's geometry in the data's dtype (the old policy)."""

    def __enter__(self):
        from manifolds import Hyperboloid

        self.saved = Hyperboloid.compute_dtype
        Hyperboloid.compute_dtype = lambda self, x: x.dtype

    def __exit__(self, *exc):
        from manifolds import Hyperboloid

        Hyperboloid.compute_dtype = self.saved


def model32(checkpoint):
    from flows import MCNF, load_model

    if checkpoint:
        return load_model(checkpoint).float()
    torch.manual_seed(0)
    m = MCNF("Hyperboloid", charts=1, train_solver=dict(method="rk4", step_size=1 / 8)).float()
    with torch.no_grad():
        m.field.layers[-1].weight.mul_(4)
    return m


def circle(M, r, n=500):
    g = torch.Generator().manual_seed(1)
    d = torch.randn(n, M.dim, generator=g, dtype=torch.float64)
    v = torch.cat([torch.zeros(n, 1, dtype=torch.float64), r * d / d.norm(dim=-1, keepdim=True)], -1)
    x32 = M.expmap(M.origin(dtype=torch.float64), v).float()
    return x32, M.projx(x32.double())


def accuracy(m32, solver):
    from flows import SolverError, SolverSettings

    m32 = copy.deepcopy(m32).eval()
    m32.eval_solver = SolverSettings(**solver, max_nfe=20_000)
    m64 = copy.deepcopy(m32).double()
    rows = []
    for r in RADII:
        x32, x64 = circle(m32.manifold, r)
        with torch.no_grad():
            ref = m64.log_prob(x64)
            out = {}
            for name, ctx in (("float64 geometry", None), ("float32 geometry", float32_geometry())):
                try:
                    if ctx:
                        with ctx:
                            lp = m32.log_prob(x32)
                    else:
                        lp = m32.log_prob(x32)
                    err = ((lp.double() - ref).abs() / ref.abs()).max().item()
                    out[name] = (err if math.isfinite(err) else float("nan"), m32.nfe_forward)
                except SolverError as e:
                    out[name] = (None, str(e).split(";")[0])
        rows.append((r, out))
    return rows


def step_time(reps, steps):
    from data import get_density
    from flows import MCNF

    den = get_density("Hyperboloid", "5gaussians", dtype=torch.float64)
    x = den.sample(200, generator=torch.Generator().manual_seed(0)).float()
    runs = {}
    for name in ("float64 geometry", "float32 geometry"):
        torch.manual_seed(0)
        m = MCNF("Hyperboloid", charts=1, train_solver=dict(method="rk4", step_size=1 / 8)).float().train()
        runs[name] = (m, torch.optim.Adam(m.parameters(), 1e-2))

    def step(name):
        m, opt = runs[name]
        loss = -m.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = {name: [] for name in runs}
    for _ in range(2):  # warm-up
        step("float64 geometry")
        with float32_geometry():
            step("float32 geometry")
    for _ in range(reps):
        for name in runs:
            t = time.perf_counter()
            if name == "float32 geometry":
                with float32_geometry():
                    for _ in range(steps):
                        step(name)
            else:
                for _ in range(steps):
                    step(name)
            times[name].append((time.perf_counter() - t) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def fmt(cell):
    err, nfe = cell
    if err is None:
        return f"fails ({nfe})"
    return f"{err:.1e}" + (f" ({nfe} NFE)" if nfe is not None else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint", default=None, help="a float32 hyperboloid checkpoint (default: random model)"
    )
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--md", default="docs/precision.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    m32 = model32(a.checkpoint)
    solvers = {"rk4 step 1/8": dict(method="rk4", step_size=1 / 8),
               "dopri5 1e-5": dict(method="dopri5", atol=1e-5, rtol=1e-5)}  # fmt: skip
    acc = {k: accuracy(m32, s) for k, s in solvers.items()}
    t = step_time(a.reps, a.steps)
    cmd = shlex.join(["python", "-m", "benchmarks.precision", *(argv if argv is not None else sys.argv[1:])])
    model = f"checkpoint `{a.checkpoint}`" if a.checkpoint else "a random model (last layer x4)"
    lines = ["# Float32 hyperboloid models far from the origin", "",
             f"Produced by `{cmd}` on {torch.get_num_threads()} thread(s). Model: {model}, float32. "
             "Maximum relative error of `log_prob` over 500 points at each geodesic radius, against the "
             "same model in float64 (dopri5 columns: function evaluations of the float32 solve).", "",
             "| radius | " + " | ".join(f"{g}, {s}" for s in solvers for g in ("float64 geometry", "float32 geometry"))
             + " |", "|---|" + "---|" * (2 * len(solvers))]  # fmt: skip
    for i, r in enumerate(RADII):
        cells = []
        for s in solvers:
            out = acc[s][i][1]
            for g in ("float64 geometry", "float32 geometry"):
                err, nfe = out[g]
                cells.append(fmt((err, nfe if s.startswith("dopri5") or err is None else None)))
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per training step (5gaussians, batch 200, rk4 step 1/8, 1 chart, Adam; median of "
              f"{a.reps} interleaved repetitions of {a.steps} steps): float64 geometry "
              f"{t['float64 geometry']:.4f} s, float32 geometry {t['float32 geometry']:.4f} s "
              f"({100 * (t['float64 geometry'] / t['float32 geometry'] - 1):+.1f}%).", ""]  # fmt: skip
    Path(ROOT / a.md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.precision"))
