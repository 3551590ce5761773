"""Evaluation against the exact density: test NLL, entropy and KL with standard errors."""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch

from manifolds import MANIFOLDS, integrate

#: Fixed-step solvers for density figures, where the adaptive dopri5 spends most of its steps on
#: accuracy no colour map shows. Measured against dopri5 at tol 1e-7 on trained demo models, the
#: largest error relative to the peak density is 2e-4 (sphere, rk4 step 1/4) and 1.3e-3
#: (hyperboloid, rk4 step 1/8); float32 suffices with fixed steps.
FIGURE_SOLVER = {name: cls.figure_solver for name, cls in MANIFOLDS.items()}  # (each manifold's own)


def figure_model(model, dtype=torch.float32, accurate: bool = False):
    """A copy of ``model`` (eval mode, ``dtype``) that solves with :data:`FIGURE_SOLVER`, or with the
    model's own fixed training step where that is finer.

    ``accurate=True``: a float64 copy with the model's own evaluation solver (dopri5). For fields
    not trained through a fixed-step solve (``--objective fm``), whose sharp peaks a coarse rk4 step
    gets badly wrong (a volcano model: NLL -11.4 at rk4 step 1/4 against -5.2 with dopri5 at 1e-5
    on its training split, ``python -m scripts.solver_gap``). A cheaper float32 dopri5 at 1e-4 was
    tried and rejected: accurate at 383 test points (median error 0.002 nats) but its volcano map
    lost most of the density that the float64 map shows.
    """
    from .solver import SolverSettings

    if accurate:  # float64 and the model's own evaluation solver (dtype is ignored)
        return copy.deepcopy(model).to(torch.float64).eval()
    if not hasattr(model, "eval_solver"):  # a discrete baseline flow (flows.baselines): no solver to set
        return copy.deepcopy(model).to(dtype).eval()
    m = copy.deepcopy(model).to(dtype).eval()
    settings = dict(m.manifold.figure_solver)
    train = m.train_solver
    if train.step_size is not None and train.method == settings["method"]:
        # never coarser than the steps the model was trained with (sharp models, e.g. Earth data)
        settings["step_size"] = min(settings["step_size"], train.step_size)
    m.eval_solver = SolverSettings(**settings)
    return m


@torch.no_grad()
def model_log_prob(model, x, chunk: int = 5000):
    """``model.log_prob`` in chunks, without autograd graphs; returns a CPU float64 tensor."""
    out = []
    x = x.to(next(model.parameters()))
    for i in range(0, x.shape[0], chunk):
        out.append(model.log_prob(x[i : i + chunk]).double().cpu())
    return torch.cat(out)


def solve_copy(model, solver=None, *, train: bool = False, dtype=torch.float64):
    """A copy of ``model`` in ``dtype`` set to solve one way: its training solve (``train=True``: the fixed
    training step, the exact divergence instead of a Hutchinson estimate, no compiled function), or its
    evaluation solve with ``solver`` (a :class:`flows.SolverSettings`; ``None``: its own)."""
    m = copy.deepcopy(model).to(dtype).train(train)
    dyn = getattr(m, "dynamics", None)
    if dyn is not None:
        dyn.compiled = False
        if train and dyn.divergence == "hutchinson":
            dyn.divergence = "exact"  # the same weights without the estimator's noise
    if solver is not None:
        m.eval_solver = solver
    return m


@torch.no_grad()
def solver_gap(
    model, x, candidate: dict, reference: dict | None = None, chunk: int = 5000, lp_reference=None
):
    """The solver gap, computed in one place: ``log p(x)`` of ``model`` solved the ``candidate`` way and the
    ``reference`` way (keyword arguments of :func:`solve_copy`; the reference defaults to the model's own
    float64 evaluation solve, the one that scores it; ``lp_reference``: its values, when already known).
    Returns the per-point ``(lp_candidate, lp_reference)`` (CPU float64); their difference is what the
    solver guard (:mod:`train.guard`), ``python -m scripts.solver_gap``, the tight-tolerance checks of
    ``scripts.earth_kde`` and the map solver (:func:`calibrated_map_model`) report."""
    if lp_reference is None:
        lp_reference = model_log_prob(solve_copy(model, **(reference or {})), x, chunk)
    return model_log_prob(solve_copy(model, **candidate), x, chunk), lp_reference


