"""What docs/earth*.md shows for a density built on a run's flow: the stacked density of ``main_density.py
--stack`` (train/stacking.py) and the mixtures of ``scripts.mix_kde``.

:func:`mixture_checks`: a density ``mix(log_p_flow, x)`` built on the run's best flow, checked as every Earth
model is (issue #26): its integral over the sphere by importance sampling (the proposal placed at samples of
the density itself; it must be 1), its test NLL with the flow solved at the evaluation tolerance and at a 100x
tighter one (they must agree to 0.01 nats), and its map (``scripts.earth_maps.draw_map`` through ``mix``: the map
is the scored function). :func:`stack_scores`: a stacked run's test NLL over all test events and over the
novel ones (repeating no training coordinate), the flow's beside it, and on the checked split the checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def stack_of(out: Path, train):
    """The stack a run reported (``metrics.json``'s ``stack``) on its training split ``train``."""
    from train.stacking import Stack

    return Stack.from_record(train, json.loads((Path(out) / "metrics.json").read_text())["stack"])


def flow_log_probs(run: Path, val, test) -> dict:
    """The best model's log-densities at the validation and test events (the scoring solve), kept beside the
    run in ``mix_kde_flow.json`` (``scripts.runs.cached``: computed again when checkpoint.pt is newer)."""
    from flows.evaluation import model_log_prob, solve_copy
    from scripts.earth_maps import best_model
    from scripts.runs import cached

    def compute():
        model = solve_copy(best_model(run))
        return {k: model_log_prob(model, x).tolist() for k, x in (("val", val), ("test", test))}

    lp = cached(run, "mix_kde_flow.json", compute)
    return {k: torch.tensor(lp[k], dtype=torch.float64) for k in ("val", "test")}


def mixture_checks(out, ds, data_dir, seed, mix, sample, n: int, n_centers: int, fig=None, res: int = 120,
                   integral_seed=None, label=None) -> dict:  # fmt: skip
    """The checks of the density ``mix(log_p_flow, x)`` of run ``out`` (split ``seed`` of catalogue ``ds``):
    integral (``n`` points; proposal: :func:`flows.defensive_proposal` at ``n_centers`` draws of
    ``sample(model, k, generator)``), test NLL at the evaluation tolerance and 100x tighter, and with ``fig``
    (a path) its map at ``res`` (``label``: the map's name of the density). Keys: ``integral``,
    ``integral_stderr``, ``integral_ess``, ``integral_seconds``, ``tol``, ``test_nll_tol``,
    ``test_nll_tight`` and the map's (``scripts.earth_maps.draw_map``)."""
    from data.earth import EarthData
    from flows.evaluation import defensive_proposal, importance_integral, model_log_prob, solve_copy
    from scripts.earth_maps import best_model, draw_map, tight_log_probs

    model = best_model(out).double().eval()
    g = torch.Generator().manual_seed(seed if integral_seed is None else integral_seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        centers = sample(model, n_centers, g)
    exact = solve_copy(model)
    est = importance_integral(lambda x: mix(model_log_prob(exact, x), x), defensive_proposal(centers), n=n,
                              generator=g)  # fmt: skip
    rec = dict(integral=est.estimate, integral_stderr=est.stderr, integral_ess=est.ess,
               integral_seconds=time.perf_counter() - t0)  # fmt: skip
    test = EarthData(ds, data_dir, seed).test.double()
    tol, lp, lp_tight = tight_log_probs(model, test)
    rec.update(
        tol=tol, test_nll_tol=-float(mix(lp, test).mean()), test_nll_tight=-float(mix(lp_tight, test).mean())
    )
    if fig is not None:
        rec.update(draw_map(out, ds, Path(fig), res, data_dir, seed, mix=mix, label=label))
    return rec


def stack_scores(out, ds, data_dir, seed, check: bool = False, fig=None, res: int = 120, n: int = 5000,
                 n_centers: int = 1000) -> dict:  # fmt: skip
    """A stacked run's scores, as ``stack_*`` keys: test NLL of the stack and of the flow over the novel test
    events (``scripts.earth_kde``: farther than 1e-6 rad from every training event) and their share; with
    ``check``, :func:`mixture_checks` of the stacked density (map into ``fig``)."""
    from data.earth import EarthData
    from scripts.earth_kde import DUP_RAD, nearest_angle

    data = EarthData(ds, data_dir, seed)
    stack = stack_of(out, data.train)
    test = data.test.double()
    lp_flow = flow_log_probs(out, data.val.double(), test)["test"]  # the scoring solve, kept beside the run
    lp = stack.log_prob(lp_flow, test)
    novel = nearest_angle(test, data.train) > DUP_RAD
    rec = {"stack_test_nll_check": -float(lp.mean()), "stack_novel_fraction": float(novel.double().mean()),
           "stack_test_nll_novel": -float(lp[novel].mean()), "flow_test_nll_novel": -float(lp_flow[novel].mean())}  # fmt: skip
    if check:

        def sample(model, k, g):
            return stack.sample(lambda j: model.sample(j, generator=g), k, g)

        checked = mixture_checks(out, ds, data_dir, seed, stack.log_prob, sample, n, n_centers, fig, res,
                                 label="flow stacked with KDEs")  # fmt: skip
        rec.update({f"stack_{k}": v for k, v in checked.items()})
        if fig is not None:
            rec["stack_map_file"] = Path(fig).name
    return rec


def cross_fitted(parts, halvings: int, generator) -> float:
    """The validation NLL of a stack whose weights never saw the events scored: the validation events split
    in two at random, weights fitted on one half (:func:`train.stacking.mixture_weights`) and the other half
    scored, both ways, ``halvings`` times; the mean."""
    from train.stacking import mixture_weights

    n, scores = len(parts), []
    for _ in range(halvings):
        perm = torch.randperm(n, generator=generator)
        for fit, score in ((perm[: n // 2], perm[n // 2 :]), (perm[n // 2 :], perm[: n // 2])):
            w = mixture_weights(parts[fit])
            scores.append(-float((parts[score] + w.log()).logsumexp(1).mean()))
    return sum(scores) / len(scores)


def main(argv=None) -> int:
    """``python -m scripts.earth_stack RUN... [--ratios R...] [--max_kappa K...] [--halvings N]``: the stack's
    ladder judged on the validation events alone (:func:`cross_fitted`), per run and ladder; prints a table."""
    import argparse

    from scripts.combine_fields import run_identity
    from scripts.earth_kde import mean_std
    from train.stacking import MAX_KAPPA, RATIO, Stack, stack_kappas
    from train.tasks import EarthTask
    from utils import UserError

    p = argparse.ArgumentParser(prog="python -m scripts.earth_stack", description=main.__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--ratios", type=float, nargs="+", default=[RATIO])
    p.add_argument("--max_kappa", type=float, nargs="+", default=[MAX_KAPPA])
    p.add_argument("--halvings", type=int, default=10)
    a = p.parse_args(argv)
    if a.halvings < 1 or min(a.ratios) <= 1 or min(a.max_kappa) < 10:
        raise UserError("--halvings >= 1, --ratios > 1 and --max_kappa >= 10")
    ladders = [(r, k) for k in a.max_kappa for r in a.ratios]
    rows = {}
    for run in a.runs:
        ds, split, data_dir = run_identity(run)
        tk = EarthTask(ds, data_dir, split)
        val = tk.data.val.double()
        lp = flow_log_probs(run, val, tk.data.test.double())["val"]
        for ratio, top in ladders:
            kappas = stack_kappas(top, ratio)
            parts = Stack(tk.data.train, kappas).parts(lp, val)
            g = torch.Generator().manual_seed(split)
            rows.setdefault((ds, ratio, top, len(kappas)), []).append(cross_fitted(parts, a.halvings, g))
            print(f"{run}: ratio {ratio:g}, sharpest {top:g} ({len(kappas)} kernels): cross-fitted validation "
                  f"NLL {rows[ds, ratio, top, len(kappas)][-1]:.4f}", flush=True)  # fmt: skip
    print(
        "\n| dataset | sharpest kernel | ratio | kernels | cross-fitted validation NLL, mean ± std | per split |"
    )
    print("|---|---|---|---|---|---|")
    for (ds, ratio, top, k), xs in rows.items():
        print(
            f"| {ds} | {top:g} | {ratio:g} | {k} | {mean_std(xs, 4)} | {', '.join(f'{x:.4f}' for x in xs)} |"
        )
    return 0


if __name__ == "__main__":
    import sys

    from utils import run_cli

    sys.exit(run_cli(main, "python -m scripts.earth_stack"))
