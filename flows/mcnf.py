"""Manifold Continuous Normalizing Flow (MCNF) with multi-chart (dynamic chart) integration.

The flow is the neural ODE ``dx/dt = f(t, x)`` on the manifold, mapping data ``x`` at ``t = 0`` to
a base point ``z`` at ``t = 1``. Time is split into segments; on each segment the state is the
coordinate ``v in R^n`` of the exponential-map chart ``phi_p(v) = expmap(p, sum_i v_i e_i)`` at a
chart centre ``p`` (by default the point where the segment starts), and the ODE solved by
torchdiffeq is the Euclidean one

    dv/dt = g(t, v) = E D(log_p)(phi_p(v))[f(t, phi_p(v))],        (chart dynamics)
    d(int)/dt = tr(dg/dv),                                           (divergence)

with ``E`` the ``(n, n+1)`` matrix of the orthonormal basis ``tangent_basis(p)``. Each segment
contributes (docs/math.md, "Charts and the change of variables")

    delta_k = int_{t_k}^{t_(k+1)} tr(dg/dv) dt + log J(v_e) - log J(v_s)

and ``log p(x) = log p_base(z) + sum_k delta_k``.

Charts:
- ``charts=K`` (int): ``K`` equal segments of ``[0, 1]``. On the sphere a fixed chart is guarded:
  if a trajectory's ``|v|`` passes ``3 pi / 4`` (three quarters of the injectivity radius, where
  the chart velocity's ``r / sin r`` is 3.3 and grows without bound towards ``pi``), that segment
  is redone with adaptive re-centring, so no solve approaches the cut locus (``n_recentred``
  counts such segments; an unguarded solve there turns stiff or non-finite).
- ``charts="adaptive"``: a segment ends when the largest ``|v|`` in the batch reaches
  ``chart_radius`` (an event located by torchdiffeq's event handling); the next chart is centred
  at the current points. The cost is one root-finding (a few interpolations) per switch and a
  number of charts that depends on how far the batch moves. Gradients are exact: the switch
  time is not differentiated, and need not be, because the flow map does not depend on where the
  chart changes (see ``MCNF._solve``).
- ``chart_center="origin"`` (every chart at the origin, the reference's hyperboloid choice) is
  offered on the hyperboloid only, whose exponential chart is global.

Precision: the state and the chart geometry run in ``manifold.compute_dtype(x)``: float64 for a
float32 hyperboloid model, whose Minkowski products cancel terms of size ``cosh^2 r`` (in float32
log p is off by 1e-3 relative at geodesic radius 4 and every digit is lost beyond r ~ 8). The
network keeps its own dtype (its inputs are cast); results are returned in the input's dtype.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torchdiffeq import odeint, odeint_adjoint

from manifolds import get_manifold
from manifolds.distributions import MultiscaleKDE, base_distribution

from . import divergence as div_mod
from .dynamics import ChartDynamics, SolveContext, _ChartExit
from .flow import Flow
from .pointwise import pointwise_flow
from .solver import FIXED_STEP, SOLVER_METHODS, SolverError, SolverSettings, as_config, rk4_solve, time_grid
from .solver import settings as _settings
from .vector_field import FieldAverage, VectorField

__all__ = ["MCNF", "ChartDynamics", "SolverError", "SolverSettings", "FIXED_STEP", "SOLVER_METHODS"]


class MCNF(Flow):
    """Manifold continuous normalizing flow with multi-chart integration.

    Args:
        manifold: ``"Sphere"``, ``"Hyperboloid"``, ``"Euclidean"`` or a manifold instance.
        dim: intrinsic dimension ``n`` (when ``manifold`` is a name).
        hidden, n_hidden, activation: the vector field MLP (reference: 32, 3, tanh).
        charts: number of equal time segments, or ``"adaptive"``.
        chart_radius: adaptive mode's switch threshold on ``|v|`` (default: ``pi/2`` on the sphere,
            half its injectivity radius; 3 elsewhere).
        chart_center: ``"point"`` (each segment's chart at its start point, so ``v_s = 0``) or
            ``"origin"`` (every chart at the origin ``o``, the reference's hyperboloid choice).
        conc: concentration of the sphere's vMF base (the reference's ``--conc``); ``0`` makes the
            base the uniform distribution on the sphere (flow matching on Earth data).
        divergence: ``"exact"``, ``"exact_autograd"`` or ``"hutchinson"`` (in training mode only; in
            eval mode a Hutchinson model uses the exact divergence, so its scores are exact).
        noise: Hutchinson noise, ``"rademacher"`` or ``"gaussian"``; drawn once per solve.
        train_solver, eval_solver: :class:`SolverSettings` (or dicts) used in ``train()`` and
            ``eval()`` mode respectively; evaluation defaults to tighter tolerances.
        max_speed: bound of the field's speed limiter (see :class:`flows.VectorField`; ``None``:
            10 for unbounded activations on the hyperboloid, no limiter otherwise).
        fourier, fourier_scale: random Fourier features of the field's input (see
            :class:`flows.VectorField`; default none).
        ensemble: ``K > 1`` fields of this shape, trained side by side; the model's field is their
            average (:class:`flows.FieldAverage`; default 1, one field).

    ``forward(x) -> (z, delta_logp)`` with ``log p(x) = base.log_prob(z) + delta_logp``.
    """

    def __init__(
        self,
        manifold="Sphere",
        dim: int = 2,
        hidden: int = 32,
        n_hidden: int = 3,
        activation: str = "tanh",
        charts: int | str = 1,
        chart_radius: float | None = None,
        chart_center: str = "point",
        conc: float = 1.0,
        divergence: str = "exact",
        noise: str = "rademacher",
        train_solver: SolverSettings | dict | None = None,
        eval_solver: SolverSettings | dict | None = None,
        max_speed: float | None = None,
        fourier: int = 0,
        fourier_scale: float = 1.0,
        kinetic: float = 0.0,
        jacobian: float = 0.0,
        base: str = "default",
        base_n: int = 0,
        base_kappas=(),
        base_eps: float = 0.01,
        ensemble: int = 1,
    ):
        super().__init__()
        M = get_manifold(manifold, dim) if isinstance(manifold, str) else manifold
        self.manifold = M
        if not (charts == "adaptive" or (isinstance(charts, int) and charts >= 1)):
            raise ValueError(f"charts must be a positive integer or 'adaptive', got {charts!r}")
        if chart_center not in ("point", "origin"):
            raise ValueError(f"chart_center must be 'point' or 'origin', got {chart_center!r}")
        if chart_center == "origin" and charts == "adaptive":
            raise ValueError("the adaptive mode re-centres charts; it needs chart_center='point'")
        if chart_center == "origin" and M.chart_guard_radius is not None:
            raise ValueError(
                f"chart_center='origin' needs a global chart; on the {M.name} the chart at the origin is "
                "singular at its antipode (the paper's single-chart failure): use chart_center='point'"
            )
        if chart_radius is not None and not (0 < chart_radius < M.injectivity_radius):
            raise ValueError(f"chart_radius must be in (0, {M.injectivity_radius}), got {chart_radius}")
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"unknown Hutchinson noise {noise!r}; valid: rademacher, gaussian")
        if not conc >= 0 or conc == float("inf"):
            raise ValueError(f"conc must be >= 0 and finite (0: uniform base on the sphere), got {conc}")
        if conc == 0 and not M.compact:
            raise ValueError(
                f"conc 0 (a uniform base) exists only on a compact manifold (the sphere, the torus), not the {M.name}"
            )
        self.charts, self.chart_center, self.noise_kind = charts, chart_center, noise
        self.chart_radius = chart_radius or M.default_chart_radius
        self.conc = float(conc)
        self.train_solver = _settings(train_solver, {})
        self.eval_solver = _settings(eval_solver, dict(atol=1e-7, rtol=1e-7))
        # Fixed charts on a manifold with a singular chart: a trajectory whose |v| passes the guard
        # (r / sin r = 3.3 on the sphere) ends the fixed segment, which is redone with re-centring.
        self.chart_guard = M.chart_guard_radius
        self.n_recentred = 0
        if int(ensemble) != ensemble or ensemble < 1:
            raise ValueError(f"ensemble must be a positive integer, got {ensemble!r}")
        fields = [VectorField(M, hidden, n_hidden, activation, max_speed=max_speed, fourier=fourier,
                              fourier_scale=fourier_scale) for _ in range(int(ensemble))]  # fmt: skip
        self.field = fields[0] if ensemble == 1 else FieldAverage(fields)
        self.dynamics = ChartDynamics(M, self.field, divergence)
        self.config = dict(
            manifold=M.name, dim=M.dim, hidden=hidden, n_hidden=n_hidden, activation=activation,
            charts=charts, chart_radius=chart_radius, chart_center=chart_center, conc=self.conc,
            divergence=divergence, noise=noise, train_solver=as_config(self.train_solver),
            eval_solver=as_config(self.eval_solver), max_speed=max_speed,
        )  # fmt: skip
        if fourier:  # only when used: older checkpoints and readers see the same config as before
            self.config.update(fourier=int(fourier), fourier_scale=float(fourier_scale))
        if ensemble > 1:
            self.config.update(ensemble=int(ensemble))
        if not (kinetic >= 0 and jacobian >= 0):
            raise ValueError(f"kinetic and jacobian weights must be >= 0, got {kinetic}, {jacobian}")
        if (kinetic or jacobian) and divergence == "exact_autograd":
            raise ValueError(
                "the kinetic/jacobian regularizers use the closed-form divergence (exact, hutchinson)"
            )
        if kinetic or jacobian:
            self.config.update(kinetic=float(kinetic), jacobian=float(jacobian))
        if base not in ("default", "kde"):
            raise ValueError(f"base must be 'default' or 'kde', got {base!r}")
        if base == "kde":  # the centres (a training split) arrive by set_kde_base or the state dict
            if M.name != "Sphere" or M.dim != 2 or int(base_n) < 1 or not base_kappas:
                raise ValueError("the KDE base lives on S^2 and needs base_n >= 1 centres and base_kappas")
            self.register_buffer("base_centers", torch.zeros(int(base_n), 3, dtype=torch.float64))
            self.base_kappas, self.base_eps = [float(k) for k in base_kappas], float(base_eps)
            self.config.update(
                base="kde", base_n=int(base_n), base_kappas=self.base_kappas, base_eps=self.base_eps
            )
        self.dynamics.reg_weights = (float(kinetic), float(jacobian))
        self.nfe_forward = 0
        self.n_charts_used = 0
        #: fixed-step rk4 solves (without adjoint or events) by :func:`flows.solver.rk4_solve`: the same
        #: numbers as torchdiffeq's, faster; False sends them through torchdiffeq (tests compare the two)
        self.fast_rk4 = True

    # -- base distribution --------------------------------------------------------------------
    def base(self, dtype=None, device=None):
        """The base distribution at ``t = 1``: wrapped normal of std 1 at the origin (hyperboloid),
        vMF(conc) at the origin or, for ``conc = 0``, uniform (sphere), standard normal (Euclidean)."""
        dtype = dtype or next(self.parameters()).dtype
        device = device or next(self.parameters()).device
        if self.config.get("base") == "kde":
            return MultiscaleKDE(self.base_centers.to(device), self.base_kappas, self.base_eps)
        return base_distribution(self.manifold, self.conc, dtype, device)

    def set_kde_base(self, centers):
        """Fill the KDE base's centres (``(base_n, 3)`` points of S^2, e.g. the training split) and start the
        flow at the identity (the field's last layer zeroed), so that the untrained model is the KDE."""
        if self.config.get("base") != "kde" or tuple(centers.shape) != tuple(self.base_centers.shape):
            raise ValueError(
                f"set_kde_base needs a model built with base='kde' and {tuple(self.base_centers.shape)} centres"
            )
        with torch.no_grad():
            self.base_centers.copy_(centers.to(torch.float64))
            for f in getattr(self.field, "members", [self.field]):
                f.layers[-1].weight.zero_()
                f.layers[-1].bias.zero_()
        return self

    @property
    def solver(self) -> SolverSettings:
        return self.train_solver if self.training else self.eval_solver

    # -- integration ----------------------------------------------------------------------------
    def _solve(self, state0, t0, t1, s: SolverSettings, ctx: SolveContext, event_fn=None):
        func = self.dynamics.bind(ctx)
        if event_fn is None and not s.adjoint and s.method == "rk4" and self.fast_rk4:
            # the default training solve: torchdiffeq's rk4, bit for bit, without its per-evaluation overhead
            return t1, rk4_solve(func, state0, t0, t1, s.step_size, warp=s.time_warp)
        if event_fn is not None and s.time_warp != 1:
            # torchdiffeq locates events on uniform grids only: take the warped grid's finest spacing on
            # this segment, as fine as the warped grid everywhere on it (only re-centred segments get here)
            h = float(time_grid(t0, t1, s.step_size, state0[0], s.time_warp).diff().abs().min())
            s = replace(s, step_size=h, time_warp=1.0)
        kw = s.odeint_kwargs()
        if s.adjoint:
            kw["adjoint_params"] = tuple(self.field.parameters())
        ode = odeint_adjoint if s.adjoint else odeint
        if event_fn is None:
            tt = torch.tensor([t0, t1], dtype=state0[0].dtype, device=state0[0].device)
            sol = ode(func, state0, tt, **kw)
            return t1, tuple(x[-1] for x in sol)
        # Locate the switch with torchdiffeq's own event handling, which does not differentiate the
        # event time. That is exact, not an approximation: the flow map x(t1) does not depend on where
        # the chart changes (a switch is a change of coordinates), so d log p / d theta at a fixed
        # switch time is the total derivative. (``odeint_event`` would instead re-route the event
        # time's gradient into the state, which is only right if the next segment's start time
        # carried the compensating gradient; with a detached restart it gave wrong gradients.)
        tt = torch.tensor([t0, t1], dtype=state0[0].dtype, device=state0[0].device)
        t_ev, sol = ode(func, state0, tt, event_fn=event_fn, **kw)
        return float(t_ev.detach()), tuple(x[-1] for x in sol)

    def _segment(self, x, t0, t1, s, ctx: SolveContext, reg: bool, adaptive: bool):
        """Integrate from ``x`` at ``t0`` towards ``t1`` in one chart (``reg``: with the regularizers).

        Returns ``(y, D, R, t_end)`` with ``D = log p(x) - log p(y)`` for the flow's density and ``R`` the
        regularizers' integral over the segment (``None`` without ``reg``).
        """
        M = self.manifold
        p = M.origin(*x.shape[:-1], dtype=x.dtype, device=x.device) if self.chart_center == "origin" else x
        E = M.tangent_basis(p)
        v0 = torch.zeros_like(x[..., : M.dim]) if self.chart_center == "point" else M.chart_inverse(p, x, E)
        state0 = (v0, torch.zeros_like(x[..., 0]), p)
        if reg:
            state0 = (*state0, torch.zeros_like(x[..., 0]))
        # the guard acts on forward solves only (an adjoint's backward solve retraces them)
        ctx = replace(ctx, basis=None if s.adjoint else E, guard=None if adaptive else self.chart_guard)
        event_fn = None
        if adaptive:
            radius, forward = self.chart_radius, t1 > t0

            def event_fn(t, state):
                remaining = (t1 - t) if forward else (t - t1)
                return torch.minimum(radius - state[0].norm(dim=-1).max(), remaining)

        t_end, (v1, integral, _, *R) = self._solve(state0, t0, t1, s, ctx, event_fn)
        y, logdet = M.chart_with_logdet(p, v1, E)
        y = M.projx(y)
        D = integral
        if ctx.with_div:
            D = D + logdet
            # a chart centred at the point itself starts at v0 = 0, where log J = 0
            if self.chart_center != "point":
                D = D - M.logdetexp(p, M.from_coords(p, v0, E))
        return y, D, (R[0] if R else None), t_end

    def _flow(self, x, t0: float, t1: float, with_div: bool = True, regularize: bool = False):
        """Flow points from time ``t0`` to ``t1``; returns ``(y, sum of D, R)`` in the compute dtype, with
        ``R`` the regularizers' integral when ``regularize`` asks for it and they apply (training with
        ``kinetic``/``jacobian`` weights and gradients on), else ``None``.

        ``x`` is first cast to :meth:`manifolds.Manifold.compute_dtype` (float64 for a float32
        hyperboloid model); the public methods cast their results back to the input's dtype.
        """
        s = self.solver
        dyn = self.dynamics
        dyn.nfe = 0
        x = self._cast(x)  # a no-op from the public methods, which cast already
        if s.pointwise:  # every point on its own (flows/pointwise.py): evaluation only, no gradients
            if self.training:
                raise ValueError(
                    "pointwise solves are an evaluation solver (model.eval()), not a training one"
                )
            y, D, stats = pointwise_flow(self, x, t0, t1, with_div, s)
            self.nfe_forward = int(stats["nfe"].max()) if len(x) else 0
            return y, D, None
        # Hutchinson's estimator is a training device: in eval mode (scores, figures, samples' log p) the
        # divergence is exact, so a Hutchinson-trained model is scored like any other, deterministically
        noise = None
        if dyn.divergence == "hutchinson" and with_div and self.training:
            noise = div_mod.sample_noise(
                x[..., : self.manifold.dim].shape, self.noise_kind, dtype=x.dtype, device=x.device
            )
        reg = regularize and with_div and self.training and torch.is_grad_enabled() and any(dyn.reg_weights)
        ctx = SolveContext(with_div=with_div, noise=noise, max_nfe=s.max_nfe)
        return self._flow_segments(x, t0, t1, s, ctx, reg)

    def _adaptive_segments(self, x, t0, t1, s, ctx, reg):
        """Charts re-centred whenever ``|v|`` reaches ``chart_radius``; returns ``(y, D, R, n charts)``."""
        D, R = torch.zeros_like(x[..., 0]), (torch.zeros_like(x[..., 0]) if reg else None)
        t, n = t0, 0
        while abs(t1 - t) > 1e-9 * max(1.0, abs(t1)):
            if n >= 1000:
                raise SolverError("adaptive charts: more than 1000 chart switches")
            # The event locator stops within ~atol of t1; close such a sliver with a plain solve.
            near_end = abs(t1 - t) < 1e-3 * abs(t1 - t0)
            x, d, r, t = self._segment(x, t, t1, s, ctx, reg, adaptive=not near_end)
            D, R, n = D + d, (R + r if reg else None), n + 1
        return x, D, R, n

    def _flow_segments(self, x, t0, t1, s, ctx, reg):
        if self.charts == "adaptive":
            x, D, R, self.n_charts_used = self._adaptive_segments(x, t0, t1, s, ctx, reg)
        else:
            D, R = torch.zeros_like(x[..., 0]), (torch.zeros_like(x[..., 0]) if reg else None)
            knots = torch.linspace(t0, t1, self.charts + 1, dtype=torch.float64).tolist()
            self.n_charts_used = self.n_recentred = 0
            for a, b in zip(knots[:-1], knots[1:], strict=True):
                try:
                    y, d, r, _ = self._segment(x, a, b, s, ctx, reg, adaptive=False)
                    n = 1
                except _ChartExit:
                    # a trajectory neared the chart's cut locus: redo this segment with re-centring
                    y, d, r, n = self._adaptive_segments(x, a, b, s, ctx, reg)
                    self.n_recentred += 1
                x, D, self.n_charts_used = y, D + d, self.n_charts_used + n
                R = R + r if reg else None
        self.nfe_forward = self.dynamics.nfe
        return x, D, R

    # -- the maps (the public API is flows.Flow's) ------------------------------------------------
    def _cast(self, x):
        """``x`` in the compute dtype, re-projected after an up-cast (a float32 hyperboloid point at
        ``r = 12`` is off the sheet by ~1e3 in ``<x,x>_L``)."""
        c = self.manifold.compute_dtype(x)
        return self.manifold.projx(x.to(c)) if c != x.dtype else x

    def _to_base(self, x):
        return self._flow(x, 0.0, 1.0, with_div=True)[:2]

    def _to_data(self, z, with_delta: bool):
        x, D, _ = self._flow(z, 1.0, 0.0, with_div=with_delta)
        return x, -D

    def log_prob_and_regularization(self, x):
        """``(log p(x), R)``: the log-density and, in training with ``kinetic``/``jacobian`` weights, the
        per-point weighted integrals ``R = int_0^1 (kinetic |f|^2 + jacobian |grad f|_F^2) dt`` along the
        trajectory (Finlay et al. 2020) for the loss to add (``train.build.MeanNLL`` does); ``R`` is
        ``None`` otherwise. One solve gives both."""
        self._check(x)
        if len(x) == 0:
            return x.new_zeros(0), None
        z, delta, R = self._flow(self._cast(x), 0.0, 1.0, with_div=True, regularize=True)
        return (self.base(z.dtype, z.device).log_prob(z) + delta).to(x.dtype), R

    # -- speed ----------------------------------------------------------------------------------
    def compile_ode(self, enable: bool = True):
        """Run the training solves' ODE function through ``torch.compile`` (inductor).

        Only the chart velocity and its closed-form divergence (``divergence="exact"`` or
        ``"hutchinson"``) are compiled, and only in training mode with gradients on: evaluation,
        sampling and figures stay eager (their batch sizes and dtypes vary). The compiled graphs
        fuse the ~150 small tensor operations of one evaluation (forward and backward) into a few
        loops; the numbers agree with the eager ones to float rounding. The first training steps pay
        the compilation (one CPU thread: 20-29 s with an empty inductor cache, 3.0-3.5 s with a warm
        one); docs/benchmark.md has the measured trade-off.
        Returns ``self``. (``nn.Module.compile`` would instead wrap the whole forward, chart
        bookkeeping and solver included, which Dynamo cannot trace as one graph.)
        """
        if enable and self.dynamics.divergence not in ("exact", "hutchinson"):
            raise ValueError(
                f"compile covers the closed-form divergences (exact, hutchinson), not {self.dynamics.divergence!r}"
            )
        self.dynamics.compiled = bool(enable)
        return self

    # -- persistence ----------------------------------------------------------------------------
    def set_train_step(self, step_size: float):
        """Change the training solver's fixed step (the solver guard's refinement), config included."""
        self.train_solver.step_size = float(step_size)
        self.config["train_solver"] = as_config(self.train_solver)
