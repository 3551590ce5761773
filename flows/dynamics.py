"""The ODE function of one chart: the chart velocity and its divergence (exact or Hutchinson)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import divergence as div_mod
from . import fused
from .interrupts import check as check_interrupt
from .interrupts import deferred
from .solver import SolverError


class _ChartExit(Exception):
    """Raised inside a fixed-chart solve when ``|v|`` passes the chart guard (caught by MCNF)."""


@dataclass(frozen=True)
class SolveContext:
    """What one solve of one chart segment tells the ODE function; the MCNF builds one per segment and
    passes it with every evaluation (``dynamics.bind(ctx)``), so nothing of a solve outlives it.

    ``with_div``: integrate the divergence (``False`` for samples without their log-density);
    ``noise``: Hutchinson's probe vectors (training with ``divergence="hutchinson"``); ``max_nfe``: the
    evaluation cap (:class:`flows.SolverError` beyond it); ``basis``: the segment's fixed chart basis
    (``None``: rebuilt from the state's chart centre, as the adjoint's backward solve needs); ``guard``:
    a fixed chart's bound on ``|v|`` (``None``: none). The regularizers' integrand is carried when the
    state has a fourth entry (see ``MCNF.log_prob_and_regularization``).
    """

    with_div: bool = True
    noise: torch.Tensor | None = None
    max_nfe: int | None = None
    basis: torch.Tensor | None = None
    guard: float | None = None


#: The context of a plain call ``dynamics(t, state)``.
PLAIN = SolveContext()


class ChartDynamics(nn.Module):
    """The ODE function of one chart: state ``(v, int_div, p)`` -> ``(g, tr(dg/dv), 0)``.

    ``g(t, v) = E D(log_p)(y)[f(t, y)]`` at ``y = phi_p(v)`` uses the manifold's closed form
    (:meth:`manifolds.Manifold.chart_velocity`). The chart centre ``p`` rides along in the state
    with zero velocity so that the adjoint method carries gradients back to it (``p`` is the
    output of the previous segment). The divergence is computed as described in
    :mod:`flows.divergence`.
    """

    def __init__(self, manifold, field, divergence: str = "exact"):
        super().__init__()
        self.manifold, self.field = manifold, field
        if divergence not in div_mod.DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(div_mod.DIVERGENCES)}")
        self.divergence = divergence
        self.nfe = 0  # evaluations since the MCNF's solve began (a statistic; the trainer reports it)
        self.compiled = False  # use the torch.compile'd divergence in training (see MCNF.compile_ode)
        self.reg_weights = (0.0, 0.0)  # (kinetic, jacobian): see MCNF's regularization
        # the exact divergence as one autograd node where flows/fused.py covers the model (the same numbers
        # to rounding; False: always the generic path)
        self.fused = True

    def _fusable(self) -> bool:
        """Whether :mod:`flows.fused` covers this model's exact divergence (and is not switched off)."""
        return self.fused and fused.supports(self.manifold, self.field, self.divergence)

    def runs_fused(self) -> bool:
        """Whether a training solve runs through :mod:`flows.fused` (when not compiled): the regularizers'
        integrands (``reg_weights``) run the generic path."""
        return self._fusable() and not any(self.reg_weights)

    def runs_native(self, device, dtype) -> bool:
        """Whether a training solve on ``device`` with the model in ``dtype`` runs through the C++ kernel of
        :mod:`flows.native` (builds it on first use)."""
        return self.runs_fused() and fused.runs_native(self.manifold, self.field, device, dtype)

    def velocity(self, t, v, p, E):
        """``g(t, v)``: the vector field in chart coordinates, shape ``(B, n)``."""
        coef = self.manifold.chart_coefficients(p, v, E)
        return self.manifold.chart_velocity(p, v, self.field(t, coef["y"]), E, coef)

    def bind(self, ctx: SolveContext):
        """The ODE function ``f(t, state)`` of one solve, with its context."""
        return functools.partial(self, ctx=ctx)

    def forward(self, t, state, ctx: SolveContext = PLAIN):
        v, p = state[0], state[2]
        reg = len(state) == 4  # (v, int div, p, int of the regularizers' integrand)
        self.nfe += 1
        check_interrupt()  # one a callback swallowed (flows/interrupts.py)
        if ctx.max_nfe is not None and self.nfe > ctx.max_nfe:
            raise SolverError(
                f"ODE solve exceeded {ctx.max_nfe} function evaluations (stiff or diverging dynamics); "
                "loosen atol/rtol, use a fixed-step solver, or lower the learning rate"
            )
        M = self.manifold
        # the chart basis is fixed on a segment; only the adjoint needs it rebuilt from the state
        E = ctx.basis if ctx.basis is not None else M.tangent_basis(p)
        if not ctx.with_div:
            g, div = self.velocity(t, v, p, E), torch.zeros_like(v[..., 0])
        elif self.divergence == "exact_autograd":
            g, div = div_mod.exact_autograd(lambda vv: self.velocity(t, vv, p, E), v)
        else:
            noise = ctx.noise if self.divergence == "hutchinson" else None
            out = None
            if self.compiled and self.training and torch.is_grad_enabled():
                # One compiled graph for every evaluation: the graph depends on which inputs require
                # gradients, and the first stage's v (zeros) and the first chart's centre (the data) do
                # not. Fresh leaves that do (their gradients are not used) spare two more compilations.
                if not v.requires_grad:
                    v = v.detach().requires_grad_()
                if not p.requires_grad:
                    p = p.detach().requires_grad_()
                if E is not None and not E.requires_grad:
                    E = E.detach().requires_grad_()
                try:
                    with deferred():  # an interrupt during compilation waits for it (flows/interrupts.py)
                        fn = _compiled_chart_divergence(v.device.type)
                        out = fn(M, self.field, t, p, v, E, noise=noise, reg=reg)
                except Exception as e:  # no C++ compiler, an unsupported backend: run eagerly from now on
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    warnings.warn(
                        f"torch.compile failed ({first[:200]}); the ODE function runs eagerly", stacklevel=2
                    )
                    self.compiled = False
            if out is None and not reg and v.dim() == 2 and self._fusable():
                out = fused.exact_divergence(M, self.field, t, p, v, E)
            if out is None:
                out = div_mod.chart_divergence(M, self.field, t, p, v, E, noise=noise, reg=reg)
            g, div = out[:2]
            if reg:
                w_ke, w_jf = self.reg_weights
                r = w_ke * out[2] + w_jf * out[3]
        finite, over = _checks(g, div, v, ctx.guard)
        if over:
            raise _ChartExit
        if not finite:
            raise SolverError(f"non-finite ODE state at t={float(t):.4f}")
        return (g, div, torch.zeros_like(p), r) if reg else (g, div, torch.zeros_like(p))


