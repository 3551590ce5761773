"""The flat torus ``T^n = S^1 x ... x S^1``: the manifold of protein backbone torsion angles.

Points are ambient coordinates ``(cos a_1, sin a_1, ..., cos a_n, sin a_n)`` in ``R^(2n)``: the
product of unit circles, an isometric embedding of the flat torus of side ``2 pi`` (volume
``(2 pi)^n``). A field's network sees these coordinates, so it is periodic in every angle without
any care. A tangent vector at ``x`` is ``sum_i w_i t_i(x)`` with ``t_i = (-sin a_i, cos a_i)`` in the
``i``-th pair: ``w_i`` is the angular velocity.

The geometry is that of ``R^n`` read modulo ``2 pi``: ``exp_x`` turns each angle by ``w_i``, its
differential is the identity in the basis ``t_i`` (``log J = 0``), and the chart dynamics have no
singularity anywhere, because the flow runs in the universal cover ``R^n`` of the chart. So the
MCNF needs one chart, and the chart guard never acts (``chart_guard_radius`` is None). ``logmap``
returns the shortest angle differences, in ``(-pi, pi]``.

The base distribution at ``t = 1`` is a product of von Mises laws of concentration ``conc`` at the
origin (all angles 0), or the uniform law for ``conc = 0``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special as sps

from .base import Manifold


def _pairs(x):
    """``(..., 2n)`` -> ``(..., n, 2)``: one (cos, sin) pair per circle."""
    return x.unflatten(-1, (x.shape[-1] // 2, 2))


def _turn(x, w):
    """Each circle of ``x`` turned by the angle ``w_i``: ``(..., 2n)``."""
    p = _pairs(x)
    c, s = torch.cos(w), torch.sin(w)
    return torch.stack([p[..., 0] * c - p[..., 1] * s, p[..., 1] * c + p[..., 0] * s], -1).flatten(-2)


def _angle_from(x, y):
    """``(..., n)``: the signed angle from each circle of ``x`` to that of ``y``, in ``(-pi, pi]``."""
    px, py = _pairs(x), _pairs(y)
    return torch.atan2(px[..., 0] * py[..., 1] - px[..., 1] * py[..., 0], (px * py).sum(-1))


def _tangents(x):
    """``(..., 2n)`` -> ``(..., n, 2)``: the unit tangents ``t_i = (-sin a_i, cos a_i)``."""
    p = _pairs(x)
    return torch.stack([-p[..., 1], p[..., 0]], -1)


class Torus(Manifold):
    """The flat torus ``T^n`` in ``R^(2n)`` (see the module docstring); ``dim`` is ``n``."""

    name = "Torus"
    symbol = "T"
    injectivity_radius = math.pi  # (of T^1; the chart dynamics live in the cover and never meet it)
    chart_guard_radius = None
    compact = True
    figure_kind = "plane"
    plot_extent = (-math.pi, math.pi)
    default_chart_radius = 3.0

    @property
    def ambient_dim(self) -> int:
        return 2 * self.dim

    @property
    def volume(self) -> float:
        return (2 * math.pi) ** self.dim

    # -- conversions ----------------------------------------------------------------------------
    @staticmethod
    def from_angles(a):
        """Angles ``(..., n)`` (radians) to points ``(..., 2n)``."""
        a = torch.as_tensor(a)
        return torch.stack([a.cos(), a.sin()], -1).flatten(-2)

    @staticmethod
    def to_angles(x):
        """Points ``(..., 2n)`` to angles ``(..., n)`` in ``(-pi, pi]``."""
        p = _pairs(torch.as_tensor(x))
        return torch.atan2(p[..., 1], p[..., 0])

    def angular(self, x, u):
        """The angular velocities ``w_i = <u_i, t_i(x)>`` of an ambient vector ``u`` at ``x``: ``(..., n)``."""
        return (_pairs(u) * _tangents(x)).sum(-1)

    def from_angular(self, x, w):
        """The tangent vector ``sum_i w_i t_i(x)`` at ``x``."""
        return (w.unsqueeze(-1) * _tangents(x)).flatten(-2)

    # -- geometry -------------------------------------------------------------------------------
    def residual(self, x):
        """The largest ``| |x_i|^2 - 1 |`` over the circles."""
        return ((_pairs(x) ** 2).sum(-1) - 1).abs().amax(-1)

    def inner(self, x, u, v, keepdim: bool = False):
        return (u * v).sum(-1, keepdim=keepdim)

    def proju(self, x, u):
        return self.from_angular(x, self.angular(x, u))

    def projx(self, x):
        p = _pairs(x)
        return (p / p.norm(dim=-1, keepdim=True)).flatten(-2)

    def expmap(self, x, u):
        return _turn(x, self.angular(x, u))

    def logmap(self, x, y):
        """``sum_i d_i t_i(x)`` with ``d_i`` the angle from ``x_i`` to ``y_i`` in ``(-pi, pi]``."""
        return self.from_angular(x, _angle_from(x, y))

    def dist(self, x, y, keepdim: bool = False):
        return _angle_from(x, y).norm(dim=-1, keepdim=keepdim)

    def geodesic(self, x, u, t):
        w = self.angular(x, u)
        y = _turn(x, t * w)
        return y, self.from_angular(y, w.expand_as(t * w))

    def transp(self, x, y, u):
        """Flat: the angular velocities are kept."""
        return self.from_angular(y, self.angular(x, u))

    def logdetexp(self, x, u):
        return torch.zeros_like(u[..., 0])

    def origin(self, *size, dtype=None, device=None):
        o = torch.zeros(*size, self.dim, 2, dtype=dtype, device=device)
        o[..., 0] = 1.0
        return o.flatten(-2)

    def tangent_basis(self, x):
        """Rows ``t_i(x)`` placed in the ``i``-th pair: ``(..., n, 2n)``."""
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return (eye[..., None] * _tangents(x).unsqueeze(-3)).flatten(-2)

    def coords(self, x, u, basis=None):
        return self.angular(x, u)

    def from_coords(self, x, v, basis=None):
        return self.from_angular(x, v)

    def random(self, *size, generator=None, dtype=None, device=None):
        """Uniform random points (uniform angles)."""
        a = (2 * torch.rand(*size, self.dim, generator=generator, dtype=dtype, device=device) - 1) * math.pi
        return self.from_angles(a)

    # -- chart calculus: the chart is the cover, so the closed forms are those of R^n -----------------
    def chart_coefficients(self, x, v, basis):
        return {"u": self.from_angular(x, v), "y": _turn(x, v)}

    def chart_velocity(self, x, v, w, basis, coef=None):
        y = coef["y"] if coef else _turn(x, v)
        return self.angular(y, w)

    def grad_logdetexp(self, x, v, coef=None):
        return torch.zeros_like(v)

    def proj_field_jvp(self, y, h, dy, dh):
        """Derivative of ``sum_i <h_i, t_i(y)> t_i(y)`` (the ``t_i`` are linear in ``y``)."""
        t, dt = _tangents(y), _tangents(dy)
        ph, pdh = _pairs(h), _pairs(dh)
        w = (ph * t).sum(-1, keepdim=True)
        dw = (pdh * t).sum(-1, keepdim=True) + (ph * dt).sum(-1, keepdim=True)
        return (dw * t + w * dt).flatten(-2)

    # -- quadrature and figures ----------------------------------------------------------------------
    def quadrature(
        self, n_radial: int = 400, n_angular: int = 800, r_max=None, dtype=torch.float64, device=None
    ):
        """Midpoint rule on the angle grid, ``n_angular`` cells per angle (``n = 1, 2, 3``): spectrally
        accurate for smooth periodic densities. Returns points and cell volumes."""
        if self.dim > 3:
            raise ValueError(f"quadrature covers tori of dimension <= 3, got {self.dim}")
        k = n_angular if self.dim < 3 else min(n_angular, 160)
        a = (torch.arange(k, dtype=dtype, device=device) + 0.5) * (2 * math.pi / k) - math.pi
        grid = torch.stack(torch.meshgrid(*[a] * self.dim, indexing="ij"), -1).reshape(-1, self.dim)
        return self.from_angles(grid), torch.full((len(grid),), (2 * math.pi / k) ** self.dim, dtype=dtype)

    def plot_grid(self, res: int):
        """The ``res x res`` cell centres of the square of angles ``[-pi, pi]^2`` (rows: the second
        angle), all inside, with no volume factor: ``(x, inside, log_factor)``."""
        c = torch.from_numpy((np.arange(res) + 0.5) / res * 2 * math.pi - math.pi)
        a2, a1 = torch.meshgrid(c, c, indexing="ij")
        x = self.from_angles(torch.stack([a1, a2], -1).reshape(-1, 2))
        return x, np.ones(res * res, dtype=bool), torch.zeros(res * res, dtype=torch.float64)

    def to_plot(self, x):
        """Points to the plot's plane: their two angles."""
        return self.to_angles(torch.as_tensor(x, dtype=torch.float64)).numpy()

    # -- the flow's base distribution ----------------------------------------------------------------
    def base_distribution(self, conc: float = 0.0, dtype=None, device=None):
        """Product of von Mises laws of concentration ``conc`` at the origin (``conc = 0``: uniform)."""
        return VonMisesTorus(self, torch.zeros(self.dim, dtype=dtype or torch.float64, device=device), conc)


