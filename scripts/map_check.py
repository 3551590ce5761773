"""How faithful is an Earth map away from the events? Random cells of its grid, solved the map's way and the
scoring way.

    python -m scripts.map_check RUN_DIR [--cells 100] [--seed 0] [--full [--refine 4] [--finders H ...]]

RUN_DIR is a flow-matching run of ``scripts.earth`` with its map drawn (``map.json`` there holds the map's
resolution, fixed step and time grid). The map's accuracy on the test events (``map_err_test``) says
nothing about cells far from the data, where a sharp model's flow can outrun a fixed step. This draws
``--cells`` cells of the map's grid at random (seeded), solves them with the map's fixed step (float32, as
the map does) and with the scoring solve (dopri5, float64), and prints the median, 90% quantile and mean of
``|log p_map - log p_score|``, the share of cells off by more than 1 nat, and the same over the cells scored
or mapped within ``LOG_RANGE`` nats of the best-scored test event (a stand-in for the map's scale, whose top
is the grid's highest cell once the cells in view are the scoring solve's, ``scripts.earth.rescore_view``).

By default the cells are solved together, in one batch. A map drawn point by point (``map_pointwise`` in its
record, every map since 2026-12-03: ``SolverSettings(pointwise=True)``, each cell its own charts) gives every
cell the value it has on the map. Older maps solved the grid in chunks, and a chunk in which any point passed
the chart guard was redone with re-centred charts (``flows.MCNF``), which changed the other points' values
too: for those the default measures the map's fixed step, not each drawn cell. ``--full`` solves the whole
grid as the map does (``viz.figures.density_values``; minutes for a sharp model) and
compares the grid's cells (before the map computes the cells in view again); it then computes them as the map
does (``rescore_view``: each cell on its own, :func:`flows.pointwise_log_prob`), checks ``--cells`` random cells
among those the map shows (its top ``LOG_RANGE`` nats) against the scoring solve, and counts the random cells
of the first check that the scoring solve puts in view and the map does not show (missed).

``--finders H [H ...]`` (with ``--full``) asks what a coarser or finer fixed step would cost the map. The map's
fixed step only has to find the cells in view: those within ``LOG_RANGE`` nats of the top and a margin below
it are computed again with the scoring solve. For each step ``H`` (rk4, the map's time grid, point by point)
this times the whole grid and counts, against the drawn map's cells in view (the reference: the map's own
step, then ``rescore_view``), the largest amount by which ``H`` puts such a cell too low, and for margins of
1, 2 and 3 nats the cells the map would compute again (with the reference's top) and the cells in view it
would miss. The seconds those cells would cost are estimated from the reference's own recomputation
(seconds per cell; far from the events a sharp model's cells are stiff and cost more than the average).

``--refine K`` (with ``--full``) measures what the maps do since 2026-12-03 (``scripts.earth.view_cascade``):
a cell within reach of the view is first solved with the map's step divided by ``K``, and only the cells that
step leaves within reach go to the scoring solve (tried first on 64 cells of a larger set, and dropped when
fewer than a quarter of them leave reach). It prints the cells refined and scored and the seconds,
against scoring every cell within reach (the reference), and whether the two show the same cells in view
with the same values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from utils import UserError, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--cells", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="solve the whole grid as the map does")
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="K",
        help="with --full: the map's cells again with a step K times finer tried first (docstring)",
    )
    p.add_argument("--finders", nargs="+", type=float, default=[], metavar="H",
                   help="with --full: time the grid at these fixed steps and count the cells each would compute "
                        "again and miss (docstring)")  # fmt: skip
    a = p.parse_args(argv)
    run = Path(a.run)
    if not (run / "map.json").is_file() or not (run / "metrics.json").is_file():
        raise UserError(
            f"{run}: no map.json and metrics.json here (draw the map with python -m scripts.earth)"
        )
    if a.cells < 1:
        raise UserError("--cells must be at least 1")
    if (a.finders or a.refine) and not a.full:
        raise UserError("--finders and --refine need --full (the drawn map is the reference)")
    if a.refine < 0:
        raise UserError("--refine: a whole number of times finer, e.g. 4 (0: not measured)")
    if any(not 0 < h <= 1 for h in a.finders):
        raise UserError("--finders: steps in (0, 1], e.g. 0.125")
    import numpy as np
    import torch

    from data.earth import EarthData
    from flows import SolverSettings, model_log_prob, pointwise_log_prob, solve_copy, solver_gap
    from manifolds import Sphere
    from scripts.earth import LOG_RANGE, best_model, finer_step, log_cells, map_grid, rescore_view

    rec = json.loads((run / "map.json").read_text())
    args = json.loads((run / "metrics.json").read_text())["args"]
    model = best_model(run)
    x = Sphere(2).plot_grid(rec["map_res"])[0]
    idx = np.random.default_rng(a.seed).choice(len(x), min(a.cells, len(x)), replace=False)
    how = dict(
        solver=SolverSettings(
            method="rk4",
            step_size=rec["map_step"],
            time_warp=rec["map_warp"],
            pointwise=rec.get("map_pointwise", False),
        ),  # fmt: skip
        dtype=torch.float32,
    )
    lp_map, lp_score = solver_gap(model, x[torch.as_tensor(idx)].double(), how)
    if a.full:  # the drawn cells: the whole grid solved in the map's chunks
        grid = map_grid(solve_copy(model, **how), rec["map_res"])
        lp_map = torch.as_tensor(log_cells(grid)[idx])
    test = EarthData(args["dataset"], args.get("data_dir"), args["split_seed"]).test.double()
    scoring = solve_copy(model)  # float64, the evaluation solver
    top = float(model_log_prob(scoring, test).max())
    err = (lp_map - lp_score).abs().numpy()
    near = ((lp_score >= top - LOG_RANGE) | (lp_map >= top - LOG_RANGE)).numpy()

    def summary(e):
        if len(e) == 0:
            return "none"
        return (f"median {np.median(e):.4f}, 90% {np.quantile(e, 0.9):.4f}, mean {e.mean():.3f}, "
                f"off by > 1 nat {int((e > 1).sum())}/{len(e)}")  # fmt: skip

    print(f"{run}: map rk4 1/{round(1 / rec['map_step'])} (t = s^{rec['map_warp']:g}), {len(idx)} random cells "
          f"of {rec['map_res']} x {rec['map_res']} (seed {a.seed}), "
          f"{'the whole grid solved as the map does' if a.full else 'solved together'}")  # fmt: skip
    print(f"all: {summary(err)}")
    print(f"near the best test event (log p >= {top - LOG_RANGE:.2f}, 8 nats below it): {summary(err[near])}")
    if a.full:  # the cells the map shows: computed again as the map does, then its top LOG_RANGE nats
        shown = grid.copy()
        t0 = time.perf_counter()
        n_again = rescore_view(shown, rec["map_res"], lambda y: pointwise_log_prob(scoring, y)).scored
        plain_seconds = time.perf_counter() - t0
        per_cell = plain_seconds / max(n_again, 1)
        logs = log_cells(shown)
        floor = logs.max() - LOG_RANGE
        view = np.flatnonzero(logs >= floor)
        vidx = np.random.default_rng(a.seed).choice(view, min(a.cells, len(view)), replace=False)
        lp_view = model_log_prob(scoring, x[torch.as_tensor(vidx)].double()).numpy()
        print(f"shown ({len(view)} cells within {LOG_RANGE:g} nats of the map's top, {len(vidx)} at random): "
              f"{summary(np.abs(logs[vidx] - lp_view))}")  # fmt: skip
        truly = lp_score.numpy() >= floor
        missed = int((truly & (logs[idx] < floor)).sum())
        print(
            f"missed: {missed} of the {int(truly.sum())} random cells in view by the scoring solve are not shown"
        )
        if a.refine:  # the same grid's cells in view again, a finer fixed step first
            refine = finer_step(model, dataclasses.replace(how["solver"], pointwise=True), a.refine)
            cascade = grid.copy()
            t0 = time.perf_counter()
            done = rescore_view(cascade, rec["map_res"], lambda y: pointwise_log_prob(scoring, y), refine)
            seconds = time.perf_counter() - t0
            both = log_cells(cascade)
            view_c = both >= both.max() - LOG_RANGE
            same = bool((view_c == (logs >= floor)).all())
            diff = float(np.abs(both[view_c | (logs >= floor)] - logs[view_c | (logs >= floor)]).max())
            print(f"refine 1/{round(a.refine / rec['map_step'])} first: {done.refined} cells refined, {done.scored} "
                  f"scored, {seconds:.1f} s (scoring every cell in reach: {n_again} cells, {plain_seconds:.1f} s); "
                  f"cells in view {int(view_c.sum())} against {len(view)}, the same cells: {same}, "
                  f"largest difference in view {diff:.2g} nats")  # fmt: skip
        if a.finders:
            print(f"reference: the map's {len(view)} cells in view; it computed {n_again} cells again, "
                  f"{per_cell:.3f} s each")  # fmt: skip
        for h in a.finders:
            finder = dict(how, solver=dataclasses.replace(how["solver"], step_size=h, pointwise=True))
            t0 = time.perf_counter()
            found = log_cells(map_grid(solve_copy(model, **finder), rec["map_res"]))
            seconds = time.perf_counter() - t0
            low = float((logs[view] - found[view]).max())
            parts = []
            for m in (1, 2, 3):
                again = found >= floor - m
                parts.append(f"margin {m}: {int(again.sum())} cells again (about {again.sum() * per_cell:.0f} s), "
                             f"{int((~again[view]).sum())} in view missed")  # fmt: skip
            print(f"finder rk4 1/{1 / h:g}: grid {seconds:.1f} s; largest underestimate in view {low:.2f} nats; "
                  + "; ".join(parts))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m scripts.map_check"))
