"""Reproduce the paper's density experiments and write docs/reproduction.md and figures.

    python -m scripts.reproduce [--epochs 5000] [--lr 1e-2] [--dev cuda] [--only Sphere/4wrapped ...]

Trains every paper density with main_density.py (resuming unfinished runs from their checkpoints),
measures each model's quadrature integral, runs the paper's antipodal experiment (charts = 1 vs 16
vs adaptive), and writes:
  docs/reproduction.md   table: manifold, dataset, epochs, test NLL, entropy, KL +- stderr,
                         integral, NFE, wall seconds, command
  docs/reproduction.png  paper-style grid (rows: datasets; columns: ground truth, model)
  docs/antipodal.png     ground truth and the three antipodal models
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from scripts.baselines import BLOCK_BEGIN, BLOCK_END, main_baselines
from scripts.pages import is_number, replace_block, table_rows, write_page
from scripts.runs import cached, integral, run_one  # noqa: F401  (re-exported)
from train.objectives import get_objective
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]

PAPER = [("Hyperboloid", "1wrapped"), ("Hyperboloid", "5gaussians"), ("Hyperboloid", "bigcheckerboard"),
         ("Hyperboloid", "mult_wrapped"), ("Sphere", "1wrapped"), ("Sphere", "4wrapped"),
         ("Sphere", "bigcheckerboard")]  # fmt: skip
ANTIPODAL = [
    ("1 at the origin", ["--charts", "1", "--chart_center", "origin"]),  # the paper's single chart
    ("1", ["--charts", "1"]),  # one chart per trajectory, centred at its start point
    ("16", ["--charts", "16"]),
    ("adaptive", ["--charts", "adaptive"]),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--objective",
        choices=["mle", "fm"],
        default="mle",
        help="fm: flow matching with main_density.py's fm defaults; writes docs/reproduction_fm.md",
    )
    p.add_argument("--epochs", type=int, default=5000)
    p.add_argument("--lr", default=None, help="default 1e-2 (mle), main_density.py's fm default (fm)")
    p.add_argument("--dev", default="cuda")
    p.add_argument("--runs", default=None, help="folder for the runs (default results/reproduce[_fm])")
    p.add_argument("--only", nargs="*", default=None, help="subset in this order, e.g. Sphere/4wrapped")
    p.add_argument("--antipodal_epochs", type=int, default=1000)
    p.add_argument("--no_antipodal", action="store_true")
    p.add_argument("--res", type=int, default=150, help="figure grid resolution")
    p.add_argument("--md", default=None, help="default docs/reproduction.md, docs/reproduction_fm.md (fm)")
    p.add_argument("--assemble", action="store_true", help="train nothing; tabulate the finished runs")
    p.add_argument("--no_grid", action="store_true", help="write the tables only, not the figures")
    p.add_argument(
        "--force", action="store_true", help="rewrite the page even when it would hold fewer results"
    )
    p.add_argument("--baselines", action="store_true",
                   help="train the paper's baselines beside the MCNF at every --budgets and write docs/baselines.md "
                        "(see scripts/baselines.py)")  # fmt: skip
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 50, 300, 1000, 5000, 25000],
                   help="--baselines: training budgets in epochs of 200 samples")  # fmt: skip
    p.add_argument("--mcnf_max", type=int, default=5000,
                   help="--baselines: the MCNF's largest budget (the paper's 1M samples)")  # fmt: skip
    a = p.parse_args(argv)
    fm = not get_objective(a.objective).solves_ode  # flow matching: its own pages, folders and budgets
    if a.baselines and fm:
        p.error(
            "--baselines compares maximum-likelihood runs (the baselines have no flow-matching objective)"
        )
    a.runs = a.runs or ("results/reproduce_fm" if fm else "results/reproduce")
    a.md = a.md or ("docs/reproduction_fm.md" if fm else "docs/reproduction.md")
    if a.lr is None and not fm:
        a.lr = "1e-2"
    lr = ["--lr", a.lr] if a.lr else []
    if fm:
        a.no_antipodal = True  # the antipodal experiment is about charts in maximum-likelihood training
    runs = ROOT / a.runs
    runs.mkdir(parents=True, exist_ok=True)
    todo = PAPER if a.only is None else [pd for o in a.only for pd in PAPER if f"{pd[0]}/{pd[1]}" == o]
    if a.baselines:
        return main_baselines(todo, a, ROOT)
    rows, dirs = [], []
    with open(runs / "log.txt", "a") as log:
        for M, ds in todo:
            out = runs / f"{M}_{ds}_{a.epochs}"
            obj = ["--objective", "fm"] if fm else []
            m, cmd, err = run_one(out, ["--M", M, "--dataset", ds, *obj, *lr, "--dev", a.dev,
                                        "--eval_freq", str(a.epochs if fm else max(a.epochs // 5, 1))], a.epochs, log,
                                       not a.assemble)  # fmt: skip
            rows.append((M, ds, a.epochs, m, None if m is None else integral(out), cmd, err))
            if m is not None:
                dirs.append(out)
        anti = []
        if not a.no_antipodal:
            for label, extra in ANTIPODAL:
                out = runs / f"antipodal_charts-{label.replace(' ', '-')}_{a.antipodal_epochs}"
                m, cmd, err = run_one(out, ["--M", "Sphere", "--dataset", "antipodal", "--conc", "3", "--lr", a.lr,
                                            "--dev", a.dev, *extra], a.antipodal_epochs, log,
                                           not a.assemble)  # fmt: skip
                anti.append(
                    (label, a.antipodal_epochs, m, None if m is None else integral(out), cmd, err, out)
                )

    page = ROOT / a.md
    kept = page.read_text() if page.is_file() else ""
    failed = [
        f"{M}/{ds}: {err}" for M, ds, _, m, _, _, err in rows if m is None and not err.startswith("not run")
    ]
    failed += [f"antipodal {lab}: {err}" for lab, _, m, _, _, err, _ in anti
               if m is None and not err.startswith(("not run", "refused")) and "chart_center='origin'" not in err]  # fmt: skip
    if not write_markdown(page, rows, anti, a):
        print("\n".join(failed), file=sys.stderr)
        return 1
    if BLOCK_BEGIN in kept and BLOCK_END in kept:  # the --baselines block survives a rewrite of the table
        block = kept.split(BLOCK_BEGIN, 1)[1].split(BLOCK_END, 1)[0].strip("\n").splitlines()
        replace_block(page, BLOCK_BEGIN, BLOCK_END, block, before="<!-- both objectives side by side")
    if a.md in ("docs/reproduction.md", "docs/reproduction_fm.md"):  # the default pages
        side_by_side(ROOT / "docs/reproduction.md", ROOT / "docs/reproduction_fm.md")
    from scripts.paper_grid import paper_grid, runs_from_dirs

    with torch.no_grad():
        if dirs and not a.no_grid:
            grid = "docs/reproduction_fm.png" if fm else "docs/reproduction.png"
            paper_grid(runs_from_dirs(dirs), ROOT / grid, res=a.res)
        ok = [(label, out) for label, _, m, _, _, _, out in anti if m is not None]
        if ok and not a.no_grid:
            loaded = runs_from_dirs([o for _, o in ok])
            loaded = [(f"antipodal, charts={lab}", *r[1:]) for (lab, _), r in zip(ok, loaded, strict=True)]
            paper_grid(loaded, ROOT / "docs/antipodal.png", res=a.res)
    print(f"wrote {a.md}")
    if failed:
        print(f"{len(failed)} run(s) failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def training_solver_kl(out: Path, n: int = 20_000, seed: int = 99):
    """``E_p[log p - log q_train]`` +- stderr: the KL of the final model as its *training* solver sees it
    (fixed step, the float32 weights, the step the solver guard ended with), on ``n`` fresh samples of
    the true density. Negative beyond its noise means the model exploits the training solver's error
    (its training NLL is below the entropy); cached in ``train_solver_kl.json`` beside the run."""

    def compute():
        from data import get_density
        from flows import load_model, model_log_prob, solve_copy

        model = load_model(out / "checkpoint.pt")  # its training solve, in float32, as in training
        den = get_density(
            model.manifold.name, json.loads((out / "metrics.json").read_text())["args"]["dataset"]
        )
        x = den.sample(n, generator=torch.Generator().manual_seed(seed))
        d = den.log_prob(x) - model_log_prob(
            solve_copy(model, train=True, dtype=torch.float32), x, chunk=2000
        )
        return {
            "kl": float(d.mean()),
            "kl_stderr": float(d.std() / n**0.5),
            "step_size": model.train_solver.step_size,
        }

    c = cached(out, "train_solver_kl.json", compute)
    return c["kl"], c["kl_stderr"], c["step_size"]


def drift_lines(rows, runs: Path):
    """The "No drift" table: KL at 2/5 of the run against the end, and the training-solver KL."""
    lines = ["## No drift at the paper's budget", "",
             "Criteria (issue #15): no density's KL may rise by more than 2 of its standard errors between "
             "epoch 2000 and the end, and no training NLL may lie below the entropy by more than the KL's "
             "standard error. KL at 2000 and at the end: exact test KL from `history.jsonl` (the same 20,000 "
             "test points). Training-solver KL: `E_p[log p - log q]` with q the final model under its "
             "training solver (fixed step, float32 weights, the step the solver guard ended with) on 20,000 "
             "fresh samples of the true density (`scripts.reproduce.training_solver_kl`): the training NLL "
             "minus the entropy, without batch noise. Guard: the epochs at which the solver guard "
             "(`--solver_guard`, default 0.005 nats, checked every `--guard_freq` = 100 epochs) halved "
             "the step.", "",
             "| manifold | dataset | KL at 2000 | KL at end | rise / stderr | training-solver KL | guard: step refined at | "
             "final step | both criteria |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for M, ds, ep, m, _, _, _ in rows:
        if m is None:
            continue
        out = runs / f"{M}_{ds}_{ep}"
        if not (out / "history.jsonl").is_file() or not (out / "checkpoint.pt").is_file():
            continue
        hist = [json.loads(h) for h in (out / "history.jsonl").read_text().splitlines() if h.strip()]
        at = {h["epoch"]: h for h in hist if "kl" in h}
        mid = at.get(2 * ep // 5)
        if mid is None:
            continue
        tk, tse, step = training_solver_kl(out)
        refined = [f"{g['epoch']} (-> 1/{round(1 / g['refined_to'])})" for g in m.get("guard_events", [])]
        rise = (m["kl"] - mid["kl"]) / m["kl_stderr"]
        ok = rise <= 2 and tk >= -m["kl_stderr"]
        lines.append(f"| {M} | {ds} | {mid['kl']:.4f} +- {mid['kl_stderr']:.4f} | {m['kl']:.4f} +- "
                     f"{m['kl_stderr']:.4f} | {rise:+.1f} | {tk:+.4f} +- {tse:.4f} | {', '.join(refined) or 'never'} | "
                     f"1/{round(1 / step)} | {'yes' if ok else 'NO'} |")  # fmt: skip
    return [*lines, ""]


SIDE_BEGIN = "<!-- both objectives side by side: written by python -m scripts.reproduce -->"
SIDE_END = "<!-- end of both objectives side by side -->"


def side_by_side(mle_md, fm_md):
    """Rewrite the block of docs/reproduction.md that puts the two objectives' rows side by side.

    Built from both pages' tables (manifold, dataset, epochs, test NLL, entropy, KL, integral, NFE,
    train s, command), so either objective's run refreshes it.
    """
    if not mle_md.is_file():
        return
    mle, fm = (table_rows(md, PAPER, n_key=2, min_cells=10, stop=SIDE_BEGIN) for md in (mle_md, fm_md))
    lines = ["## Both objectives", "",
             "KL to the exact density +- stderr and training seconds, maximum likelihood (the table above) "
             "beside flow matching ([reproduction_fm.md](reproduction_fm.md), main_density.py's "
             "`--objective fm` defaults), same test samples and exact-likelihood scoring.", "",
             "| manifold | dataset | maximum likelihood: epochs | KL | train s | flow matching: epochs | KL "
             "| train s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in PAPER:
        a, b = mle.get(key), fm.get(key)
        if a is None and b is None:
            continue
        cells = [f"{r[2]} | {r[5]} | {r[8]}" if r and r[3] and not r[3].startswith(("not run", "failed")) else
                 "- | not run | " for r in (a, b)]  # fmt: skip
        lines.append(f"| {key[0]} | {key[1]} | {cells[0]} | {cells[1]} |")
    replace_block(mle_md, SIDE_BEGIN, SIDE_END, [*lines, ""], before="## The antipodal experiment")


def _fmt_row(name_cells, epochs, m, integ, cmd, err):
    cmd_s = "`" + shlex.join(["python", *cmd[1:]]) + "`"
    if m is None:
        status = err if err.startswith("not run") else f"failed: {err}"
        if "chart_center='origin'" in err:
            status = f"refused: {err}"
        return f"| {' | '.join(name_cells)} | {epochs} | {status} | | | | | | {cmd_s} |"
    return (f"| {' | '.join(name_cells)} | {epochs} | {m['test_nll']:.4f} | {m['entropy']:.4f} | "
            f"{m['kl']:.4f} +- {m['kl_stderr']:.4f} | {integ:.4f} | {m['nfe_forward']:.0f} / {m['nfe_backward']:.0f} | "
            f"{m['train_seconds']:.0f} | {cmd_s} |")  # fmt: skip


def write_markdown(path, rows, anti, a):
    head = ("| manifold | dataset | epochs | test NLL | entropy | KL +- stderr | integral | NFE fwd / bwd per step | "
            "train s | command |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    fm = not get_objective(a.objective).solves_ode  # flow matching: its own pages, folders and budgets
    flags = f"--objective fm --epochs {a.epochs}" + (f" --lr {a.lr}" if a.lr else "") if fm else (
        f"--epochs {a.epochs} --lr {a.lr}")  # fmt: skip
    no_anti = getattr(a, "no_antipodal", False)
    anti_flag = "" if fm else " --no_antipodal" if no_anti else f" --antipodal_epochs {a.antipodal_epochs}"
    title = (
        "# The paper's densities trained by flow matching"
        if fm
        else "# Reproduction of the paper's density experiments"
    )
    lines = [title, "",
             f"Produced by `python -m scripts.reproduce {flags} --dev {a.dev}{anti_flag}` "
             "(each run is a `main_density.py` command, shown in the last column). Test NLL, entropy and KL on "
             "20,000 held-out samples of the exact density (KL = NLL - entropy, stderr of the paired "
             "differences); integral: quadrature of the model density over the manifold (sphere: midpoint rule "
             "200x400 in (theta, phi); hyperboloid: geodesic polar grid to r = 8). Times are CPU seconds of "
             "training on this project's 2-core machine unless the command says otherwise; runs shared the two cores "
             "with up to three other jobs, so equal work can show up to 2x different times. Maximum-likelihood "
             "runs of 1000 epochs or more compiled their ODE function (`--compile auto` until 2026-12-04); the "
             "compilation (3-4 s with a warm inductor cache, up to 30 s with a cold one) is part of train s. Since "
             "then the default models train eagerly through flows/fused.py's C++ kernel on a CPU with a C++ "
             "compiler: the same metrics in less time (H^2 5gaussians 95 s, S^2 4wrapped 78 s; README)."
             + (" Flow matching solves no ODE in training (NFE 0 / 0); evaluation is the same exact "
                "likelihood as for maximum likelihood (dopri5, float64, atol = rtol = 1e-5)." if fm else ""),
             "", head]  # fmt: skip
    lines += [_fmt_row([M, ds], ep, m, integ, cmd, err) for M, ds, ep, m, integ, cmd, err in rows]
    lines += ["", f"![paper-style grid]({'reproduction_fm.png' if fm else 'reproduction.png'})", ""]
    if not fm:
        lines += drift_lines(rows, ROOT / getattr(a, "runs", "results/reproduce"))
    old = Path(path).read_text() if Path(path).is_file() else ""
    if not anti and "## The antipodal experiment" in old:  # --no_antipodal keeps the section already there
        kept = old.split("## The antipodal experiment", 1)[1].strip("\n")
        note = ("Kept from an earlier run of this script (this one had `--no_antipodal`); its commands "
                "predate the solver guard's default, so repeating them exactly needs `--solver_guard 0`.")  # fmt: skip
        if not kept.startswith(note):
            kept = note + "\n\n" + kept
        lines += ["## The antipodal experiment", "", kept, ""]
    if anti:
        lines += ["## The antipodal experiment", "",
                  "Target: vMF with concentration 30 at the antipode of the base's mean; base vMF with "
                  "concentration 3 (`--conc 3`). The mass must travel about pi, the sphere's injectivity "
                  "radius; the paper reports that one chart fails and 16 charts learn the density. "
                  "`1 at the origin` is a single chart at the base's mean, whose cut locus is the target's "
                  "mode: the code refuses it (exit 2, message in the table) instead of failing with a "
                  "non-finite state mid-training. `1` is one chart per trajectory centred at its start "
                  "point (this project's default chart placement); a trajectory that passes 3 pi/4 in it is "
                  "re-centred (fixed-chart guard). The adaptive row was trained with exact gradients "
                  "across chart switches (earlier versions of this table used wrong ones). Every model "
                  "leaves a dark spot at the target's mode: one point there is left on the far side of the "
                  "sphere while the mass around it is carried across (in the adaptive model the mode "
                  "(1, 0, 0) maps to (0.89, 0.42, 0.18), its neighbours at distance 0.2 to the base's side), "
                  "a defect that 600 epochs do not remove.", "",
                  head.replace("| manifold | dataset |", "| charts |").replace("|---|---|---|", "|---|---|", 1)]  # fmt: skip
        lines += [_fmt_row([lab], ep, m, integ, cmd, err) for lab, ep, m, integ, cmd, err, _ in anti]
        lines += ["", "![antipodal](antipodal.png)", ""]
    return write_page(Path(path), "\n".join(lines) + "\n", count_results, force=getattr(a, "force", False))


def count_results(text: str) -> int:
    """Finished runs in a reproduction page's run tables (rows with a command whose test NLL is a number)."""
    n = 0
    for line in text.split(SIDE_BEGIN)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            line.startswith("|")
            and len(cells) >= 9
            and cells[-1].startswith("`python")
            and is_number(cells[-7])
        ):
            n += 1
    return n


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m scripts.reproduce"))
