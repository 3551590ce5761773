"""Every point its own solve: an MCNF's flow and log-density with each point's error and charts its own.

The MCNF's solves (:mod:`flows.mcnf`) integrate a batch together: one step size for all points (chosen by
torchdiffeq from an error norm over the whole batch) and, on a fixed chart, a re-centring of the whole
batch's segment when any one point passes the chart guard. Both are right for training and for scoring a
test set, but they make a point's computed value depend on the other points of its batch, and a fixed step
calibrated where the data are can be far off where they are not: a density map's grid cells far from the
events are the points a sharp flow-matching model moves fastest (``python -m scripts.map_check``).

:func:`pointwise_flow` (``SolverSettings(pointwise=True)``; :func:`pointwise_log_prob`) solves the same ODE
(the chart velocity and its exact divergence, docs/math.md, "Charts and the change of variables") and gives
each point

- its own charts: after a step, a point whose ``|v|`` passed ``model.chart_radius`` (pi/2 on the sphere) is
  re-centred at its current position, alone;
- with ``dopri5`` (the Dormand-Prince 5(4) pair), its own time and step size, accepted or rejected by its own
  error: the largest of its chart coordinates' and its divergence integral's local errors, each over
  ``atol + rtol |value|`` (a max norm, where torchdiffeq's default is a root mean square over the batch);
  a step that would carry it past the chart guard (``3 pi / 4``) is rejected and halved;
- with ``rk4``, the fixed grid of :func:`flows.solver.time_grid` (step and time warp), every step taken.

So a point's value does not depend on its batch (to float rounding), and with dopri5 its error is within
the tolerance wherever it lies. The flow map does not depend on where charts change, so the result is the
same function as the batch solve, to the tolerances of both. Cost: the sum over points of their own numbers
of steps, where a batch solve pays the stiffest point's count for every point; points that are done drop
out of the batch. No gradients: this is an evaluation solver.
"""

from __future__ import annotations

import torch

from .divergence import chart_divergence
from .solver import SolverError, SolverSettings, time_grid

# The Dormand-Prince 5(4) tableau (Dormand & Prince 1980; Hairer, Norsett & Wanner, Table II.5.2): nodes C,
# stages A, the fifth-order weights B (also the last stage's row: first same as last) and B - B* for the error.
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
B = A[6] + (0.0,)
B_STAR = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
E = tuple(b - bs for b, bs in zip(B, B_STAR, strict=True))

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
#: the first trial step of a point, as a fraction of its interval (the controller adapts it at once)
H0 = 0.02


def pointwise_log_prob(model, x, atol: float | None = None, rtol: float | None = None, chunk: int = 4096,
                       max_nfe: int | None = None, stats: dict | None = None):  # fmt: skip
    """``log p(x)`` of an MCNF, each point solved on its own by dopri5 (module docstring), in ``model``'s dtype.

    ``atol``, ``rtol``, ``max_nfe`` (evaluations of one point before :class:`flows.SolverError`): default to
    the model's evaluation solver's (the scoring tolerance). ``chunk``: points solved in one batch.
    ``stats``: a dict that receives the evaluations per point (``nfe``), the re-centrings (``recentred``)
    and the rejected steps (``rejected``).
    """
    if not hasattr(model, "dynamics"):
        raise ValueError(f"pointwise_log_prob solves an MCNF, not a {type(model).__name__}")
    ev = model.eval_solver
    s = SolverSettings(method="dopri5", atol=ev.atol if atol is None else float(atol),
                       rtol=ev.rtol if rtol is None else float(rtol), pointwise=True,
                       max_nfe=ev.max_nfe if max_nfe is None else int(max_nfe))  # fmt: skip
    model._check(x)
    dtype = next(model.parameters()).dtype
    x = model._cast(x.to(dtype))
    parts, info = [], {"nfe": [], "recentred": 0, "rejected": 0}
    for xs in x.split(chunk):
        z, D, st = pointwise_flow(model, xs, 0.0, 1.0, True, s)
        parts.append(model.base(z.dtype, z.device).log_prob(z) + D)
        info["nfe"].append(st["nfe"])
        info["recentred"] += st["recentred"]
        info["rejected"] += st["rejected"]
    if stats is not None:
        stats.update(info, nfe=torch.cat(info["nfe"]) if info["nfe"] else torch.zeros(0, dtype=torch.long))
    return torch.cat(parts).to(dtype) if parts else x.new_zeros(0)