#: The fixed steps tried for a map (:func:`calibrated_map_model`), coarsest first.
MAP_STEPS = (1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128)
#: The time grids tried at each step: dense where the flow meets the data (``t = s^2``), then uniform
#: (:func:`flows.solver.time_grid`).
MAP_WARPS = (2.0, 1.0)


@torch.no_grad()
def calibrated_map_model(model, x, tol: float = 0.02, chunk: int = 5000, steps=MAP_STEPS, warps=MAP_WARPS):
    """A copy of ``model`` for density maps: float32, rk4 with the coarsest of ``steps`` (on the first of
    ``warps``' time grids that qualifies) whose log-density on the points ``x`` (e.g. a validation split)
    is within ``tol`` nats on average of the solve that scores the model. A map of a sharp flow-matching
    model with the scoring solve (dopri5 in float64) takes minutes per thousand grid points; a calibrated
    fixed step takes seconds, and its error is measured, not assumed. An MCNF's copy solves point by point
    (``SolverSettings(pointwise=True)``: each point's charts its own, so a grid cell's value does not depend on
    the other cells of its chunk). Returns ``(copy, step, mean |difference| on x)`` (the grid is
    ``copy.eval_solver.time_warp``); the finest step on the last grid when none meets ``tol``.
    """
    from .solver import SolverSettings

    pointwise = hasattr(model, "dynamics")
    ref = None
    for h in steps:
        for w in warps:
            s = SolverSettings(method="rk4", step_size=h, time_warp=w, pointwise=pointwise)
            how = dict(solver=s, dtype=torch.float32)
            lp, ref = solver_gap(model, x, how, chunk=chunk, lp_reference=ref)
            err = float((lp - ref).abs().mean())
            if err <= tol or (h == steps[-1] and w == warps[-1]):
                return solve_copy(model, **how), h, err


def evaluate(model, log_prob_true, x_test, chunk: int = 5000) -> dict:
    """Test NLL, entropy and ``KL(p_true || p_model)`` on samples ``x_test`` of the true density.

    ``kl = mean(log p_true - log p_model)`` over the test set, and ``kl_stderr`` the standard error
    of those paired differences (docs/math.md, "Evaluation protocol"). ``log_prob_true`` may be None
    (real data): then only ``test_nll`` and its standard error are returned.
    """
    was_training = model.training
    model.eval()
    try:
        lp_model = model_log_prob(model, x_test, chunk)
    finally:
        model.train(was_training)
    lp_true = None if log_prob_true is None else log_prob_true(x_test.cpu().double()).double()
    return metrics_from_log_probs(lp_model, lp_true)


def metrics_from_log_probs(lp_model, lp_true=None) -> dict:
    """The evaluation metrics from per-sample model (and true) log-densities."""
    n = lp_model.numel()
    out = {
        "test_nll": float(-lp_model.mean()),
        "test_nll_stderr": float(lp_model.std() / math.sqrt(n)),
        "n_test": n,
    }
    if lp_true is not None:
        d = lp_true - lp_model
        out.update(
            entropy=float(-lp_true.mean()), kl=float(d.mean()), kl_stderr=float(d.std() / math.sqrt(n))
        )
    return out


@torch.no_grad()
def model_integral(model, chunk: int = 20000, **grid) -> float:
    """Quadrature integral of the model density over the (2-dimensional) manifold; should be 1."""
    model.eval()
    p = next(model.parameters())
    return integrate(lambda x: model.log_prob(x.to(p)), model.manifold, chunk=chunk, **grid)


class ISEstimate(NamedTuple):
    """An importance-sampling integral: the estimate, its standard error, and the effective sample size
    ``(sum w)^2 / sum w^2`` of its weights (Kish). A small ``ess`` (a few dozen of thousands) means a
    few weights carry the mean: the standard error is then itself unreliable and the estimate is
    usually low (heavy-tailed weights), whatever it says."""

    estimate: float
    stderr: float
    ess: float


