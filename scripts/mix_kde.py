"""A trained flow mixed with a kernel density estimate of its training split, the weight chosen on validation.

    python -m scripts.mix_kde RUN_DIR [RUN_DIR ...] [--ladder_max K] [--json FILE] [--md PAGE]
                              [--checks SPLIT --figures DIR --res N] [--threads N]
    python -m scripts.mix_kde RUN_DIR [RUN_DIR ...] --kappas K [K ...] --weight W   (comparisons, printed)

For each finished ``main_density.py`` run on an Earth catalogue, its best-validation model (``best.pt``)
``p_flow`` and the multiscale von Mises-Fisher KDE ``p_kde`` of the same training split (the ladder of
concentrations chosen on the validation split by ``train.tasks.EarthTask.kde_base``, as ``--base kde`` and
docs/earth_kde.md choose it), combined as the mixture

    p = (1 - w) p_flow + w p_kde,

an exact density (both parts are normalized), with the one weight ``w`` chosen by the validation NLL, which
is convex in ``w`` (a grid of 1/200, then refined). The test split is scored once, after the choice. The
flow is scored with its evaluation solver (dopri5, float64, ``--eval_tol``), the KDE in closed form.

Printed per run: validation and test NLL of the flow, the KDE and the mixture, and the test NLL over the
test events that repeat no training event ("novel": farther than 1e-6 rad, scripts.earth_kde), which
separates what the mixture gains at repeated coordinates (where the likelihood is unbounded below,
docs/earth_kde.md) from what it gains elsewhere. ``--ladder_max K`` restricts the KDE's ladders to those
whose sharpest kernel is at most ``K`` (e.g. ``1.1e5``, kernels of 19 km and broader: none of the
kernels of a few km that only the repeated coordinates reward).

For the runs of split ``--checks`` (split 0 by default), what docs/earth.md shows for every model: the
mixture's integral over the sphere by importance sampling (``flows.importance_integral``, the proposal
placed at samples of the mixture itself; it must be 1), its test NLL with the flow solved at its evaluation
tolerance and at a 100x tighter one (they must agree to 0.01 nats), and with ``--figures DIR`` its density
map, ``DIR/earth_mix_<dataset>.png`` (``earth_mix_<dataset>_max<K>.png`` with ``--ladder_max K``): drawn by
``scripts.earth_maps.draw_map`` through the mixture (the calibrated fixed step, the cells in view computed again
with the scoring solve, all of it mixed with the KDE). ``--md PAGE`` writes the tables into PAGE (between the
markers of :func:`markers`, one block per ``--ladder_max``, the rest of the page kept; written once every run
is done). The flow's log-densities at the events are kept beside each run (``mix_kde_flow.json``), so a
second call costs only the KDE; nothing else of the run is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from manifolds.distributions import MultiscaleKDE
from scripts.combine_fields import run_identity
from scripts.earth import DATASETS, RIEMANNIAN_DIFFUSION
from scripts.earth_kde import DUP_RAD, mean_std, nearest_angle
from scripts.earth_stack import flow_log_probs
from train.tasks import EarthTask
from utils import UserError, run_cli


def markers(ladder_max: float | None = None, kappas=None, weight: float | None = None) -> tuple[str, str]:
    """The page block's first and last lines: one block per choice of the KDE and the weight (none given: the
    full ladder, the weight chosen on validation)."""
    tag = "" if ladder_max is None else f" --ladder_max {ladder_max:g}"
    tag += "" if kappas is None else " --kappas " + " ".join(f"{k:g}" for k in kappas)
    tag += "" if weight is None else f" --weight {weight:g}"
    return (
        f"<!-- written by python -m scripts.mix_kde{tag} -->",
        f"<!-- end of python -m scripts.mix_kde{tag} -->",
    )


#: Riemannian diffusion's test means (issue #26's long-budget target), for the page
TARGET = {ds: float(cell.split()[0]) for ds, cell in zip(DATASETS, RIEMANNIAN_DIFFUSION, strict=True)}


def mixture_log_prob(lp_flow, lp_kde, w: float):
    """``log((1 - w) p_flow + w p_kde)`` from the two log-densities (float64)."""
    lp_flow, lp_kde = lp_flow.double(), lp_kde.double()
    if w <= 0:
        return lp_flow
    if w >= 1:
        return lp_kde
    return torch.logaddexp(lp_flow + math.log1p(-w), lp_kde + math.log(w))


def best_weight(lp_flow, lp_kde, grid: int = 200) -> float:
    """The ``w`` in [0, 1] of the smallest mean NLL of the mixture (convex in ``w``): the best point of a
    grid of ``1/grid``, then a golden-section search between its neighbours."""

    def nll(w):
        return -float(mixture_log_prob(lp_flow, lp_kde, w).mean())

    ws = [i / grid for i in range(grid + 1)]
    i = min(range(len(ws)), key=lambda j: nll(ws[j]))
    lo, hi = ws[max(i - 1, 0)], ws[min(i + 1, grid)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if nll(a) <= nll(b):
            hi = b
        else:
            lo = a
    w = (lo + hi) / 2
    return min((w, ws[i]), key=nll)


def kde_for(tk: EarthTask, ladder_max: float | None, kappas=None):
    """The validation-chosen KDE of the task's training split (``EarthTask.kde_base``, optionally among ladders
    whose sharpest kernel is at most ``ladder_max``), or the KDE of the given ``kappas``; returns
    ``(kde, kappas)``."""
    _, kappas, _ = tk.kde_base(kappas, max_kappa=ladder_max)
    return MultiscaleKDE(tk.data.train, kappas, tk.KDE_EPS), [float(k) for k in kappas]


def mix_run(run: Path, ladder_max: float | None = None, kappas=None, weight: float | None = None) -> dict:
    ds, split, data_dir = run_identity(run)
    tk = EarthTask(ds, data_dir, split)
    val, test = tk.data.val.double(), tk.data.test.double()
    t0 = time.perf_counter()
    lp_f = flow_log_probs(run, val, test)
    flow_s = time.perf_counter() - t0
    kde, kappas = kde_for(tk, ladder_max, kappas)
    lp_k = {"val": kde.log_prob(val), "test": kde.log_prob(test)}
    w = best_weight(lp_f["val"], lp_k["val"]) if weight is None else float(weight)
    novel = nearest_angle(test, tk.data.train) > DUP_RAD
    rec = dict(run=str(run), dataset=ds, split=split, kde_kappas=kappas, weight=w, flow_seconds=flow_s,
               novel_fraction=float(novel.double().mean()))  # fmt: skip
    for name, lp in (("flow", lp_f), ("kde", lp_k),
                     ("mixture", {k: mixture_log_prob(lp_f[k], lp_k[k], w) for k in lp_f})):  # fmt: skip
        rec[name] = dict(val=-float(lp["val"].mean()), test=-float(lp["test"].mean()),
                         test_novel=-float(lp["test"][novel].mean()))  # fmt: skip
    return rec


def mixture_sample(model, kde, w: float, n: int, generator) -> torch.Tensor:
    """``n`` draws of the mixture: the flow's with probability ``1 - w``, else the KDE's."""
    from_kde = torch.rand(n, generator=generator) < w
    k = int(from_kde.sum())
    out = torch.empty(n, 3, dtype=torch.float64)
    if k < n:
        out[~from_kde] = model.sample(n - k, generator=generator).double()
    if k:
        out[from_kde] = kde.sample(k, generator=generator).double()
    return out


def checks(
    run: Path, rec: dict, n: int, n_centers: int, figures: Path | None, res: int, ladder_max=None, seed=None
) -> dict:
    """The mixture's integral (importance sampling), its test NLL at the flow's evaluation tolerance and at a
    100x tighter one, and (with ``figures``) its map (:func:`scripts.earth_stack.mixture_checks`); added to
    ``rec`` and returned."""
    from scripts.earth_stack import mixture_checks

    ds, split, data_dir = run_identity(run)
    tk = EarthTask(ds, data_dir, split)
    kde = MultiscaleKDE(tk.data.train, rec["kde_kappas"], tk.KDE_EPS)
    w = rec["weight"]

    def mix(lp, x):
        return mixture_log_prob(lp, kde.log_prob(x.double()), w)

    def sample(model, k, g):
        return mixture_sample(model, kde, w, k, g)

    fig = None
    if figures is not None:
        fig = figures / (f"earth_mix_{ds}" + ("" if ladder_max is None else f"_max{ladder_max:g}") + ".png")
    rec.update(
        mixture_checks(run, ds, data_dir, split, mix, sample, n, n_centers, fig, res, integral_seed=seed)
    )
    if fig is not None:
        rec["map_file"] = fig.name
    return rec


def page_lines(recs, command: str, ladder_max: float | None = None, fig_prefix: str = "") -> list[str]:
    """The generated block of the page: per run, per dataset, and the checked runs."""
    among = (
        "" if ladder_max is None else f" among the ladders whose sharpest kernel is at most {ladder_max:g}"
    )
    lines = [f"Written by `{command}` (CPU). Per run: the KDE's concentrations (chosen on the "
             f"validation split{among}), the weight `w` of the KDE (chosen on the validation split), and the NLL "
             "(nats, lower is better) of the flow alone, the KDE alone and the mixture on the validation and "
             "test splits; 'novel': the test events that repeat no training event (the share of them in "
             "brackets).", "",
             "| dataset | split | KDE concentrations | w | validation: flow / KDE / mixture | test: flow / KDE / "
             "mixture | test, novel events: flow / mixture |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in recs:
        f, k, x = r["flow"], r["kde"], r["mixture"]
        lines.append(f"| {r['dataset']} | {r['split']} | {', '.join(f'{c:.3g}' for c in r['kde_kappas'])} | "
                     f"{r['weight']:.3f} | {f['val']:.3f} / {k['val']:.3f} / **{x['val']:.3f}** | "
                     f"{f['test']:.3f} / {k['test']:.3f} / **{x['test']:.3f}** | "
                     f"{f['test_novel']:.3f} / {x['test_novel']:.3f} ({r['novel_fraction']:.0%}) |")  # fmt: skip
    lines += ["", "Mean ± std over the runs of each dataset (test NLL); Riemannian diffusion's mean (issue #26's "
              "target for the long budget) beside:", "",
              "| dataset | runs | flow | KDE | mixture | mixture, novel events | Riemannian diffusion |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for ds in dict.fromkeys(r["dataset"] for r in recs):
        rs = [r for r in recs if r["dataset"] == ds]
        cell = {n: mean_std([r[n]["test"] for r in rs], 3) for n in ("flow", "kde", "mixture")}
        target = f"{TARGET[ds]:.2f}" if ds in TARGET else ""
        lines.append(f"| {ds} | {len(rs)} | {cell['flow']} | {cell['kde']} | **{cell['mixture']}** | "
                     f"{mean_std([r['mixture']['test_novel'] for r in rs], 3)} | {target} |")  # fmt: skip
    checked = [r for r in recs if "integral" in r]
    if checked:
        lines += ["", "Checks of the mixture (the runs of the checked split): its integral over the sphere by "
                  "importance sampling (estimate ± standard error, effective sample size; it must be 1); its test "
                  "NLL with the flow solved at its evaluation tolerance and at a 100x tighter one (they must agree "
                  "to 0.01 nats); its map (grid, seconds, and the mean |log-density difference| from the scoring "
                  "solve on the test events, as drawn and by the map's fixed step alone; at most 0.05):", "",
                  "| dataset | split | integral | test NLL at tol / 100x tighter | map | map seconds | "
                  "map error as drawn / fixed step |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in checked:
            has_map = "map_seconds" in r
            lines.append(
                f"| {r['dataset']} | {r['split']} | {r['integral']:.3f} ± {r['integral_stderr']:.3f} "
                f"(ESS {r['integral_ess']:.0f}) | {r['test_nll_tol']:.5f} (tol {r['tol']:g}) / "
                f"{r['test_nll_tight']:.5f} | {r.get('map_res', '-') if has_map else '-'} | "
                f"{r['map_seconds']:.0f} | {r['map_err_test_drawn']:.4f} / {r['map_err_test']:.4f} |"
                if has_map else
                f"| {r['dataset']} | {r['split']} | {r['integral']:.3f} ± {r['integral_stderr']:.3f} "
                f"(ESS {r['integral_ess']:.0f}) | {r['test_nll_tol']:.5f} (tol {r['tol']:g}) / "
                f"{r['test_nll_tight']:.5f} | - | - | - |"
            )  # fmt: skip
    maps = [r for r in checked if "map_file" in r]
    if maps:
        lines += ["", "The mixtures' maps (the checked runs):", ""]
        lines += [f"![{r['dataset']}]({fig_prefix}{r['map_file']})" for r in maps]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.mix_kde", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--ladder_max", type=float, default=None,
                   help="only KDE ladders whose sharpest concentration is at most this")  # fmt: skip
    p.add_argument("--kappas", type=float, nargs="+", default=None,
                   help="the KDE's concentrations (instead of the ladder chosen on validation)")  # fmt: skip
    p.add_argument(
        "--weight",
        type=float,
        default=None,
        help="the KDE's weight (instead of the one chosen on validation)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the records here (a new file)")
    p.add_argument("--checks", type=int, default=0, help="the split whose runs get the integral, the tolerance "
                   "check and (with --figures) the map; -1: none")  # fmt: skip
    p.add_argument("--integral_samples", type=int, default=5000)
    p.add_argument("--integral_centers", type=int, default=1000)
    p.add_argument("--integral_seed", type=int, default=None,
                   help="the generator seed of the integral's samples (default: the split seed)")  # fmt: skip
    p.add_argument("--figures", type=Path, default=None, help="draw the checked runs' maps into this folder")
    p.add_argument("--res", type=int, default=120, help="the maps' grid (res x res cells)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--md", type=Path, default=None, help="write the tables into this page (its block)")
    a = p.parse_args(argv)
    if a.weight is not None and not 0 <= a.weight <= 1:
        raise UserError(f"--weight {a.weight:g}: the KDE's weight must be in [0, 1]")
    if a.kappas is not None and not all(0 < k < math.inf for k in a.kappas):
        raise UserError("--kappas: concentrations must be positive and finite")
    if (a.kappas is not None or a.weight is not None) and (a.md is not None or a.figures is not None):
        raise UserError("--kappas and --weight are for comparisons (printed); the page and the maps show the "
                        "mixture chosen on validation")  # fmt: skip
    if a.md is not None and not a.md.parent.is_dir():
        raise UserError(f"--md {a.md}: no such folder")
    if a.json is not None and a.json.exists():
        raise UserError(f"--json {a.json}: the file exists; choose a new name")
    if a.json is not None and not a.json.parent.is_dir():
        raise UserError(f"--json {a.json}: no such folder")
    if a.threads < 1:
        raise UserError(f"--threads {a.threads}: need at least 1")
    torch.set_num_threads(a.threads)
    recs = []
    for run in a.runs:
        r = mix_run(run, a.ladder_max, a.kappas, a.weight)
        recs.append(r)
        print(f"{run}: {r['dataset']} split {r['split']}, KDE {', '.join(f'{k:.3g}' for k in r['kde_kappas'])}, "
              f"w = {r['weight']:.3f} (flow scored in {r['flow_seconds']:.0f} s)")  # fmt: skip
        for name in ("flow", "kde", "mixture"):
            s = r[name]
            print(f"  {name:8s} validation {s['val']:+.4f}  test {s['test']:+.4f}  "
                  f"test, novel events ({r['novel_fraction']:.0%}) {s['test_novel']:+.4f}")  # fmt: skip
        if r["split"] == a.checks:
            checks(
                run,
                r,
                a.integral_samples,
                a.integral_centers,
                a.figures,
                a.res,
                a.ladder_max,
                a.integral_seed,
            )
            print(f"  integral {r['integral']:.3f} ± {r['integral_stderr']:.3f} (ESS {r['integral_ess']:.0f}, "
                  f"{r['integral_seconds']:.0f} s); test NLL at tolerance {r['tol']:g} {r['test_nll_tol']:+.5f}, "
                  f"100x tighter {r['test_nll_tight']:+.5f}", flush=True)  # fmt: skip
            if "map_seconds" in r:
                print(f"  map {a.res}x{a.res}: {r['map_seconds']:.0f} s, mean |log p difference| on the test "
                      f"events {r['map_err_test_drawn']:.4f} as drawn ({r['map_err_test']:.4f} fixed step alone)")  # fmt: skip
    for ds in dict.fromkeys(r["dataset"] for r in recs):
        rs = [r for r in recs if r["dataset"] == ds]
        if len(rs) > 1:
            for k in ("val", "test"):
                cells = ", ".join(
                    f"{n} {mean_std([r[n][k] for r in rs], 3)}" for n in ("flow", "kde", "mixture")
                )
                print(f"{ds}, {len(rs)} runs, {'validation' if k == 'val' else 'test'} NLL: {cells}")
    if a.json is not None:
        a.json.write_text(json.dumps(recs, indent=1))
    if a.md is not None:
        from scripts.pages import replace_block

        cmd = "python -m scripts.mix_kde " + " ".join(argv if argv is not None else sys.argv[1:])
        if not a.md.is_file():
            a.md.write_text("# A flow mixed with a kernel density estimate\n")
        prefix = ""
        if a.figures is not None:
            prefix = os.path.relpath(a.figures.resolve(), a.md.resolve().parent).replace(os.sep, "/") + "/"
        replace_block(
            a.md, *markers(a.ladder_max, a.kappas, a.weight), page_lines(recs, cmd, a.ladder_max, prefix)
        )
        print(f"wrote {a.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, "scripts.mix_kde"))
