"""Two ways to combine trained flow-matching fields, scored on the validation split.

    python -m scripts.combine_fields RUN_DIR [RUN_DIR ...]

The runs must be ``main_density.py`` runs on the same Earth catalogue and split (and so the same KDE base,
which is checked). For each run's best-validation model (``best.pt``) and, for ``--ensemble K`` runs, each
of its K fields alone, the validation NLL; then the fields of all runs combined two ways, both exact
densities:

- the **field average** ``f = (1/N) sum_k f_k`` (``flows.FieldAverage``, what ``--ensemble`` trains): one
  ODE, whose exact divergence is the average of the members';
- the **density mixture** ``p = (1/N) sum_k p_k``: each field's own flow from the common base, its
  log-densities combined by log-sum-exp. By Jensen's inequality its NLL is at most the members' mean.

Both cost N fields' evaluations per point. Only the validation split is read (tuning, never the test
split). Seconds are one thread of CPU.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

from data.earth import EARTH, EarthData
from flows import FieldAverage
from flows.evaluation import model_log_prob, solve_copy
from scripts.earth import best_model
from scripts.runs import finished
from utils import UserError, run_cli


def members(field) -> list:
    """The single fields of a field (itself) or of a field average (its members), in order."""
    return list(field.members) if isinstance(field, FieldAverage) else [field]


def with_field(model, field):
    """A copy of ``model`` (its base, charts and solvers) whose vector field is ``field``."""
    m = copy.deepcopy(model)
    m.field = m.dynamics.field = field
    return m


def mixture_nll(log_probs) -> float:
    """Mean NLL of the equal-weight mixture of the densities whose log-densities are ``log_probs``."""
    lp = torch.stack(list(log_probs))
    return -(torch.logsumexp(lp, 0) - math.log(len(lp))).mean().item()


def run_identity(run: Path) -> tuple:
    """(dataset, split seed, data folder) of a finished run, from its metrics.json."""
    m = finished(run)
    if m is None:
        raise UserError(f"{run}: no metrics.json (not a finished main_density.py run)")
    args = m["args"]
    if args.get("dataset") not in EARTH:
        raise UserError(f"{run}: dataset {args.get('dataset')!r} is not an Earth catalogue")
    return args["dataset"], int(args.get("split_seed", 0)), args.get("data_dir")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.combine_fields", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ids = {run_identity(r) for r in a.runs}
    if len(ids) != 1:
        raise UserError(f"the runs are on different catalogues or splits: {sorted(map(str, ids))}")
    ds, split, data_dir = ids.pop()
    val = EarthData(ds, data_dir, split).val.double()
    models = [best_model(r) for r in a.runs]
    common = ("base", "base_kappas", "base_eps", "charts", "chart_center", "eval_solver", "manifold", "dim")
    first = models[0]
    for r, m in zip(a.runs[1:], models[1:], strict=True):
        same = all(m.config.get(k) == first.config.get(k) for k in common)
        centers = [getattr(x, "base_centers", None) for x in (first, m)]
        if (
            not same
            or (centers[0] is None) != (centers[1] is None)
            or (centers[0] is not None and not torch.equal(*centers))
        ):
            raise UserError(f"{r}: another base, charts or evaluation solver than {a.runs[0]}")

    def score(model, label):
        t0 = time.perf_counter()
        lp = model_log_prob(solve_copy(model), val)
        print(
            f"{label}: validation NLL {-lp.mean().item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True
        )
        return lp

    print(f"{ds}, split {split}: {len(val)} validation events")
    singles = []
    for r, m in zip(a.runs, models, strict=True):
        fields = members(m.field)
        if len(fields) > 1:
            score(m, f"{r} (field average of its {len(fields)})")
        for k, f in enumerate(fields):
            singles.append(score(with_field(m, f), f"{r} field {k}" if len(fields) > 1 else str(r)))
    every = [f for m in models for f in members(m.field)]
    if len(every) > 1:
        if len(models) > 1:  # (one run's own field average was scored above)
            score(with_field(models[0], FieldAverage(every)), f"field average of all {len(every)} fields")
        print(f"density mixture of all {len(every)} fields: validation NLL {mixture_nll(singles):.4f}")
        i = 0
        for r, m in zip(a.runs, models, strict=True):
            n = len(members(m.field))
            if n > 1 and len(a.runs) > 1:
                print(
                    f"density mixture of the {n} fields of {r}: validation NLL {mixture_nll(singles[i : i + n]):.4f}"
                )
            i += n
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, "scripts.combine_fields"))
