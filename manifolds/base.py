"""The interface shared by every manifold: ambient coordinates, point-first methods."""

from __future__ import annotations

import torch

from .quadrature import polar_grid
from .special import safe_sqrt

#: Largest relative residual (:meth:`Manifold.residual`) of an accepted point, per dtype. float64 points
#: made in float32 and cast keep residuals of a few float32 roundings (2e-7 seen for vMF kernel
#: samples), so float64's tolerance is not its own rounding but 1e-5: far below any garbage input.
POINT_TOL = {torch.float32: 1e-4, torch.float64: 1e-5}


class Manifold(torch.nn.Module):
    """A Riemannian manifold embedded in ``R^(n+1)`` (``R^n`` for the Euclidean space).

    Points and tangent vectors are ambient coordinates with the manifold dimension last and batch
    dimensions leading and broadcasting, as in geoopt. ``dim`` is the intrinsic dimension ``n``.
    Subclasses implement the closed forms; the few generic identities live here.
    """

    name: str = "Manifold"
    #: The letter of its usual name in figures' titles (``S^n``, ``H^n``, ``T^n``).
    symbol: str = "M"
    #: Injectivity radius of ``expmap`` (``inf`` when it is a global diffeomorphism).
    injectivity_radius: float = float("inf")
    #: Compact (finite volume): a uniform base distribution exists, importance-sampling integrals apply.
    compact: bool = False
    #: An MLP field with an unbounded activation has unbounded speed here (its input, the ambient
    #: coordinates, grows without bound), so :class:`flows.VectorField` limits it by default.
    unbounded_speed: bool = False
    #: Fixed-step solver of density figures (:func:`flows.figure_model`): adaptive steps buy no visible
    #: accuracy there (measured errors relative to the peak density in flows/evaluation.py).
    figure_solver: dict = {"method": "rk4", "step_size": 1 / 8}
    #: Default switch radius on ``|v|`` of adaptive charts.
    default_chart_radius: float = 3.0
    #: A fixed chart's guard on ``|v|`` (:class:`flows.MCNF`): a segment whose trajectories pass it is
    #: redone with re-centred charts. None: the exponential chart has no singularity (a global chart).
    chart_guard_radius: float | None = None
    #: How :mod:`viz` draws a density on this 2-manifold: ``"plane"`` (a flat picture of a chart:
    #: :meth:`plot_grid`, :meth:`to_plot`, :attr:`plot_extent`), ``"globe"`` (a map projection of
    #: ``S^2``), or None (no density figure; samples are drawn as marginals).
    figure_kind: str | None = None
    #: The plane figure's square ``(lo, hi)`` in both coordinates, and its outline (``"circle"`` or None).
    plot_extent: tuple | None = None
    plot_outline: str | None = None

    def quadrature_pole(self, dtype=None, device=None) -> torch.Tensor:
        """Centre of the geodesic polar quadrature grid of a 2-manifold (:mod:`manifolds.quadrature`)."""
        return self.origin(dtype=dtype, device=device)

    def radial_scale(self, r: torch.Tensor) -> torch.Tensor:
        """``s(r)`` with volume element ``s(r)^(n-1) dr dOmega`` in geodesic polar coordinates (flat: ``r``)."""
        return r

    def quadrature(self, n_radial: int = 400, n_angular: int = 800, r_max: float = 12.0, dtype=torch.float64,
                   device=None):  # fmt: skip
        """Points ``(N, ambient)`` and cell volumes ``(N,)`` of a quadrature rule covering the manifold
        (:func:`manifolds.integrate`). Default: geodesic polar coordinates around
        :meth:`quadrature_pole` with the volume element :meth:`radial_scale` (n = 2, 3), truncated at
        ``r_max`` or the injectivity radius."""
        return polar_grid(self, n_radial, n_angular, r_max, dtype, device)

    def near_cut_locus(self, x, z) -> torch.Tensor:
        """Pairs whose minimizing geodesic is not unique or not accurate (flow matching drops them):
        none by default."""
        return torch.zeros(torch.broadcast_shapes(x.shape, z.shape)[:-1], dtype=torch.bool, device=x.device)

    def plot_grid(self, res: int):
        """A plane figure's ``res x res`` cell centres: ``(x, inside, log_factor)`` with points
        ``(res*res, ambient)``, a mask of the cells on the manifold, and the log of the factor that
        turns the density into the value drawn (0: the density itself)."""
        raise ValueError(f"no plane figure for the {self.name}")

    def to_plot(self, x):
        """Points ``(N, ambient)`` to the figure's plane coordinates ``(N, 2)`` (numpy)."""
        raise ValueError(f"no figure for the {self.name}")

    def __init__(self, dim: int = 2):
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"manifold dimension must be a positive integer, got {dim!r}")
        self.dim = int(dim)

    # ``ambient_dim`` is n+1 for the embedded manifolds and n for Euclidean space.
    @property
    def ambient_dim(self) -> int:
        return self.dim + 1

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype the flow's state and geometry use for the points ``x`` (``x.dtype`` here).

        The hyperboloid overrides it: its ambient coordinates grow like ``cosh r`` and Minkowski
        products cancel catastrophically in float32 far from the origin.
        """
        return x.dtype

    # -- input validation ---------------------------------------------------------------------
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """How far ``x`` is from the manifold, relative to its scale (0 on it; ``inf`` for points the
        manifold's equation admits but which are not on it, e.g. the hyperboloid's lower sheet)."""
        return torch.zeros_like(x[..., 0])

    def check_point(self, x, what: str = "x", batched: bool = True) -> None:
        """Raise ``ValueError`` unless ``x`` is a float32/float64 tensor of points of this manifold,
        shape ``(B, n+1)`` (``batched``) or ``(..., n+1)``, finite and within :data:`POINT_TOL` of it.

        The tolerance is relative (:meth:`residual`): a float32 hyperboloid point at geodesic radius 12
        has ``|<x,x>_L + 1|`` of about 1e3 but 1e-7 of ``x_0^2``, and is accepted.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in POINT_TOL:
            raise ValueError(f"{what} must be float32 or float64, got {x.dtype}")
        shape = f"(B, {self.ambient_dim})" if batched else f"(..., {self.ambient_dim})"
        if (batched and x.dim() != 2) or x.dim() < 1 or x.shape[-1] != self.ambient_dim:
            raise ValueError(f"{what} must have shape {shape} (points of the {self.name} of dimension "
                             f"{self.dim}), got {tuple(x.shape)}")  # fmt: skip
        if x.numel() == 0:
            return
        finite = torch.isfinite(x).all(-1)
        res = torch.where(finite, self.residual(torch.where(finite[..., None], x, torch.ones_like(x))),
                          torch.zeros_like(x[..., 0]))  # fmt: skip
        n_bad, worst = torch.stack([(~finite).sum().to(x.dtype), res.max()]).tolist()
        if n_bad:
            raise ValueError(f"{what} holds {int(n_bad)} point(s) with NaN or infinite coordinates")
        if not worst <= POINT_TOL[x.dtype]:
            i = int(res.argmax()) if x.dim() == 2 else None
            where = f" (row {i}: {x[i].tolist()})" if i is not None else ""
            raise ValueError(f"{what} is not on the {self.name}: relative residual {worst:.3g} > {POINT_TOL[x.dtype]:g} "
                             f"for {x.dtype}{where}")  # fmt: skip

    # -- metric -------------------------------------------------------------------------------
    def inner(self, x, u, v, keepdim: bool = False):
        """Riemannian inner product ``<u, v>_x`` of tangent vectors at ``x``; shape ``(...)``."""
        raise NotImplementedError

    def norm(self, x, u, keepdim: bool = False):
        """Riemannian norm ``|u|_x``, with a finite (zero) gradient at ``u = 0``."""
        return safe_sqrt(self.inner(x, u, u, keepdim=keepdim))

    def dist(self, x, y, keepdim: bool = False):
        """Geodesic distance; equals ``norm(x, logmap(x, y))``."""
        return self.norm(x, self.logmap(x, y), keepdim=keepdim)

    def geodesic(self, x, u, t):
        """The geodesic ``gamma(t) = exp_x(t u)`` and its velocity ``gamma'(t)``, in closed form.

        ``t`` has shape ``(..., 1)`` (one time per point). Flow matching regresses the field onto
        ``gamma'(t)`` (docs/math.md, "Flow matching"). Returns ``(gamma(t), gamma'(t))``.
        """
        raise NotImplementedError

    def interpolate(self, x, z, t):
        """The geodesic from ``x`` (``t = 0``) to ``z`` (``t = 1``) at times ``t`` ``(..., 1)`` and its velocity.

        Default: shooting, ``geodesic(x, log_x z, t)``. A manifold whose ``log`` loses precision for
        far pairs overrides it with a two-point form (:meth:`manifolds.Hyperboloid.interpolate`).
        Returns ``(x_t, u_t)``.
        """
        return self.geodesic(x, self.logmap(x, z), t)

    # -- chart maps ---------------------------------------------------------------------------
    def origin(self, *size, dtype=None, device=None) -> torch.Tensor:
        """The base point ``o`` broadcast to ``(*size, n+1)``."""
        raise NotImplementedError

    def tangent_basis(self, x: torch.Tensor) -> torch.Tensor:
        """An orthonormal basis of ``T_x M``, shape ``(..., n, n+1)`` (rows are basis vectors).

        The default transports the standard basis at the origin, ``(0, e_i)``, to ``x``.
        """
        o = self.origin(dtype=x.dtype, device=x.device)
        e = torch.eye(self.ambient_dim, dtype=x.dtype, device=x.device)[1:]
        return self.transp(o, x.unsqueeze(-2), e)

    def coords(self, x, u, basis=None) -> torch.Tensor:
        """Coordinates ``(..., n)`` of the tangent vector ``u`` at ``x`` in ``tangent_basis(x)``."""
        basis = self.tangent_basis(x) if basis is None else basis
        return self.inner(x.unsqueeze(-2), basis, u.unsqueeze(-2))

    def from_coords(self, x, v, basis=None) -> torch.Tensor:
        """The tangent vector ``sum_i v_i e_i`` at ``x`` from coordinates ``v`` of shape ``(..., n)``."""
        basis = self.tangent_basis(x) if basis is None else basis
        return (v.unsqueeze(-1) * basis).sum(-2)

    def chart(self, x, v, basis=None) -> torch.Tensor:
        """The exponential-map chart ``phi_x(v) = expmap(x, sum_i v_i e_i)``."""
        return self.expmap(x, self.from_coords(x, v, basis))

    def chart_with_logdet(self, x, v, basis=None):
        """``(phi_x(v), log J(v))``: the chart point and the log volume change of ``expmap`` there, the two
        things a chart segment's end needs, from one :meth:`chart_coefficients`. Where those carry the radial
        coefficient ``S`` (``sin(r)/r`` or ``sinh(r)/r``: the sphere, the hyperboloid), ``log J = (n - 1) log|S|``
        without a second pass; otherwise :meth:`logdetexp` of ``u``."""
        coef = self.chart_coefficients(x, v, self.tangent_basis(x) if basis is None else basis)
        if "S" in coef:
            return coef["y"], (self.dim - 1) * torch.log(coef["S"].abs()).squeeze(-1)
        return coef["y"], self.logdetexp(x, coef["u"])

    def chart_inverse(self, x, y, basis=None) -> torch.Tensor:
        """Chart coordinates of ``y`` in the chart at ``x``: ``coords(x, logmap(x, y))``."""
        return self.coords(x, self.logmap(x, y), basis)

    # -- chart calculus used by the flow (closed forms in each subclass) ------------------------
    def chart_coefficients(self, x, v, basis):
        """Quantities of the chart point ``y = phi_x(v)`` shared by the flow's computations.

        Returns a dict with ``u`` (the tangent vector at ``x``), ``y`` and, in the curved
        subclasses, the radial coefficients of ``r2 = |v|^2`` (so that each is computed once).
        """
        u = self.from_coords(x, v, basis)
        return {"u": u, "y": self.expmap(x, u)}

    def chart_velocity(self, x, v, w, basis, coef=None):
        """Pull a tangent vector back through the chart: ``E (D exp_x(u))^(-1) w``.

        ``v`` ``(..., n)`` are chart coordinates of ``y = phi_x(v)``, ``w`` ``(..., n+1)`` a tangent
        vector at ``y``; the result is the chart velocity ``(..., n)``, i.e. the coordinates of
        ``D(log_x)(y)[w]``. Generic fallback: a forward-mode JVP through ``logmap``.
        """
        from torch.func import jvp

        y = self.chart(x, v, basis)
        _, d = jvp(lambda yy: self.logmap(x, yy), (y,), (w,))
        return self.coords(x, d, basis)

    def grad_logdetexp(self, x, v, coef=None):
        """``grad_v log J(v)`` in chart coordinates, shape ``(..., n)``."""
        raise NotImplementedError

    def proj_field(self, y, h):
        """Map an ambient vector ``h`` at ``y`` to a tangent vector, for vector fields.

        Defaults to ``proju``; the hyperboloid overrides it (see there).
        """
        return self.proju(y, h)

    def proj_field_jvp(self, y, h, dy, dh):
        """Directional derivative of ``proj_field(y, h)`` when ``(y, h)`` moves by ``(dy, dh)``."""
        raise NotImplementedError

    def field_divergence(self, y, dirs, h, dh, noise=None):
        """The field ``f = proj_field(y, h)`` and its Riemannian divergence ``sum_i <e_i, D_(e_i) f>``.

        ``dirs`` are the directions whose ambient JVPs ``dh`` of the network are given: the orthonormal
        frame ``tangent_basis(y)`` ``(..., n, n+1)``, or with ``noise`` ``(..., n)`` the one Hutchinson
        direction ``w = sum_i noise_i e_i`` ``(..., 1, n+1)`` (then the divergence is estimated by
        ``<w, D_w f>``). This generic form differentiates :meth:`proj_field` along each direction; the
        sphere and the hyperboloid override it with closed forms (a few operations instead of dozens, in
        the forward and the backward pass of every ODE evaluation).
        """
        f, df = self.field_jvps(y, dirs, h, dh)
        return f, self.inner(y.unsqueeze(-2), dirs, df).sum(-1)

    def field_jvps(self, y, dirs, h, dh):
        """``f = proj_field(y, h)`` and its derivatives ``D_(d_k) f`` along ``dirs`` (shapes as in
        :meth:`field_divergence`), from the network's JVPs ``dh``."""
        return self.proj_field(y, h), self.proj_field_jvp(y.unsqueeze(-2), h.unsqueeze(-2), dirs, dh)
