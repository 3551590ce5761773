"""Kinetic-energy and Jacobian-Frobenius regularization: evaluations per step of an adaptive solver.

    python -m benchmarks.regularization [--epochs 1000] [--weights 0 0.01 0.1] [--threads 1]

Finlay et al. (2020), "How to train your neural ODE", add ``lambda_K int |f|^2 dt`` and
``lambda_J int |grad f|_F^2 dt`` to the loss so that the learned dynamics are simpler and an
adaptive solver needs fewer evaluations. This script measures that here: for each manifold's
demo density it trains ``main_density.py`` with the adaptive dopri5 solver (atol = rtol = 1e-3, the
reference's hyperboloid setting, closed-form exact divergence, direct backprop) and
``--kinetic W --jacobian W`` for each ``W`` of ``--weights`` (0: none), and reports the mean
evaluations per step (forward), the training seconds and the exact test KL. Runs are kept in
``results/regularization`` (finished ones are reused) and the table is written into
docs/benchmark.md between its markers.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from benchmarks import sections
from scripts.pages import replace_block
from scripts.runs import run_one
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = sections.REGULARIZATION
RUNS = [("Hyperboloid", "5gaussians", []), ("Sphere", "4wrapped", ["--charts", "4"])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.01, 0.1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="results/regularization")
    p.add_argument("--md", default="docs/benchmark.md")
    a = p.parse_args(argv)
    rows = []
    for M, ds, extra in RUNS:
        for w in a.weights:
            out = ROOT / a.runs / f"{M}_{ds}_w{w:g}_{a.epochs}"
            flags = ["--M", M, "--dataset", ds, "--lr", "1e-2", "--dev", "cpu", "--epochs", str(a.epochs),
                     "--eval_freq", str(a.epochs), "--solver", "dopri5", "--atol", "1e-3", "--rtol", "1e-3",
                     "--kinetic", f"{w:g}", "--jacobian", f"{w:g}", *extra]  # fmt: skip
            m, cmd, err = run_one(out, flags, threads=a.threads)  # (it adds --out and --quiet)
            rows.append((M, ds, w, m, err, ["python", *cmd[1:]]))
    lines = ["## Kinetic and Jacobian regularization", "",
             f"Produced by `python -m benchmarks.regularization --epochs {a.epochs} --weights "
             f"{' '.join(f'{w:g}' for w in a.weights)} --threads {a.threads}`. Training with the adaptive dopri5 "
             "solver (atol = rtol = 1e-3, exact closed-form divergence, direct backprop), lr 1e-2, batch 200, "
             f"{a.epochs} epochs, `--kinetic W --jacobian W` (Finlay et al. 2020; W = 0: none). NFE: forward "
             "evaluations per training step, mean over the run; KL: exact test KL at the end (dopri5 at 1e-5, "
             "float64, 20,000 points). Train s includes the compilation of the ODE function (`--compile auto`) and "
             "depends on what else ran on the machine; the evaluation counts do not.",
             "", "| manifold | dataset | W | NFE per step | train s | KL +- stderr | command |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for M, ds, w, m, err, cmd in rows:
        c = "`" + shlex.join(cmd) + "`"
        if m is None:
            lines.append(f"| {M} | {ds} | {w:g} | failed: {err} | | | {c} |")
        else:
            lines.append(f"| {M} | {ds} | {w:g} | {m['nfe_forward']:.1f} | {m['train_seconds']:.0f} | "
                         f"{m['kl']:.4f} +- {m['kl_stderr']:.4f} | {c} |")  # fmt: skip
    lines.append("")
    for M, ds, _ in RUNS:
        got = {w: m for MM, _, w, m, _, _ in rows if MM == M and m is not None}
        if 0.0 not in got:
            continue
        z = got[0.0]
        parts = [f"W = {w:g}: {m['nfe_forward'] / z['nfe_forward'] - 1:+.0%} evaluations per step, KL "
                 f"{m['kl']:.4f} against {z['kl']:.4f} ({(m['kl'] - z['kl']) / (m['kl_stderr'] ** 2 + z['kl_stderr'] ** 2) ** 0.5:+.1f} "
                 "combined stderrs)" for w, m in got.items() if w]  # fmt: skip
        lines.append(f"- {M} {ds}: " + "; ".join(parts) + ".")
    md = ROOT / a.md
    replace_block(md, BEGIN, END, [*lines, ""])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.regularization"))