@torch.no_grad()
def importance_integral(
    log_prob, proposal, n: int = 100_000, chunk: int = 20000, generator=None
) -> ISEstimate:
    """Unbiased Monte Carlo estimate of ``integral_M exp(log_prob(x)) dvol(x)`` and its standard error.

    Draws ``x_i ~ proposal`` (an exactly normalized distribution with ``sample`` and ``log_prob``)
    and averages ``p(x_i) / q(x_i)``. Unlike a fixed quadrature grid, this stays exact in
    expectation for densities with peaks narrower than any grid cell, provided the proposal covers
    them: use a defensive mixture such as ``Mixture([UniformSphere(), VonMisesFisherKDE(data, k)])``,
    whose uniform half bounds the weights by ``2 area(M) max p``.
    Returns an :class:`ISEstimate` ``(estimate, stderr, ess)``.
    """
    ws = []
    for i in range(0, n, chunk):
        x = proposal.sample(min(chunk, n - i), generator=generator)
        ws.append((log_prob(x).double().cpu() - proposal.log_prob(x).double().cpu()).exp())
    w = torch.cat(ws)
    ess = float(w.sum() ** 2 / (w * w).sum()) if bool((w > 0).any()) else 0.0
    return ISEstimate(float(w.mean()), float(w.std() / math.sqrt(w.numel())), ess)


def nearest_neighbour_concentrations(centers, scales=(0.1, 1.0, 10.0), max_kappa: float = 1e10):
    """Per-centre vMF concentrations ``s / d_i^2`` for each scale ``s``, with ``d_i`` the chord to the
    nearest other centre (an adaptive kernel width: narrow where the centres crowd into a sharp peak,
    wide where they are sparse). Coincident centres take the ``max_kappa`` bound."""
    c = centers.double()
    d2 = torch.cdist(c, c).pow(2)
    d2.fill_diagonal_(float("inf"))
    nn2 = d2.min(-1).values.clamp(min=1 / max_kappa)
    return [(s / nn2).clamp(max=max_kappa) for s in scales]


def defensive_proposal(centers, concentrations=(30.0, 300.0, 3000.0, 30000.0), adaptive=(0.1, 1.0, 10.0)):
    """Importance proposal on ``S^n`` for densities concentrated near ``centers`` (``(K, n+1)``):
    an equal-weight mixture of the uniform distribution, one vMF kernel density estimate at the
    centres per fixed concentration and, on ``S^2``, one per scale of ``adaptive``
    (:func:`nearest_neighbour_concentrations`: kernels as narrow as the centres' spacing, for models
    whose peaks are sharper than any fixed kernel). Exactly normalized whatever the centres are; the
    uniform part bounds the weights ``p / q`` by ``(1 + number of kernels) area(S^n) max p``."""
    from manifolds.distributions import AdaptiveVonMisesFisherKDE, Mixture, UniformSphere, VonMisesFisherKDE

    centers = centers.double().cpu()
    kdes = [VonMisesFisherKDE(centers, k) for k in concentrations]
    if adaptive and centers.shape[-1] == 3 and len(centers) > 1:
        kdes += [
            AdaptiveVonMisesFisherKDE(centers, k) for k in nearest_neighbour_concentrations(centers, adaptive)
        ]
    return Mixture([UniformSphere(centers.shape[-1] - 1), *kdes])


@torch.no_grad()
def model_integral_is(model, n: int = 40_000, n_centers: int = 4000, generator=None, chunk: int = 10000):
    """Importance-sampling integral of a sphere model's density (an :class:`ISEstimate`).

    The proposal is :func:`defensive_proposal` centred at ``n_centers`` samples of the model itself,
    so it follows the model's mass however sharp its peaks are (a fixed quadrature grid does not:
    a 200x400 grid has cells of 0.9 degrees). The samples only place the proposal; the estimate is
    unbiased whatever they are. Returns ``(estimate, stderr, ess)``.
    """
    if not model.manifold.compact:
        raise ValueError(
            f"model_integral_is needs a compact manifold (the sphere), not the {model.manifold.name}"
        )
    model.eval()
    centers = torch.cat([model.sample(min(chunk, n_centers - i), generator=generator)
                         for i in range(0, n_centers, chunk)])  # fmt: skip
    proposal = defensive_proposal(centers)
    p = next(model.parameters())

    def log_prob(x):
        return torch.cat([model.log_prob(x[i : i + chunk].to(p)) for i in range(0, x.shape[0], chunk)])

    return importance_integral(log_prob, proposal, n=n, chunk=chunk, generator=generator)
