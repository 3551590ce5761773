"""Every point its own solve: log-densities of an MCNF with the error controlled point by point.

The MCNF's solves (:mod:`flows.mcnf`) integrate a batch together: one step size for all points (chosen by
torchdiffeq from an error norm over the whole batch) and, on a fixed chart, a re-centring of the whole
batch's segment when any one point passes the chart guard. Both are right for training and for scoring a
test set, but they make a point's computed value depend on the other points of its batch, and a fixed step
calibrated where the data are can be far off where they are not: a density map's grid cells far from the
events are the points a sharp flow-matching model moves fastest (``python -m scripts.map_check``).

:func:`pointwise_log_prob` solves the same ODE (the chart velocity and its exact divergence, docs/math.md,
"Charts and the change of variables") with the Dormand-Prince 5(4) pair, and gives each point

- its own time and step size, accepted or rejected by its own error: the largest of its chart coordinates'
  and its divergence integral's local errors, each over ``atol + rtol |value|`` (a max norm, where
  torchdiffeq's default is a root mean square over the batch);
- its own charts: after an accepted step a point whose ``|v|`` passed ``model.chart_radius`` (pi/2 on the
  sphere) is re-centred at its current position, alone; a step that would carry it past the chart guard
  (``3 pi / 4``) is rejected and halved.

So a point's value does not depend on its batch (to float rounding), and its error is within the tolerance
wherever it lies. The flow map does not depend on where charts change, so the result is the same function as
the MCNF's own ``log_prob`` (the scoring solve), to the tolerances of both. Cost: the sum over points of
their own numbers of steps, where a batch solve pays the stiffest point's count for every point; the
points that are done drop out of the batch.
"""

from __future__ import annotations

import torch

from .divergence import chart_divergence
from .solver import SolverError

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


@torch.no_grad()
def pointwise_log_prob(model, x, atol: float | None = None, rtol: float | None = None, chunk: int = 4096,
                       max_steps: int = 20_000, h0: float = 0.02, stats: dict | None = None):  # fmt: skip
    """``log p(x)`` of an MCNF, each point solved on its own (module docstring). Returns ``model``'s dtype.

    ``atol``, ``rtol``: default to the model's evaluation solver's (the scoring tolerance). ``chunk``: points
    solved in one batch. ``max_steps``: accepted and rejected steps of one point before
    :class:`flows.SolverError`. ``stats``: a dict that receives the evaluations per point (``nfe``, a
    tensor), the re-centrings (``recentred``) and rejected steps (``rejected``).
    """
    if not hasattr(model, "dynamics"):
        raise ValueError(f"pointwise_log_prob solves an MCNF, not a {type(model).__name__}")
    model._check(x)
    atol = model.eval_solver.atol if atol is None else float(atol)
    rtol = model.eval_solver.rtol if rtol is None else float(rtol)
    dtype = next(model.parameters()).dtype
    x = model._cast(x.to(dtype))
    parts, info = [], {"nfe": [], "recentred": 0, "rejected": 0}
    for xs in x.split(chunk):
        z, D, st = _solve(model, xs, atol, rtol, max_steps, h0)
        parts.append(model.base(z.dtype, z.device).log_prob(z) + D)
        info["nfe"].append(st["nfe"])
        info["recentred"] += st["recentred"]
        info["rejected"] += st["rejected"]
    if stats is not None:
        stats.update(info, nfe=torch.cat(info["nfe"]) if info["nfe"] else torch.zeros(0, dtype=torch.long))
    return torch.cat(parts).to(dtype) if parts else x.new_zeros(0)


