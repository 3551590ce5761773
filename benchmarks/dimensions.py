"""How the MCNF's cost and quality grow with the dimension n of S^n and H^n.

    python -m benchmarks.dimensions [--dims 2 3 5 10 20 50] [--epochs 200] [--threads 1] [--dev cpu]

For each manifold and n, side by side in one process with this project's default solver and
chart settings (train/config.py DEFAULT_SETTINGS), batch 200, float32, the reference's 32x3 tanh
field and lr 1e-2:

- seconds per training step and function evaluations per step, with the exact divergence (n
  forward-mode directions per evaluation) and with Hutchinson's estimator (one direction), as the
  median over interleaved repetitions;
- the exact test KL (dopri5 at 1e-5 in float64, exact divergence, 2000 held-out points, with its
  standard error) after ``--epochs`` training steps on ``1wrapped`` and on the multi-mode density
  (``5gaussians`` on H^n, ``4wrapped`` on S^n; data/densities.py), for both divergences.

Rows are cached in ``--json`` as they finish, so an interrupted run resumes where it stopped.
Writes the section "Dimensions" of docs/benchmark.md (the rest of that page is benchmarks.benchmark's).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks import sections
from benchmarks.measure import exact_kl, step, sync, time_interleaved
from scripts.pages import replace_block
from train.config import DEFAULT_SETTINGS
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
MULTI = {"Sphere": "4wrapped", "Hyperboloid": "5gaussians"}
BEGIN, END = sections.DIMENSIONS


def build(M, n, divergence, device, seed=0):
    from flows import MCNF

    s = DEFAULT_SETTINGS[M]
    torch.manual_seed(seed)
    m = MCNF(M, dim=n, charts=s["charts"], chart_center=s["chart_center"], divergence=divergence,
             train_solver=dict(method=s["solver"], step_size=s["step_size"], atol=s["atol"], rtol=s["rtol"]))  # fmt: skip
    return m.to(device).train()


def time_steps(M, n, device, reps, steps):
    """Median seconds per step and mean NFE per step, exact and Hutchinson, interleaved."""
    from data import get_density

    den = get_density(M, "1wrapped", dim=n)
    g = torch.Generator().manual_seed(1)
    batches = [den.sample(200, generator=g).to(device, torch.float32) for _ in range(steps)]
    runs = {div: (build(M, n, div, device), batches) for div in ("exact", "hutchinson")}
    return time_interleaved(runs, reps, device)


def kl_after(M, n, dataset, divergence, device, epochs, n_test=2000, lr=1e-2):
    """Train ``epochs`` steps (batch 200) and return the exact test KL, its stderr and the seconds."""
    from data import get_density

    den = get_density(M, dataset, dim=n)
    model = build(M, n, divergence, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        step(model, opt, den.sample(200, generator=g).to(device, torch.float32))
    sync(device)
    seconds = time.perf_counter() - t0
    x_test = den.sample(n_test, generator=torch.Generator().manual_seed(123))
    t1 = time.perf_counter()
    kl, kl_stderr = exact_kl(model, den, x_test, device)
    return dict(kl=kl, kl_stderr=kl_stderr, train_seconds=seconds, eval_seconds=time.perf_counter() - t1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3, 5, 10, 20, 50])
    p.add_argument(
        "--manifolds", nargs="+", default=["Sphere", "Hyperboloid"], choices=["Sphere", "Hyperboloid"]
    )
    p.add_argument("--epochs", type=int, default=200, help="training steps before the KL is measured")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dev", default="cpu")
    p.add_argument("--json", default="benchmarks/results_dimensions.json")
    p.add_argument("--md", default="docs/benchmark.md")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.dev)
    path = ROOT / a.json
    res = json.loads(path.read_text()) if path.is_file() else {}
    settings = dict(
        epochs=a.epochs, threads=torch.get_num_threads(), device=str(device), torch=torch.__version__
    )
    if res.get("settings", settings) != settings:
        res = {}  # another budget or machine: start over
    res["settings"] = settings
    res["command"] = shlex.join(
        ["python", "-m", "benchmarks.dimensions", *(sys.argv[1:] if argv is None else argv)]
    )
    rows = res.setdefault("rows", {})
    solvers = res.setdefault("solvers", {})
    for M in ("Sphere", "Hyperboloid"):  # a manifold whose default solver changed is measured again
        if solvers.get(M) != solver_text(M):
            for key in [k for k in rows if k.startswith(M + "/")]:
                del rows[key]
            solvers[M] = solver_text(M)
    for M in a.manifolds:
        for n in a.dims:
            key = f"{M}/{n}"
            row = rows.setdefault(key, {})
            if "steps" not in row:
                print(f"timing {key} ...", flush=True)
                row["steps"] = time_steps(M, n, device, a.reps, a.steps)
                path.write_text(json.dumps(res, indent=2) + "\n")
            for ds in ("1wrapped", MULTI[M]):
                for div in ("exact", "hutchinson"):
                    k = f"{ds}/{div}"
                    if k not in row:
                        print(f"KL {key} {k} ...", flush=True)
                        row[k] = kl_after(M, n, ds, div, device, a.epochs)
                        path.write_text(json.dumps(res, indent=2) + "\n")
    write(ROOT / a.md, res)
    print(f"wrote {a.md}")
    return 0


def summary(res):
    """Sentences read off the rows: where Hutchinson's estimator starts to win, and what it costs in KL."""
    out = []
    for M in ("Sphere", "Hyperboloid"):
        rows = [
            (int(k.split("/")[1]), r)
            for k, r in res["rows"].items()
            if k.startswith(M + "/") and "steps" in r
        ]
        if not rows:
            continue
        speed = [
            (n, r["steps"]["exact"]["sec_per_step"] / r["steps"]["hutchinson"]["sec_per_step"])
            for n, r in rows
        ]
        wins = [n for n, x in speed if x >= 1.25]
        diffs = []
        for n, r in rows:
            for ds in ("1wrapped", MULTI[M]):
                e, h = r.get(f"{ds}/exact"), r.get(f"{ds}/hutchinson")
                if e and h:
                    se = (e["kl_stderr"] ** 2 + h["kl_stderr"] ** 2) ** 0.5
                    diffs.append(
                        f"{ds} n = {n}: {h['kl'] - e['kl']:+.3f} ({(h['kl'] - e['kl']) / se:+.1f} combined stderrs)"
                    )
        first = f"from n = {min(wins)}" if wins else "at no n measured"
        out.append(f"- {M}: Hutchinson's step is at least 1.25x faster than the exact divergence's {first} "
                   f"(speed-ups {', '.join(f'n = {n}: {x:.2f}x' for n, x in speed)}). Its KL minus the exact "
                   f"divergence's after the same steps: {'; '.join(diffs) or 'not measured'}.")  # fmt: skip
    return out


