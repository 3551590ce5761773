"""The Earth pages' density maps: a run's best model (or a density built on it) on a Mollweide map with its test
events, every cell in view the scoring solve's (:func:`draw_map`, :func:`view_cascade`, :func:`rescore_view`).

Used by ``scripts.earth`` (every page's split-0 map), ``scripts.earth_stack`` (the stacked density's),
``scripts.mix_kde`` and ``python -m scripts.map_check``; :func:`tight_log_probs` is the pages' tolerance check.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import NamedTuple

from train.objectives import accurate_figures

LOG_RANGE = 8.0  # viz.figures.LOG_RANGE


def tight_log_probs(model, x):
    """Trust in a score: ``model``'s log-densities at ``x`` with its evaluation solver (dopri5, float64, atol =
    rtol = ``--eval_tol``) and with a 100x tighter one (issue #26: the means must agree to 0.01 nats); returns
    ``(tol, lp, lp_tight)``."""
    from flows import solver_gap

    tol = model.eval_solver.atol
    tight = dataclasses.replace(model.eval_solver, atol=tol / 100, rtol=model.eval_solver.rtol / 100)
    lp, lp_tight = solver_gap(model, x, {}, dict(solver=tight))
    return tol, lp, lp_tight


def best_model(out):
    """The run's model with the weights of its best validation epoch (``best.pt``)."""
    from flows import load_model, read_checkpoint

    model = load_model(out / "checkpoint.pt")
    model.load_state_dict(read_checkpoint(out / "best.pt", required=("model",))["model"])
    return model


#: Cells of a map within this many nats below its view (the top ``LOG_RANGE`` nats) are computed with the scoring
#: solve too (:func:`rescore_view`): a cell the fixed step puts just below the view may belong in it (the fixed
#: step's error on cells truly in view was at most 0.8 nats on 300 random cells of the fire long map).
VIEW_MARGIN = 1.0
#: Cells near the view are first solved with the map's fixed step divided by this (:func:`view_cascade`).
#: Volcano's long split-0 map, one thread beside one or two trainings: the cells the scoring solve computed
#: again went from 549 (192 s) to 56, after 549 cells at the finer step (40 s in all), the same 35 cells in
#: view and the same values (python -m scripts.map_check RUN --full --refine 4; docs/earth_ablation.md).
REFINE = 4
#: ... and tried on this many of a larger set first (:func:`view_cascade`): the fire long map's cells within
#: reach are truly near the view, and refining all of them first cost more than it saved.
REFINE_PROBE = 64
#: While the finer step is in use, the cells up to this many nats below the reach are solved with it too
#: (:func:`view_cascade`): the fixed step can put a cell several nats off just below the reach as well as
#: above it (volcano's default split-0 map: a test event at -2.37 nats by the fixed step, 0.30 below the
#: reach, -5.89 scored and -5.79 by the finer step).
REFINE_BAND = 2.0


def draw_map(out, ds, path, res, data_dir, seed, mix=None, label=None) -> dict:
    """The best-validation model's density on a Mollweide map with the test events on top.

    Flow-matching models are drawn with the calibrated fixed step (:func:`flows.calibrated_map_model`,
    chosen on the validation events); maximum-likelihood models with their training step
    (:func:`flows.figure_model`). Either way the map's log-density is compared with the scoring solve on
    the test events, by the fixed step alone and as drawn (:func:`view_cascade`). Returns the map's record:
    seconds (the grid's log-densities, the cells refined and scored, and the drawing), step, mean |log-density
    difference| on the validation and test events, cells refined and scored.

    ``mix``: ``(log_p_flow, x) -> log_p`` turns the flow's log-densities at points ``x`` into those of a model
    built on it (the mixture with a KDE of ``scripts.mix_kde``, the stack of ``--stack``); every log-density the
    map computes or compares (the fixed step, the finer step, the scoring solve) goes through it, so the map is
    that model's; ``label``: its name in the map's title.
    """
    import numpy as np
    import torch

    from data.earth import EarthData
    from flows import calibrated_map_model, figure_model, pointwise_log_prob, solver_gap
    from viz import figures

    data = EarthData(ds, data_dir, seed)
    model = best_model(out)
    accurate = accurate_figures(json.loads((out / "metrics.json").read_text())["args"].get("objective"))
    rec = {"map_res": res}
    if accurate:  # no training step to reuse: calibrate a fixed step against the scoring solve
        fm, rec["map_step"], rec["map_err_val"] = calibrated_map_model(model, data.val.double())
    else:
        fm = figure_model(model)
        rec["map_step"] = fm.eval_solver.step_size
    rec["map_warp"], rec["map_pointwise"] = fm.eval_solver.time_warp, fm.eval_solver.pointwise
    # the map's solve against the scoring solve, on the test events (the same weights, two solves)
    lp_map, lp_score = solver_gap(model, data.test.double(), dict(solver=fm.eval_solver, dtype=torch.float32))
    if mix is not None:
        lp_map, lp_score = mix(lp_map, data.test.double()), mix(lp_score, data.test.double())

    def through(log_prob):  # a log-density of the flow -> the same of the drawn model
        return log_prob if mix is None else (lambda x: mix(log_prob(x), x))

    rec["map_err_test"] = float((lp_map - lp_score).abs().mean())
    t0 = time.perf_counter()
    values = map_grid(fm, res, mix)
    # every cell the map shows is the scoring solve's value, each cell solved on its own: the fixed step finds
    # them, cheaply, but far from the events it can be far off (fire's long model: one cell at the south pole
    # at log p 14.8 by the map's step against -29.3 scored, which set the scale and blanked the map)
    exact = model.double()
    score = through(
        (lambda x: pointwise_log_prob(exact, x)) if hasattr(exact, "dynamics") else exact.log_prob
    )
    # a cell the fixed step puts near the view is first solved with a step REFINE times finer: far from the
    # events (volcano's long model) most such cells are stiff ones the map's step put wrongly high, and the
    # finer step, not the scoring solve, tells them apart (docs/earth_ablation.md, "A finer step before the
    # scoring solve")
    refine = through(finer_step(model, fm.eval_solver, REFINE))
    done = rescore_view(values, res, score, refine)
    rec["map_cells_rescored"], rec["map_rescore_err"], rec["map_cells_refined"] = done[:3]
    top = float(log_cells(values).max())
    # log scale over the top 8 nats, transparent below, so that the continents stay visible
    values = figures.top_log_density(values, LOG_RANGE)
    path.parent.mkdir(parents=True, exist_ok=True)
    what = label or ("model" if mix is None else "flow + KDE mixture")
    title = f"{ds} (split {seed}): {what} log-density (top {LOG_RANGE:.0f} nats), test events"
    figures.plot_panels([dict(title=title, values=values,
                              scatter=figures.to_plane(data.test, "Sphere"))], "Sphere", path, stock=True)  # fmt: skip
    rec["map_seconds"] = time.perf_counter() - t0
    # the map as drawn at the test events (a measurement, not part of the map's seconds): the same cascade with
    # the map's top and the grid's choice of step (an event within reach of the view gets the scoring solve's
    # value, one below it the fixed step's, or the finer step's where the grid used it)
    drawn, _ = view_cascade(
        lp_map.double().numpy(), data.test.double(), score, refine if done.refining else None, top, probe=None
    )
    rec["map_err_test_drawn"] = float(np.abs(drawn - lp_score.double().numpy()).mean())
    print(f"wrote {path}", flush=True)
    return rec


def map_grid(fm, res: int, mix=None):
    """A sphere map's densities ``(res, res)``, as the map solves them: ``fm`` (the map's float32 copy of a
    model) over the whole grid (:func:`viz.figures.density_values`), before :func:`rescore_view`; ``mix`` as in
    :func:`draw_map`."""
    import torch

    from viz import figures

    def log_prob(x):
        lp = fm.log_prob(x.to(torch.float32))
        return lp if mix is None else mix(lp.double(), x.double()).to(lp.dtype)

    with torch.no_grad():
        return figures.density_values(log_prob, "Sphere", res)


def log_cells(values):
    """A map's densities ``(res, res)`` as flat log-densities (0 as a very low finite value)."""
    import numpy as np

    return np.log(np.maximum(values.reshape(-1), 1e-300))


def finer_step(model, solver, k: int):
    """The map's fixed step ``solver`` (rk4) divided by ``k``, as a log-density of points ``(N, 3)`` in float32:
    :func:`view_cascade`'s ``refine``."""
    import torch

    from flows import solve_copy

    fine = solve_copy(
        model, solver=dataclasses.replace(solver, step_size=solver.step_size / k), dtype=torch.float32
    )
    return lambda x: fine.log_prob(x.to(torch.float32))


class Rescore(NamedTuple):
    """What :func:`rescore_view` did: cells computed with the scoring solve, the largest |log-density
    difference| the map's fixed step had at them, cells computed with the finer fixed step first, and whether
    the finer step was still in use at the end (a probe can stop it)."""

    scored: int
    err: float
    refined: int = 0
    refining: bool = False


def view_cascade(logs, x, log_prob, refine=None, top=None, log_range: float = LOG_RANGE,
                 margin: float = VIEW_MARGIN, probe: int | None = REFINE_PROBE, band: float = REFINE_BAND):  # fmt: skip
    """The log-densities a map shows at points ``x`` ``(N, 3)`` whose fixed-step values are ``logs`` ``(N,)``:
    every point within ``log_range + margin`` nats of the top is computed with ``log_prob`` (the scoring
    solve), again as the top moves (``top=None``: the highest of ``logs``, which falls as blown-up points are
    corrected; a number: that fixed top, for points off the grid).

    With ``refine`` (a finer fixed step), such a point is first computed with it, and only the points it
    leaves within reach of the view go to ``log_prob``: far from the events a sharp model's points are stiff,
    a coarse step can put them wrongly high, and the scoring solve is slowest there. Where the fixed step is
    right (the points within reach truly are), that is work for nothing; so a set of more than ``probe``
    points is first refined on ``probe`` of them (seeded), and if fewer than a quarter of those leave reach,
    the finer step is not used again (``probe=None``: no probe, the finer step is used throughout). While it
    is in use, the points up to ``band`` nats below the reach are computed with it too, once nothing within
    reach is left to do: the fixed step errs below the reach as well, and a point it leaves there may belong
    in view (or be far below it); those that the finer step puts within reach are scored.
    Returns (the new log-densities, :class:`Rescore`)."""
    import numpy as np
    import torch

    logs = np.array(logs, dtype=np.float64)
    first, state = logs.copy(), np.zeros(len(logs), dtype=np.int8)  # 0: fixed step, 1: refined, 2: scored
    fine = np.zeros(len(logs), dtype=bool)  # computed with the finer step (then perhaps scored too)
    rng = np.random.default_rng(0)

    def reach():
        return (logs.max() if top is None else top) - log_range - margin

    decided = probe is None  # whether a probe has shown that the finer step pays (else: refine is None)
    while True:
        todo = np.flatnonzero((state < 2) & (logs >= reach()))
        in_band = not len(todo) and refine is not None
        if in_band:  # the band below the reach, with the finer step
            todo = np.flatnonzero((state == 0) & (logs >= reach() - band))
        if not len(todo):
            break
        raw = todo[state[todo] == 0]
        stage = 1 if refine is not None and len(raw) else 2
        trial = stage == 1 and not decided and not in_band and len(raw) > probe
        if trial:  # does the finer step pay here? try it on a sample first
            raw = np.sort(rng.choice(raw, probe, replace=False))
        todo = raw if stage == 1 else todo
        with torch.no_grad():
            logs[todo] = (log_prob if stage == 2 else refine)(x[torch.as_tensor(todo)]).double().cpu().numpy()
        state[todo] = stage
        fine[todo] |= stage == 1
        if trial:
            decided = True
            if (logs[todo] < reach()).mean() < 0.25:
                refine = None  # the fixed step is right where it matters: score what is within reach
    scored = state == 2
    err = float(np.abs(first[scored] - logs[scored]).max()) if scored.any() else 0.0
    return logs, Rescore(int(scored.sum()), err, int(fine.sum()), refine is not None)


def rescore_view(
    values, res: int, log_prob, refine=None, log_range: float = LOG_RANGE, margin: float = VIEW_MARGIN
):
    """Compute every cell a sphere map ``values`` ``(res, res)`` shows with ``log_prob`` (in place): the cells
    within ``log_range + margin`` nats of the map's top, again as the top moves (a blown-up cell, once
    corrected, lowers it), until all of them are ``log_prob``'s values (:func:`view_cascade`; ``refine``: a
    finer fixed step tried first). ``log_prob``: points ``(N, 3)`` -> log-densities (float64), for a map
    :func:`flows.pointwise_log_prob` at the scoring tolerance. Returns a :class:`Rescore`."""
    import numpy as np
    import torch

    from manifolds import Sphere

    x = Sphere(2).plot_grid(res)[0].to(torch.float64)
    flat = values.reshape(-1)
    before = log_cells(values)
    logs, done = view_cascade(before, x, log_prob, refine, None, log_range, margin)
    changed = logs != before
    flat[changed] = np.exp(logs[changed])
    return done
