"""The solver guard: keep a fixed-step maximum-likelihood run from exploiting its solver's error.

A fixed training step leaves an error in each point's log-determinant, and a long run can learn to
make that error favourable: the training NLL then falls below the true entropy while the exact test
KL grows (README, "Solver guard"). The guard scores a fixed batch of training points twice with the
**same weights** (the raw weights being trained, never the EMA copy, whose lag is not a solver error):

- the training solve: the training solver and dtype, with the **exact** divergence (a Hutchinson
  run's estimator would add noise of +-0.02-0.04 nats to the mean, far above the tolerance);
- the accurate solve: dopri5 at ``--eval_tol`` in float64.

Per point ``d_i = log p_accurate(x_i) - log p_train(x_i)`` (the training NLL minus the accurate NLL).
The step is halved while ``|mean d| > tol`` **or** the ``QUANTILE`` quantile of ``|d_i|`` exceeds
``QUANTILE_FACTOR * tol``: errors of opposite sign cancel in the mean, not in the quantile. When the
step reaches :data:`MIN_STEP` with the gap still open, the record carries a ``warning`` that the run
prints and writes to metrics.json.
"""

from __future__ import annotations

import time

import torch

#: The guard scores this many fixed training points (drawn once, with this seed).
POINTS, SEED = 1000, 7
#: The guard does not refine the training step below this.
MIN_STEP = 1 / 256
#: The per-point statistic: this quantile of |d_i| must stay within QUANTILE_FACTOR x the tolerance.
#: Measured on the README demos' trained models at their default step (rk4 1/4), where the mean gap
#: is within 0.005 nats: the 0.9 quantile of |d_i| is 0.009 and 0.0003 nats (H^2 5gaussians, S^2 4wrapped;
#: tests/test_edges.py recomputes it). 10x the tolerance leaves those runs alone and refines a solve
#: whose per-point errors are large but cancel in the mean.
QUANTILE, QUANTILE_FACTOR = 0.9, 10.0


def gap_statistics(d: torch.Tensor) -> dict:
    """``mean`` of the per-point gaps ``d`` and the :data:`QUANTILE` quantile ``q`` of ``|d|``."""
    d = d.double()
    return {"gap": float(d.mean()), "gap_q": float(torch.quantile(d.abs(), QUANTILE))}


def needs_refinement(stats: dict, tol: float) -> bool:
    return abs(stats["gap"]) > tol or stats["gap_q"] > QUANTILE_FACTOR * tol


class SolverGuard:
    """Checks the training solver of ``model`` on ``x`` (float64 points); see the module docstring."""

    def __init__(self, x: torch.Tensor, tol: float, dtype: torch.dtype, device, chunk: int = 5000):
        self.x, self.tol, self.dtype, self.device, self.chunk = x, float(tol), dtype, device, chunk
        self.log: list[dict] = []
        self.seconds = 0.0

    def per_point_gap(self, model) -> torch.Tensor:
        """``d_i`` for the current weights of ``model`` (the raw model being trained): the accurate float64
        solve minus the training solve in the training dtype (:func:`flows.solver_gap`)."""
        from flows import solver_gap

        lp_train, lp_accurate = solver_gap(model, self.x.to(self.device), dict(train=True, dtype=self.dtype),
                                           chunk=self.chunk)  # fmt: skip
        return lp_accurate - lp_train

    def check(self, model, epoch: int, step_size: float) -> tuple[dict, float]:
        """Score, halve the step while needed (down to :data:`MIN_STEP`); returns ``(record, step)``.

        ``model.set_train_step`` is called for every refinement. The record (epoch, gap, gap_q, the
        step it started from, ``refined_to``/``gap_after``/``gap_q_after`` when refined, ``warning``
        when the floor left the gap open) is appended to :attr:`log`.
        """
        t0 = time.perf_counter()
        stats = gap_statistics(self.per_point_gap(model))
        record = {"epoch": epoch, **stats, "step_size": step_size}
        while needs_refinement(stats, self.tol) and step_size / 2 >= MIN_STEP:
            step_size /= 2
            model.set_train_step(step_size)
            stats = gap_statistics(self.per_point_gap(model))
            record.update(refined_to=step_size, gap_after=stats["gap"], gap_q_after=stats["gap_q"])
        if needs_refinement(stats, self.tol):
            record["warning"] = (
                f"solver guard: at the smallest step ({step_size:g}) the training solve still differs from the "
                f"accurate one (mean {stats['gap']:+.4f} nats, {QUANTILE:.0%} quantile of |gap| "
                f"{stats['gap_q']:.4f}; tolerance {self.tol:g}, {QUANTILE_FACTOR * self.tol:g}); the training NLL "
                "is not trustworthy: use an adaptive --solver or a lower --lr"
            )
        self.log.append(record)
        self.seconds += time.perf_counter() - t0
        return record, step_size