def solver_text(M):
    """One manifold's solver and charts, in words (from DEFAULT_SETTINGS, which :func:`build` uses)."""
    d = DEFAULT_SETTINGS[M]
    charts = f"{d['charts']} chart" + ("s" if d["charts"] > 1 else "")
    return f"{M.lower()}: {d['solver']} step 1/{round(1 / d['step_size'])}, {charts}"


def settings_text():
    return f"{solver_text('Sphere')}; {solver_text('Hyperboloid')}; no solver guard"


def write(md, res):
    s = res["settings"]
    lines = ["## Dimensions", "",
             f"Produced by `{res['command']}` (torch {s['torch']}, {s['threads']} thread(s), {s['device']}). "
             f"Default solver and charts ({settings_text()}), "
             "32x3 tanh field, batch 200, float32, lr 1e-2. Seconds per training step: median over interleaved "
             "repetitions; NFE: function evaluations per step, forward / backward. KL: exact test KL to the true "
             f"density after {s['epochs']} steps (dopri5 at 1e-5, float64, exact divergence, 2000 held-out "
             "points, +- its standard error); multi-mode: 5gaussians on H^n (2n + 1 modes), 4wrapped on S^n "
             "(2n modes). Training seconds are in the JSON file beside the script.", "",
             "| manifold | n | s / step exact | s / step Hutchinson | Hutchinson speed-up | NFE fwd / bwd "
             "| 1wrapped KL exact | 1wrapped KL Hutchinson | multi-mode KL exact | multi-mode KL Hutchinson |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def kl(r):
        return f"{r['kl']:.4f} +- {r['kl_stderr']:.4f}" if r else ""

    for key, row in res["rows"].items():
        M, n = key.split("/")
        st = row.get("steps")
        if not st:
            continue
        e, h = st["exact"], st["hutchinson"]
        multi = MULTI[M]
        lines.append(f"| {M} | {n} | {e['sec_per_step']:.4f} | {h['sec_per_step']:.4f} | "
                     f"{e['sec_per_step'] / h['sec_per_step']:.2f}x | {e['nfe_forward']:.0f} / {e['nfe_backward']:.0f} | "
                     f"{kl(row.get('1wrapped/exact'))} | {kl(row.get('1wrapped/hutchinson'))} | "
                     f"{kl(row.get(multi + '/exact'))} | {kl(row.get(multi + '/hutchinson'))} |")  # fmt: skip
    lines += ["", *summary(res)]
    if not md.is_file():
        md.write_text("# Benchmark\n")
    replace_block(md, BEGIN, END, [*lines, ""])


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.dimensions"))