def _solve(model, x, atol, rtol, max_steps, h0):
    """Flow ``x`` from ``t = 0`` to ``t = 1``; returns ``(z, D, stats)`` with ``log p(x) = log p_base(z) + D``."""
    M, field = model.manifold, model.field
    B_ = len(x)
    radius = model.chart_radius
    guard = M.chart_guard_radius if M.chart_guard_radius is not None else float("inf")
    # each point: its chart (centre p, basis Eb), coordinate v, divergence integral I in this chart,
    # the sum D of the finished charts' contributions, time t and step h
    p, Eb = x.clone(), M.tangent_basis(x)
    v = x.new_zeros(B_, M.dim)
    I, D = x.new_zeros(B_), x.new_zeros(B_)
    t, h = x.new_zeros(B_), x.new_full((B_,), h0)
    nfe = torch.zeros(B_, dtype=torch.long)
    steps = torch.zeros(B_, dtype=torch.long)
    k1v, k1i = x.new_zeros(B_, M.dim), x.new_zeros(B_)
    fresh = torch.ones(B_, dtype=torch.bool)  # k1 must be evaluated (first step, or a new chart)
    stats = {"recentred": 0, "rejected": 0}

    def f(tt, vv, idx):
        return chart_divergence(M, field, tt, p[idx], vv, Eb[idx])

    active = torch.arange(B_)
    while len(active):
        a = active
        need = fresh[a]
        if need.any():
            i = a[need]
            k1v[i], k1i[i] = f(t[i], v[i], i)
            nfe[i] += 1
            fresh[i] = False
        ta, ha, va, Ia = t[a], h[a].clamp(max=1 - t[a]), v[a], I[a]
        kv, ki = [k1v[a]], [k1i[a]]
        for s in range(1, 7):
            vs = va + ha[:, None] * sum(c * k for c, k in zip(A[s], kv, strict=False) if c)
            g, d = f(ta + C[s] * ha, vs, a)
            kv.append(g)
            ki.append(d)
        nfe[a] += 6
        v5 = va + ha[:, None] * sum(b * k for b, k in zip(B, kv, strict=True) if b)
        I5 = Ia + ha * sum(b * k for b, k in zip(B, ki, strict=True) if b)
        ev = ha[:, None] * sum(e * k for e, k in zip(E, kv, strict=True) if e)
        ei = ha * sum(e * k for e, k in zip(E, ki, strict=True) if e)
        ratio = torch.maximum(
            (ev.abs() / (atol + rtol * torch.maximum(va.abs(), v5.abs()))).amax(-1),
            ei.abs() / (atol + rtol * torch.maximum(Ia.abs(), I5.abs())),
        )
        ratio = torch.where(
            torch.isfinite(ratio) & torch.isfinite(v5).all(-1) & torch.isfinite(I5), ratio, torch.inf
        )
        past_guard = v5.norm(dim=-1) > guard
        ok = (ratio <= 1) & ~past_guard
        # the next step (or the retry): the usual controller for a fifth-order solution
        factor = (SAFETY * ratio.clamp(min=1e-10) ** -0.2).clamp(MIN_FACTOR, MAX_FACTOR)
        factor = torch.where(ok, factor, factor.clamp(max=1.0))
        factor = torch.where(past_guard, torch.full_like(factor, 0.5), factor)
        h[a] = ha * factor
        stats["rejected"] += int((~ok).sum())
        steps[a] += 1
        if int(steps[a].max()) > max_steps:
            raise SolverError(f"a point needed more than {max_steps} steps (stiff or diverging dynamics)")
        if bool((h[a] < 1e-12).any()):
            raise SolverError("the step size of a point fell below 1e-12 (non-finite or diverging dynamics)")
        i = a[ok]
        t[i] = torch.where(ha[ok] >= 1 - ta[ok], torch.ones_like(ta[ok]), ta[ok] + ha[ok])
        v[i], I[i] = v5[ok], I5[ok]
        k1v[i], k1i[i] = kv[6][ok], ki[6][ok]  # first same as last
        # a new chart, at the point itself, for each point that is done or has left the chart's radius
        done = t[a] >= 1
        move = a[ok & (done | (v5.norm(dim=-1) > radius))]
        if len(move):
            y, logdet = M.chart_with_logdet(p[move], v[move], Eb[move])
            y = M.projx(y)
            D[move] += I[move] + logdet
            p[move], Eb[move] = y, M.tangent_basis(y)
            v[move], I[move] = 0.0, 0.0
            moved = move[t[move] < 1]
            fresh[moved] = True
            stats["recentred"] += len(moved)
        active = a[t[a] < 1]
    stats["nfe"] = nfe
    return p, D, stats