class _Points:
    """The per-point state of a pointwise solve: chart centre ``p`` and basis ``Eb``, coordinate ``v``,
    divergence integral ``I`` in the current chart, and ``D``, the finished charts' contributions."""

    def __init__(self, model, x):
        M = self.M = model.manifold
        self.model = model
        self.p, self.Eb = x.clone(), M.tangent_basis(x)
        self.v = x.new_zeros(len(x), M.dim)
        self.I, self.D = x.new_zeros(len(x)), x.new_zeros(len(x))
        self.nfe = torch.zeros(len(x), dtype=torch.long)

    def f(self, t, v, idx, with_div, scale):
        """``(g, div)`` of the points ``idx`` (``None``: all) at coordinates ``v`` and times ``t``, times
        ``scale`` (the direction of time: the solve runs in ``tau = (t - t0) / (t1 - t0)``)."""
        if idx is None:
            self.nfe += 1
            p, Eb = self.p, self.Eb
        else:
            self.nfe[idx] += 1
            p, Eb = self.p[idx], self.Eb[idx]
        M, field = self.M, self.model.field
        if with_div:
            g, div = chart_divergence(M, field, t, p, v, Eb)
        else:
            g, div = self.model.dynamics.velocity(t, v, p, Eb), v.new_zeros(len(v))
        return g * scale, div * scale

    def recentre(self, idx):
        """New charts at the points ``idx`` themselves (their contributions so far go into ``D``)."""
        if not len(idx):
            return
        M = self.M
        y, logdet = M.chart_with_logdet(self.p[idx], self.v[idx], self.Eb[idx])
        y = M.projx(y)
        self.D[idx] += self.I[idx] + logdet
        self.p[idx], self.Eb[idx] = y, M.tangent_basis(y)
        self.v[idx], self.I[idx] = 0.0, 0.0


@torch.no_grad()
def pointwise_flow(model, x, t0: float, t1: float, with_div: bool, s: SolverSettings):
    """Flow the points ``x`` of ``model`` (an MCNF) from ``t0`` to ``t1``, each on its own (module docstring).
    Returns ``(y, D, stats)`` with ``D = log p_t0(x) - log p_t1(y)`` (zeros without ``with_div``) and
    ``stats`` the evaluations per point (``nfe``), re-centrings and rejected steps."""
    P = _Points(model, x)
    n = len(x)
    radius = model.chart_radius
    M = model.manifold
    guard = M.chart_guard_radius if M.chart_guard_radius is not None else float("inf")
    scale = t1 - t0
    stats = {"recentred": 0, "rejected": 0}
    if n and s.method == "rk4":
        # the fixed grid, in t: every step taken, and the charts re-centred per point after each
        grid = time_grid(t0, t1, s.step_size, x, s.time_warp).tolist()
        every = None  # all points, without gathering their charts
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            h, third = b - a, 1 / 3
            v0, I0 = P.v, P.I
            k1 = P.f(a, v0, every, with_div, 1.0)
            k2 = P.f(a + h * third, v0 + h * k1[0] * third, every, with_div, 1.0)
            k3 = P.f(a + 2 * h * third, v0 + h * (k2[0] - k1[0] * third), every, with_div, 1.0)
            k4 = P.f(b, v0 + h * (k1[0] - k2[0] + k3[0]), every, with_div, 1.0)
            P.v = v0 + (k1[0] + 3 * (k2[0] + k3[0]) + k4[0]) * h * 0.125
            P.I = I0 + (k1[1] + 3 * (k2[1] + k3[1]) + k4[1]) * h * 0.125
            if not bool(torch.isfinite(P.v).all() & torch.isfinite(P.I).all()):
                raise SolverError(f"non-finite ODE state at t={b:.4f} (pointwise rk4 step {s.step_size:g})")
            far = torch.nonzero(P.v.norm(dim=-1) > radius).flatten()
            P.recentre(far)
            stats["recentred"] += len(far)
    elif n:
        _dopri5(P, n, with_div, s, t0, scale, radius, guard, stats)
    P.recentre(torch.arange(n))  # the last chart's contribution
    stats["nfe"] = P.nfe
    return P.p, P.D, stats


