"""The hyperboloid (Lorentz) model of hyperbolic space ``H^n``."""

from __future__ import annotations

import torch

from .base import Manifold
from .special import (
    asinhc_sq,
    chart_radial_sq,
    cosh_sq,
    log_sinhc_sq,
    one_minus_xcothx_over_x2_sq,
    safe_sqrt,
    sinhc_sq,
    sum_last,
    weighted_sum_last,
)


def minkowski(u, v, keepdim: bool = False):
    """``<u, v>_L = -u_0 v_0 + sum_(i>=1) u_i v_i``."""
    return weighted_sum_last(u * v, -1.0, keepdim)


class Hyperboloid(Manifold):
    """``H^n = {x in R^(n+1) : <x, x>_L = -1, x_0 > 0}`` with curvature -1.

    The origin is ``o = (1, 0, ..., 0)``; ``expmap`` is a global diffeomorphism.
    """

    name = "Hyperboloid"
    symbol = "H"
    unbounded_speed = True
    figure_kind = "plane"  # the Poincare disk
    plot_extent = (-1.0, 1.0)
    plot_outline = "circle"

    def radial_scale(self, r):
        return torch.sinh(r)

    def compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """float64 for float32 (and lower) points: the geometry of a float32 flow runs in float64.

        A point at geodesic radius ``r`` has coordinates of size ``cosh r``, and ``<x, y>_L`` of two
        such points cancels terms of size ``cosh^2 r`` down to ``O(1)``: in float32 ``<x, x>_L + 1``
        is already 0.5 at ``r = 8``, and chart maps, tangent frames and the divergence lose digits
        well before (measured on the trained README demo model with the training solver: relative
        error of float32 log p 2e-4 at r = 3, 1e-3 at r = 4, 7e-3 at r = 5, 0.2 at r = 7). In
        float64 the same cancellation costs ``cosh^2(r) * 1e-16``: about 1e-6 relative at
        ``r = 12`` and 1e-3 at ``r ~ 15.5``. Only the state and the chart geometry are float64; the
        network keeps its own dtype (its input ``y`` is well represented in float32 as a relative
        quantity).
        """
        return torch.float64 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else x.dtype

    def residual(self, x):
        """``|<x,x>_L + 1| / (1 + x_0^2)``; ``inf`` on the lower sheet (``x_0 < 0``)."""
        r = (minkowski(x, x) + 1).abs() / (1 + x[..., 0] * x[..., 0])
        return torch.where(x[..., 0] > 0, r, torch.full_like(r, float("inf")))

    def inner(self, x, u, v, keepdim: bool = False):
        return minkowski(u, v, keepdim=keepdim)

    def proju(self, x, u):
        """Projection onto ``T_x H^n = {u : <x, u>_L = 0}``."""
        return u + minkowski(x, u, keepdim=True) * x

    def projx(self, x):
        """Lift to the sheet by setting ``x_0 = sqrt(1 + |x_(1:)|^2)``."""
        rest = x[..., 1:]
        return torch.cat([torch.sqrt(1 + sum_last(rest * rest, keepdim=True)), rest], -1)

    def expmap(self, x, u):
        """``exp_x(u) = cosh(r) x + sinh(r)/r u`` with ``r = |u|_L``."""
        r2 = minkowski(u, u, keepdim=True).clamp(min=0)
        return cosh_sq(r2) * x + sinhc_sq(r2) * u

    def logmap(self, x, y):
        """``log_x(y) = d / sinh(d) (y + <x,y>_L x)`` with ``sinh d = |y + <x,y>_L x|_L``."""
        a = minkowski(x, y, keepdim=True)
        u = y + a * x
        s2 = minkowski(u, u, keepdim=True).clamp(min=0)
        return asinhc_sq(s2) * u

    def geodesic(self, x, u, t):
        """``gamma(t) = cosh(t r) x + sinh(t r)/r u``, ``gamma'(t) = r sinh(t r) x + cosh(t r) u`` (``r = |u|_L``)."""
        r2 = minkowski(u, u, keepdim=True).clamp(min=0)
        rt2 = t * t * r2
        c, s = cosh_sq(rt2), sinhc_sq(rt2)
        return c * x + (t * s) * u, c * u + (t * r2 * s) * x

    def interpolate(self, x, z, t):
        """Two-point form of the geodesic from ``x`` to ``z`` (``d = dist(x, z)``)::

            x_t = (sinh((1-t) d) x + sinh(t d) z) / sinh d
            u_t = d (cosh(t d) z - cosh((1-t) d) x) / sinh d

        written with ``sinhc(a) = sinh(a)/a`` so that it is exact as ``d -> 0`` too. Shooting,
        ``exp_x(t log_x z)``, multiplies the rounding error of ``log_x z`` by about ``sinh(d)/d``
        (float64, ``d = 11.3``: relative error up to 3e-5 against a 50-digit reference, and growing
        like ``e^d``); this form stays at 1e-15 there (tests/test_edges.py).
        """
        d = self.dist(x, z, keepdim=True)
        a, b = (1 - t) * d, t * d
        den = sinhc_sq(d * d)
        xt = ((1 - t) * sinhc_sq(a * a) * x + t * sinhc_sq(b * b) * z) / den
        ut = (cosh_sq(b * b) * z - cosh_sq(a * a) * x) / den
        return xt, ut

    def dist(self, x, y, keepdim: bool = False):
        """``2 asinh(|x - y|_L / 2)``, accurate near 0 where ``acosh(-<x,y>_L)`` is not."""
        d = x - y
        return 2 * torch.asinh(safe_sqrt(minkowski(d, d, keepdim=keepdim)) / 2)

    def transp(self, x, y, u):
        """Parallel transport of ``u`` from ``x`` to ``y`` along the geodesic."""
        a = minkowski(x, y, keepdim=True)
        return u + minkowski(y, u, keepdim=True) / (1 - a) * (x + y)

    def logdetexp(self, x, u):
        """``log J(u) = (n - 1) log(sinh r / r)``, the volume change of ``expmap``."""
        r2 = minkowski(u, u).clamp(min=0)
        return (self.dim - 1) * log_sinhc_sq(r2)

    def chart_coefficients(self, x, v, basis):
        r2 = sum_last(v * v, keepdim=True)
        u = self.from_coords(x, v, basis)
        c, s, q = chart_radial_sq(r2, -1)
        return {"u": u, "y": c * x + s * u, "r2": r2, "C": c, "S": s, "q": q}

    def chart_velocity(self, x, v, w, basis, coef=None):
        """Closed form of ``E (D exp_x(u))^(-1) w`` on the hyperboloid (``r = |v|``).

        ``D exp_x(u)`` maps ``u`` to ``rho = cosh(r) u + r sinh(r) x`` and scales the directions
        orthogonal to ``x`` and ``u`` by ``sinh(r)/r``; with ``<e_i, x>_L = 0`` this gives
        ``<E, w>_L r/sinh(r) + (1 - r coth r)/r^2 <w, rho>_L v``.
        """
        coef = coef or self.chart_coefficients(x, v, basis)
        r2 = coef["r2"]
        rho = coef["C"] * coef["u"] + r2 * coef["S"] * x
        wr = minkowski(w, rho, keepdim=True)
        return self.coords(x, w, basis) / coef["S"] + coef["q"] * wr * v

    def grad_logdetexp(self, x, v, coef=None):
        """``grad_v log J(v) = -(n-1) q(r^2) v``, ``q = (1 - r coth r) / r^2``."""
        q = coef["q"] if coef else one_minus_xcothx_over_x2_sq(sum_last(v * v, keepdim=True))
        return -(self.dim - 1) * q * v

    def proj_field(self, y, h):
        """Turn an ambient vector ``h`` at ``y`` into a tangent vector, for vector fields.

        Read ``h_(1:)`` as a tangent vector ``(0, h_(1:))`` at the origin and parallel-transport it
        to ``y``: an isometry, so ``|f|_L = |h_(1:)|`` everywhere. The Minkowski-orthogonal
        ``proju`` (the reference's choice) is not used: for a bounded ``h`` its speed grows like
        ``cosh(r)``, far points escape to infinity in finite time and the density does not
        integrate to 1.
        """
        o = self.origin(dtype=y.dtype, device=y.device)
        return self.transp(o, y, torch.cat([torch.zeros_like(h[..., :1]), h[..., 1:]], -1))

    def proj_field_jvp(self, y, h, dy, dh):
        """Derivative of :meth:`proj_field` when ``(y, h)`` moves by ``(dy, dh)``."""
        # T = u + a / b (o + y), a = <y, u>_L, b = 1 + y_0, u = (0, h_(1:))
        u = torch.cat([torch.zeros_like(h[..., :1]), h[..., 1:]], -1)
        du = torch.cat([torch.zeros_like(dh[..., :1]), dh[..., 1:]], -1)
        o = self.origin(dtype=y.dtype, device=y.device)
        a, b = minkowski(y, u, keepdim=True), 1 + y[..., :1]
        da = minkowski(dy, u, keepdim=True) + minkowski(y, du, keepdim=True)
        db = dy[..., :1]
        return du + (da * b - a * db) / (b * b) * (o + y) + a / b * dy

    def tangent_basis(self, x):
        """The standard basis at the origin transported to ``x`` (the generic definition), in closed
        form: ``e_i = (x'_i, u_i + x'_i x' / (1 + x_0))`` with ``x' = x_(1:)``."""
        x0, xs = x.split([1, self.dim], dim=-1)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        block = eye + (xs / (1 + x0)).unsqueeze(-1) * xs.unsqueeze(-2)
        return torch.cat([xs.unsqueeze(-1), block], -1)

    def field_divergence(self, y, dirs, h, dh, noise=None):
        """Closed form for the transported field ``f = T_y (0, h')`` (:meth:`proj_field`, ``h' = h_(1:)``).

        The frame is the transported standard basis, ``e_i = T_y (0, u_i)`` (:meth:`tangent_basis`), and
        ``T_y`` is an isometry, so ``<e_i, T_y D_(e_i)(0, h')> = dh'_i[i]``: the Jacobian part is the trace
        of the network's JVPs. Differentiating ``T_y w = w + <y, w> / (1 + y_0) (o + y)`` in ``y`` and
        summing over the frame (with ``sum_i <e_i, a> e_i = a + <y, a> y``) leaves the connection part
        ``(n - 1) <y, (0, h')> / (1 + y_0)``. Hutchinson's direction ``w = sum_i noise_i e_i`` gives
        ``noise . dh'_w`` for the first part; the second stays exact (its expectation).
        """
        n = self.dim
        hs = h.split([1, n], dim=-1)[1]
        y0, ys = y.split([1, n], dim=-1)
        dhs = dh.split([1, n], dim=-1)[1]
        f = (hs.unsqueeze(-2) @ dirs).squeeze(-2) if noise is None else self.proj_field(y, h)
        jac = (
            torch.diagonal(dhs, dim1=-2, dim2=-1).sum(-1)
            if noise is None
            else (noise * dhs.squeeze(-2)).sum(-1)
        )
        conn = (n - 1) * (ys * hs).sum(-1) / (1 + y0.squeeze(-1))
        return f, jac + conn

    def origin(self, *size, dtype=None, device=None):
        o = torch.zeros(*size, self.dim + 1, dtype=dtype, device=device)
        o[..., 0] = 1.0
        return o

    def random(self, *size, scale: float = 1.0, generator=None, dtype=None, device=None):
        """Random points ``projx`` of Gaussian spatial coordinates (not a uniform law)."""
        rest = scale * torch.randn(*size, self.dim, generator=generator, dtype=dtype, device=device)
        return self.projx(torch.cat([torch.zeros_like(rest[..., :1]), rest], -1))

    # -- conversions for plots ----------------------------------------------------------------
    @staticmethod
    def to_poincare(x):
        """Hyperboloid point to the Poincare ball: ``x_(1:) / (1 + x_0)``."""
        return x[..., 1:] / (1 + x[..., :1])

    @staticmethod
    def from_poincare(p):
        """Poincare ball point (``|p| < 1``) to the hyperboloid."""
        n2 = (p * p).sum(-1, keepdim=True)
        return torch.cat([1 + n2, 2 * p], -1) / (1 - n2)

    # -- figures: the Poincare disk ---------------------------------------------------------------
    def plot_grid(self, res: int, radius: float = 0.995):
        """Cell centres of a ``res x res`` grid on the Poincare disk's square ``[-1, 1]^2``: the points
        (the origin outside the disk of ``radius``), the mask of cells inside, and ``log J(log_o x)``: the
        figure shows ``p(x) J(log_o x)``, the density pulled back to the tangent plane at the origin (as
        in the paper's figures, so that five equal Gaussians look equal)."""
        c = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 - 1
        py, px = torch.meshgrid(c, c, indexing="ij")
        p = torch.stack([px, py], -1).reshape(-1, 2)
        inside = p.norm(dim=-1) < radius
        x = self.from_poincare(torch.where(inside[:, None], p, torch.zeros_like(p)))
        o = self.origin(dtype=x.dtype)
        return x, inside.numpy(), self.logdetexp(o, self.logmap(o, x))

    def to_plot(self, x):
        """Points to the Poincare disk."""
        return self.to_poincare(torch.as_tensor(x, dtype=torch.float64)).numpy()