def von_mises_angles(kappa: float, shape, generator=None, dtype=None, device=None):
    """Samples of the von Mises law ``VM(0, kappa)`` on ``(-pi, pi]`` (Best & Fisher, 1979, rejection from
    a wrapped Cauchy envelope); uniform for ``kappa = 0``."""
    n = int(np.prod(shape))
    if kappa == 0:
        return (2 * torch.rand(shape, generator=generator, dtype=dtype, device=device) - 1) * math.pi
    tau = 1 + math.sqrt(1 + 4 * kappa * kappa)
    rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho * rho) / (2 * rho)
    out = torch.empty(0, dtype=torch.float64)
    while len(out) < n:
        m = 2 * (n - len(out)) + 16
        u1, u2, u3 = torch.rand(3, m, generator=generator, dtype=torch.float64)
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1))
        out = torch.cat([out, theta[ok]])
    return out[:n].reshape(shape).to(dtype=dtype or torch.float64, device=device)


def _log_i0(kappa: float) -> float:
    return float(np.log(sps.i0e(kappa)) + kappa)


class VonMisesTorus:
    """Product of von Mises laws ``VM(mu_i, kappa)`` on ``T^n`` (``kappa = 0``: uniform): exact samples and
    ``log p(x) = sum_i [kappa cos(a_i - mu_i) - log(2 pi I_0(kappa))]`` w.r.t. the flat volume."""

    def __init__(self, manifold: Torus, mu, kappa: float = 0.0):
        if not kappa >= 0 or kappa == float("inf"):
            raise ValueError(f"the von Mises concentration must be >= 0 and finite, got {kappa}")
        self.manifold, self.mu, self.kappa = manifold, torch.as_tensor(mu), float(kappa)
        self.log_norm = manifold.dim * (math.log(2 * math.pi) + _log_i0(self.kappa))

    def log_prob(self, x):
        a = Torus.to_angles(x)
        return self.kappa * torch.cos(a - self.mu.to(a)).sum(-1) - self.log_norm

    def sample(self, n: int, generator=None, dtype=None, device=None):
        a = von_mises_angles(self.kappa, (n, self.manifold.dim), generator=generator)
        x = Torus.from_angles(a + self.mu.to(a))
        return x.to(dtype=dtype or self.mu.dtype, device=device)


