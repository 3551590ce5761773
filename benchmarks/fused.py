"""The default training step with the exact divergence through flows/fused.py and through the generic
autograd path, side by side in one process.

    python -m benchmarks.fused [--steps 30] [--reps 8] [--threads 1] [--md docs/benchmark.md]

Per manifold, one model of the default configuration (``train.config.DEFAULT_SETTINGS``: the sphere's 3 charts
at rk4 step 1/3, the hyperboloid's one chart at 1/4; batch 200, Adam lr 1e-2) trains ``reps`` rounds of
``steps`` steps with ``ChartDynamics.fused`` on and off in alternation, so both see the same machine and
the same model; the median round is reported, and the cost of one evaluation of the ODE function forward
and backward (``benchmarks.measure._median_ms``) beside it. Writes its section of the page.
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
from train.config import DEFAULT_SETTINGS
from utils import positive_int, run_cli


def training_steps(M, steps, reps):
    """Median seconds per training step, fused and generic, alternating rounds on one model."""
    model = build(M, DEFAULT_SETTINGS[M], torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    xs = [density(M).sample(200, generator=g).float() for _ in range(steps)]
    for x in xs[:10]:  # warm-up
        step(model, opt, x)
    times = {True: [], False: []}
    for _ in range(reps):
        for fused in (True, False):
            model.dynamics.fused = fused
            t0 = time.perf_counter()
            for x in xs:
                step(model, opt, x)
            times[fused].append((time.perf_counter() - t0) / steps)
    return {("fused" if k else "generic"): statistics.median(v) for k, v in times.items()}


def evaluation_ms(M):
    """Milliseconds of one evaluation forward and backward (batch 200, inside a chart), fused and generic."""
    m, ode = ode_evaluation(M, torch.device("cpu"), v_grad=True)[:2]
    out = {}
    for fused in (True, False):
        m.dynamics.fused = fused
        out["fused" if fused else "generic"] = _median_ms(ode, torch.device("cpu"))
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
    lines = ["## The fused evaluation", "",
             f"Produced by `{cmd}` (torch {torch.__version__}, {a.threads} thread(s), CPU). The default training "
             "step and one evaluation of the ODE function (forward and backward, batch 200) with the exact "
             "divergence through `flows/fused.py` (one autograd node, its reverse pass written out, numpy "
             "views on the CPU) and through the generic autograd path (`ChartDynamics.fused = False`), "
             "alternating on one model; medians.", "",
             "| manifold | step fused (ms) | step generic (ms) | speed-up | evaluation fused (ms) | "
             "evaluation generic (ms) | speed-up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for M in ("Sphere", "Hyperboloid"):
        s, e = training_steps(M, a.steps, a.reps), evaluation_ms(M)
        lines.append(f"| {M} | {s['fused'] * 1e3:.2f} | {s['generic'] * 1e3:.2f} | {s['generic'] / s['fused']:.2f}x | "
                     f"{e['fused']:.3f} | {e['generic']:.3f} | {e['generic'] / e['fused']:.2f}x |")  # fmt: skip
        print(lines[-1], flush=True)
    from scripts.pages import replace_block

    replace_block(Path(a.md), *sections.FUSED, [*lines, ""], before=sections.DIMENSIONS[0])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.fused"))
