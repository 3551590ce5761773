"""The default training step with the exact divergence through flows/fused.py's kernels and through the
generic autograd path, side by side in one process.

    python -m benchmarks.fused [--steps 30] [--reps 8] [--threads 1] [--md docs/benchmark.md]

Per manifold, one model of the default configuration (``train.config.DEFAULT_SETTINGS``: the sphere's 3 charts
at rk4 step 1/3, the hyperboloid's one chart at 1/4; batch 200, Adam lr 1e-2) trains ``reps`` rounds of
``steps`` steps with each path in turn: the C++ kernel (flows/native.py, the CPU's default where a compiler
works), the numpy kernel (``fused.NATIVE = False``: the CPU without a compiler) and the generic autograd path
(``ChartDynamics.fused = False``), so all see the same machine and the same model; the median round is
reported, and the cost of one evaluation of the ODE function forward and backward
(``benchmarks.measure._median_ms``) beside it. Writes its section of the page.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks import sections
from benchmarks.measure import ROOT, _median_ms, build, density, ode_evaluation, step
from flows import fused as fused_mod
from flows import native
from train.config import DEFAULT_SETTINGS
from utils import positive_int, run_cli

#: the paths compared: (ChartDynamics.fused, flows.fused.NATIVE)
PATHS = {"C++": (True, True), "numpy": (True, False), "generic": (False, False)}


def _use(model, path):
    model.dynamics.fused, fused_mod.NATIVE = PATHS[path]


def training_steps(M, steps, reps, paths):
    """Median seconds per training step of each path, in alternating rounds on one model."""
    model = build(M, DEFAULT_SETTINGS[M], torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    xs = [density(M).sample(200, generator=g).float() for _ in range(steps)]
    for path in paths:  # warm-up
        _use(model, path)
        for x in xs[:5]:
            step(model, opt, x)
    times = {path: [] for path in paths}
    try:
        for _ in range(reps):
            for path in paths:
                _use(model, path)
                t0 = time.perf_counter()
                for x in xs:
                    step(model, opt, x)
                times[path].append((time.perf_counter() - t0) / steps)
    finally:
        fused_mod.NATIVE = True
    return {k: statistics.median(v) for k, v in times.items()}


def evaluation_ms(M, paths):
    """Milliseconds of one evaluation forward and backward (batch 200, inside a chart), per path."""
    m, ode = ode_evaluation(M, torch.device("cpu"), v_grad=True)[:2]
    out = {}
    try:
        for path in paths:
            _use(m, path)
            out[path] = _median_ms(ode, torch.device("cpu"))
    finally:
        fused_mod.NATIVE = True
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=positive_int, default=30)
    p.add_argument("--reps", type=positive_int, default=8)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--md", default=str(ROOT / "docs" / "benchmark.md"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cmd = "python -m benchmarks.fused" + "".join(
        f" --{k} {v}" for k, v in (("steps", a.steps), ("reps", a.reps), ("threads", a.threads))
    )
    paths = [p for p in PATHS if p != "C++" or native.library() is not None]
    lines = ["## The fused evaluation", "",
             f"Produced by `{cmd}` (torch {torch.__version__}, {a.threads} thread(s), CPU). The default training "
             "step and one evaluation of the ODE function (forward and backward, batch 200) with the exact "
             "divergence through `flows/fused.py` (one autograd node, its reverse pass written out) in its C++ "
             "kernel (`flows/fused_kernel.cpp` through `flows/native.py`, the CPU's default where a C++ compiler "
             "works) and its numpy kernel (`MCNF_NATIVE=0`, or no compiler), and through the generic autograd "
             "path (`ChartDynamics.fused = False`), in alternating rounds on one model; medians, milliseconds."
             + ("" if "C++" in paths else " (No C++ kernel on this machine: its columns are missing.)"), "",
             "| manifold | " + " | ".join(f"step {p}" for p in paths) + " | " + " | ".join(f"evaluation {p}" for p in paths)
             + " | evaluation generic / C++ |", "|---" * (2 * len(paths) + 2) + "|"]  # fmt: skip
    for M in ("Sphere", "Hyperboloid"):
        s, e = training_steps(M, a.steps, a.reps, paths), evaluation_ms(M, paths)
        ratio = f"{e['generic'] / e['C++']:.2f}x" if "C++" in e else ""
        lines.append(f"| {M} | " + " | ".join(f"{s[p] * 1e3:.2f}" for p in paths) + " | "
                     + " | ".join(f"{e[p]:.3f}" for p in paths) + f" | {ratio} |")  # fmt: skip
        print(lines[-1], flush=True)
    from scripts.pages import replace_block

    replace_block(Path(a.md), *sections.FUSED, [*lines, ""], before=sections.DIMENSIONS[0])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.fused"))
