"""The hyperboloid (Lorentz) model of hyperbolic space ``H^n``."""

from __future__ import annotations

import torch

from .base import Manifold
from .special import asinhc_sq, cosh_sq, log_sinhc_sq, one_minus_xcothx_over_x2_sq, safe_sqrt, sinhc_sq


def minkowski(u, v, keepdim: bool = False):
    """``<u, v>_L = -u_0 v_0 + sum_(i>=1) u_i v_i``."""
    prod = u * v
    out = prod[..., 1:].sum(-1, keepdim=True) - prod[..., :1]
    return out if keepdim else out.squeeze(-1)


class Hyperboloid(Manifold):
    """``H^n = {x in R^(n+1) : <x, x>_L = -1, x_0 > 0}`` with curvature -1.

    The origin is ``o = (1, 0, ..., 0)``; ``expmap`` is a global diffeomorphism.
    """

    name = "Hyperboloid"

    def inner(self, x, u, v, keepdim: bool = False):
        return minkowski(u, v, keepdim=keepdim)

    def proju(self, x, u):
        """Projection onto ``T_x H^n = {u : <x, u>_L = 0}``."""
        return u + minkowski(x, u, keepdim=True) * x

    def projx(self, x):
        """Lift to the sheet by setting ``x_0 = sqrt(1 + |x_(1:)|^2)``."""
        rest = x[..., 1:]
        return torch.cat([torch.sqrt(1 + (rest * rest).sum(-1, keepdim=True)), rest], -1)

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

    def chart_velocity(self, x, v, w, basis):
        """Closed form of ``E (D exp_x(u))^(-1) w`` on the hyperboloid (``r = |v|``).

        ``D exp_x(u)`` maps ``u`` to ``rho = cosh(r) u + r sinh(r) x`` and scales the directions
        orthogonal to ``x`` and ``u`` by ``sinh(r)/r``; with ``<e_i, x>_L = 0`` this gives
        ``<E, w>_L r/sinh(r) + (1 - r coth r)/r^2 <w, rho>_L v``.
        """
        r2 = (v * v).sum(-1, keepdim=True)
        u = self.from_coords(x, v, basis)
        s = sinhc_sq(r2)
        rho = cosh_sq(r2) * u + r2 * s * x
        wr = minkowski(w, rho, keepdim=True)
        return self.coords(x, w, basis) / s + one_minus_xcothx_over_x2_sq(r2) * wr * v

    def grad_logdetexp(self, x, v):
        """``grad_v (n-1) log(sinh r / r) = (n-1) (r coth r - 1)/r^2 v``."""
        return -(self.dim - 1) * one_minus_xcothx_over_x2_sq((v * v).sum(-1, keepdim=True)) * v

    def proj_field(self, y, h):
        """Euclidean-orthogonal projection of ``h`` onto ``T_y H^n`` (normal ``Jy``, ``J = diag(-1, 1..)``).

        Unlike the Minkowski-orthogonal ``proju`` (whose output grows like ``cosh(dist(o, y))``
        for a bounded ``h``), the result satisfies ``|f|_L <= |f|_2 <= |h|_2``: a bounded network
        gives a field of bounded speed, whose flow exists for all time (no escape to infinity).
        """
        ny = torch.cat([-y[..., :1], y[..., 1:]], -1)
        return h - (ny * h).sum(-1, keepdim=True) / (ny * ny).sum(-1, keepdim=True) * ny

    def proj_field_jvp(self, y, h, dy, dh):
        """Derivative of :meth:`proj_field`."""
        ny = torch.cat([-y[..., :1], y[..., 1:]], -1)
        dny = torch.cat([-dy[..., :1], dy[..., 1:]], -1)
        a, b = (ny * h).sum(-1, keepdim=True), (ny * ny).sum(-1, keepdim=True)
        da = (dny * h).sum(-1, keepdim=True) + (ny * dh).sum(-1, keepdim=True)
        db = 2 * (ny * dny).sum(-1, keepdim=True)
        c = a / b
        dc = (da * b - a * db) / (b * b)
        return dh - dc * ny - c * dny

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