def _checks(g, div, v, guard):
    """``(finite, over)``: whether ``g`` and ``div`` are finite and whether some ``|v|`` passes the chart
    guard (the guard wins: beyond it the state may well be non-finite, and the segment is redone with
    re-centring). On the CPU in numpy (a few microseconds, against about 15 for the same in torch ops,
    per evaluation); elsewhere one host synchronization for both."""
    if g.device.type == "cpu" and g.dtype in (torch.float32, torch.float64) and v.dtype == g.dtype:
        total = g.detach().numpy().sum() + div.detach().numpy().sum()  # any inf or NaN reaches the sum
        vn = v.detach().numpy()
        over = guard is not None and bool(np.sqrt((vn * vn).sum(-1).max(initial=0.0)) > guard)
        return bool(np.isfinite(total)), over
    finite = torch.isfinite(g.sum() + div.sum())
    over = (v.detach().norm(dim=-1) > guard).any() if guard is not None else torch.zeros_like(finite)
    return torch.stack([finite, over]).tolist()


@functools.cache
def _compiled_chart_divergence(device_type: str = "cpu"):
    """:func:`flows.divergence.chart_divergence` through ``torch.compile`` (built on first use).

    One compiled function for all models. The manifold and field are arguments: Dynamo guards on
    them (and on the tensors' shapes, dtypes and ``requires_grad``) and recompiles when a guard
    fails, and the weights are read from the field passed in, so no model runs with another's
    weights (tests/test_speed.py checks two compiled models side by side).

    On the CPU the compiled graph is called through inductor's C++ wrapper (``cpp_wrapper``) instead of
    its Python one: the graph's ~20 kernels and matrix products are launched from C++, which made a
    compiled training step 8-10% faster (H^2 0.0279 / 0.0264 -> 0.0243 / 0.0238 s, S^2 0.0203 / 0.0216
    -> 0.0193 / 0.0191 s, one thread, two runs of 80 steps each) at the same compilation time (cold
    19.3 -> 20.0 s, warm 3.0 -> 3.0 s on H^2). Other devices keep inductor's defaults (never run here).
    """
    # inductor imports torch.jit's deprecated script_method: torch's business, not the
    # user's, so its DeprecationWarning is not printed to every compiled run (it is the only one filtered)
    warnings.filterwarnings("ignore", message=r".*script_method.*deprecated", category=DeprecationWarning,
                            module=r"torch\.jit")  # fmt: skip
    options = {"cpp_wrapper": True} if device_type == "cpu" else None
    return torch.compile(div_mod.chart_divergence, options=options)