class WrappedNormalTorus:
    """Product of wrapped normals on ``T^n``: angle ``a_i = mu_i + scale_i eps_i`` modulo ``2 pi``.

    ``log p`` sums the normal density over the wraps ``a_i + 2 pi k``, ``|k| <= 6``: for ``scale <= 2`` the terms left out are below ``1e-90``
    of the largest (exact in float64)."""

    def __init__(self, manifold: Torus, mu, scale):
        self.manifold = manifold
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.scale = torch.as_tensor(scale, dtype=self.mu.dtype).expand_as(self.mu)
        if not (self.scale > 0).all() or float(self.scale.max()) > 2:
            raise ValueError("wrapped-normal scales must be in (0, 2]")
        self.wraps = torch.arange(-6, 7, dtype=self.mu.dtype)

    def log_prob(self, x):
        a = Torus.to_angles(x)
        d = (a - self.mu.to(a)).unsqueeze(-1) + 2 * math.pi * self.wraps.to(a)
        s = self.scale.to(a).unsqueeze(-1)
        lp = -0.5 * (d / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(lp, -1).sum(-1)

    def sample(self, n: int, generator=None, dtype=None, device=None):
        eps = torch.randn(n, self.manifold.dim, generator=generator, dtype=self.mu.dtype)
        x = Torus.from_angles(self.mu + self.scale * eps)
        return x.to(dtype=dtype or self.mu.dtype, device=device)
