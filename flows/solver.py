"""How one ODE solve is carried out: torchdiffeq's method names, tolerances and fixed steps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

SOLVER_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "rk4", "midpoint", "euler")
FIXED_STEP = ("rk4", "midpoint", "euler")


class SolverError(RuntimeError):
    """A solve that ran past its step limit or produced non-finite values."""


@dataclass
class SolverSettings:
    """How one ODE solve is carried out (torchdiffeq names).

    ``step_size`` is used by fixed-step methods (``rk4``, ``midpoint``, ``euler``); ``max_nfe`` caps
    the function evaluations of one forward solve so that a runaway solve raises instead of hanging.

    ``time_warp`` ``p >= 1`` (fixed steps only): the grid is uniform with step ``step_size`` in
    ``s = t^(1/p)``, i.e. the times ``t = s^p`` of the flow's interval [0, 1], dense at ``t = 0`` where
    the flow meets the data (see :func:`time_grid`). 1: torchdiffeq's uniform grid.

    ``pointwise`` (evaluation only, no gradients; ``dopri5`` or ``rk4``): every point is solved on its own,
    with its own charts and, for dopri5, its own steps and error control (:mod:`flows.pointwise`), instead
    of one solve of the batch.
    """

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    step_size: float | None = None
    adjoint: bool = False
    max_nfe: int = 20_000
    time_warp: float = 1.0
    pointwise: bool = False

    def __post_init__(self):
        if self.method not in SOLVER_METHODS:
            raise ValueError(f"unknown solver {self.method!r}; valid: {', '.join(SOLVER_METHODS)}")
        if self.method in FIXED_STEP and not (self.step_size and self.step_size > 0):
            raise ValueError(f"solver {self.method!r} needs a positive step_size")
        if self.atol <= 0 or self.rtol <= 0:
            raise ValueError("atol and rtol must be positive")
        if not (1 <= self.time_warp < float("inf")):
            raise ValueError(f"time_warp must be a finite number >= 1, got {self.time_warp!r}")
        if self.pointwise and self.method not in ("dopri5", "rk4"):
            raise ValueError(f"pointwise solves are dopri5 or rk4, not {self.method!r}")
        if self.pointwise and self.adjoint:
            raise ValueError("pointwise solves are for evaluation: no adjoint")
        if self.time_warp != 1 and self.method not in FIXED_STEP:
            raise ValueError(
                f"time_warp is for the fixed-step solvers ({', '.join(FIXED_STEP)}), not {self.method!r}"
            )

    def odeint_kwargs(self):
        kw = dict(method=self.method, atol=self.atol, rtol=self.rtol)
        if self.method in FIXED_STEP and self.time_warp == 1:
            kw["options"] = dict(step_size=self.step_size)
        elif self.method in FIXED_STEP:
            h, p = self.step_size, self.time_warp
            kw["options"] = dict(grid_constructor=lambda f, y0, t: time_grid(t[0], t[-1], h, y0, p))
        return kw


def as_config(s: SolverSettings) -> dict:
    """``s`` as plain data for a model's config (``pointwise`` only when set: configs as before otherwise)."""
    d = asdict(s)
    if not d["pointwise"]:
        del d["pointwise"]
    return d


def settings(s, defaults) -> SolverSettings:
    return s if isinstance(s, SolverSettings) else SolverSettings(**{**defaults, **(s or {})})


def rk4_grid(t0, t1, step_size: float, like):
    """torchdiffeq's fixed grid from ``t0`` to ``t1`` (tensors of the state's dtype): ``ceil(|t1 - t0| / h) + 1``
    points ``t0 + k h`` (``h`` signed like ``t1 - t0``), the last one replaced by ``t1``.

    One difference: the number of steps is counted in float64 with a relative slack of 1e-9, so that a
    segment that is a whole number of steps long up to rounding gets exactly that many (torchdiffeq's count,
    in the state's dtype, adds a step of ~1e-16 to the middle one of 3 charts of step 1/3 in float64: 4
    wasted evaluations). Dyadic steps and charts (1/4 on 4 charts, ...) give torchdiffeq's grid exactly."""
    t = torch.tensor([t0, t1], dtype=like.dtype, device=like.device)
    h = step_size if t1 >= t0 else -step_size
    n = max(1, math.ceil(abs(float(t1) - float(t0)) / step_size * (1 - 1e-9))) + 1
    grid = torch.arange(0, n, dtype=t.dtype, device=t.device) * h + t[0]
    grid[-1] = t[1]
    return grid


def time_grid(t0, t1, step_size: float, like, warp: float = 1.0):
    """The fixed grid from ``t0`` to ``t1``: :func:`rk4_grid` for ``warp = 1``; otherwise uniform in
    ``s = t^(1/warp)`` with at most ``step_size`` between points, mapped back by ``t = s^warp`` (times in
    [0, 1]). Flow matching's fields are sharpest where the flow meets the data (``t = 0``): with
    ``warp = 2`` a map of the volcano model at rk4 step 1/32 is closer to the scoring solve (0.002 nats on
    the validation events) than the uniform grid at 1/128 (0.004), at a quarter of the evaluations."""
    if warp == 1:
        return rk4_grid(t0, t1, step_size, like)
    t0, t1 = float(t0), float(t1)
    if not (0 <= t0 <= 1 and 0 <= t1 <= 1):
        raise ValueError(f"a warped time grid needs times in [0, 1], got {t0}, {t1}")
    s0, s1 = t0 ** (1 / warp), t1 ** (1 / warp)
    n = max(1, math.ceil(abs(s1 - s0) / step_size - 1e-9))
    t = torch.linspace(s0, s1, n + 1, dtype=torch.float64) ** warp
    t[0], t[-1] = t0, t1
    return t.to(like.dtype).to(like.device)


def rk4_solve(func, state0, t0: float, t1: float, step_size: float, fixed: int = 2, warp: float = 1.0):
    """A fixed-step rk4 solve of ``func`` on a tuple state, from ``t0`` to ``t1``: the numbers of
    ``torchdiffeq.odeint(method="rk4", options=dict(step_size=...))`` (its 3/8-rule step on the same grid,
    the same operations in the same order), without its per-evaluation flattening of the tuple or its
    solution buffer. Entry ``fixed`` of the state (the chart centre) has zero velocity: it is carried, not
    updated. ``warp``: the grid of :func:`time_grid`. Returns the state at ``t1``.
    """
    grid = time_grid(t0, t1, step_size, state0[0], warp)
    third, two_thirds = 1 / 3, 2 / 3
    y0 = list(state0)
    p = y0.pop(fixed)

    def f(t, y):
        out = list(func(t, (*y[:fixed], p, *y[fixed:])))
        del out[fixed]
        return out

    for a, b in zip(grid[:-1], grid[1:], strict=True):
        dt = b - a
        k1 = f(a, y0)
        k2 = f(a + dt * third, [y + dt * k * third for y, k in zip(y0, k1, strict=True)])
        k3 = f(
            a + dt * two_thirds, [y + dt * (kb - ka * third) for y, ka, kb in zip(y0, k1, k2, strict=True)]
        )
        k4 = f(b, [y + dt * (ka - kb + kc) for y, ka, kb, kc in zip(y0, k1, k2, k3, strict=True)])
        y0 = [
            y + (ka + 3 * (kb + kc) + kd) * dt * 0.125
            for y, ka, kb, kc, kd in zip(y0, k1, k2, k3, k4, strict=True)
        ]
    return (*y0[:fixed], p, *y0[fixed:])