def _dopri5(P, n, with_div, s, t0, scale, radius, guard, stats):
    """Each point's own adaptive solve over ``tau`` in [0, 1] (time ``t0 + scale * tau``)."""
    x = P.p
    tau, h = x.new_zeros(n), x.new_full((n,), H0)
    k1v, k1i = x.new_zeros(n, P.M.dim), x.new_zeros(n)
    fresh = torch.ones(n, dtype=torch.bool)  # k1 must be evaluated (first step, or a new chart)
    atol, rtol = s.atol, s.rtol
    active = torch.arange(n)
    while len(active):
        a = active
        need = fresh[a]
        if need.any():
            i = a[need]
            k1v[i], k1i[i] = P.f(t0 + scale * tau[i], P.v[i], i, with_div, scale)
            fresh[i] = False
        ta, ha, va, Ia = tau[a], h[a].clamp(max=1 - tau[a]), P.v[a], P.I[a]
        kv, ki = [k1v[a]], [k1i[a]]
        for st in range(1, 7):
            vs = va + ha[:, None] * sum(c * k for c, k in zip(A[st], kv, strict=True) if c)
            g, d = P.f(t0 + scale * (ta + C[st] * ha), vs, a, with_div, scale)
            kv.append(g)
            ki.append(d)
        v5 = va + ha[:, None] * sum(b * k for b, k in zip(B, kv, strict=True) if b)
        I5 = Ia + ha * sum(b * k for b, k in zip(B, ki, strict=True) if b)
        ev = ha[:, None] * sum(e * k for e, k in zip(E, kv, strict=True) if e)
        ei = ha * sum(e * k for e, k in zip(E, ki, strict=True) if e)
        ratio = torch.maximum(
            (ev.abs() / (atol + rtol * torch.maximum(va.abs(), v5.abs()))).amax(-1),
            ei.abs() / (atol + rtol * torch.maximum(Ia.abs(), I5.abs())),
        )
        finite = torch.isfinite(ratio) & torch.isfinite(v5).all(-1) & torch.isfinite(I5)
        ratio = torch.where(finite, ratio, torch.inf)
        past_guard = v5.norm(dim=-1) > guard
        ok = (ratio <= 1) & ~past_guard
        # the next step (or the retry): the usual controller for a fifth-order solution
        factor = (SAFETY * ratio.clamp(min=1e-10) ** -0.2).clamp(MIN_FACTOR, MAX_FACTOR)
        factor = torch.where(ok, factor, factor.clamp(max=1.0))
        h[a] = ha * torch.where(past_guard, torch.full_like(factor, 0.5), factor)
        stats["rejected"] += int((~ok).sum())
        if int(P.nfe[a].max()) > s.max_nfe:
            raise SolverError(
                f"a point's solve exceeded {s.max_nfe} function evaluations (stiff or diverging dynamics)"
            )
        if bool((h[a] < 1e-12).any()):
            raise SolverError("a point's step size fell below 1e-12 (non-finite or diverging dynamics)")
        i = a[ok]
        tau[i] = torch.where(ha[ok] >= 1 - ta[ok], torch.ones_like(ta[ok]), ta[ok] + ha[ok])
        P.v[i], P.I[i] = v5[ok], I5[ok]
        k1v[i], k1i[i] = kv[6][ok], ki[6][ok]  # first same as last
        # a new chart, at the point itself, for each point that has left the chart's radius
        far = a[ok & (v5.norm(dim=-1) > radius) & (tau[a] < 1)]
        P.recentre(far)
        fresh[far] = True
        stats["recentred"] += len(far)
        active = a[tau[a] < 1]
