"""The unit sphere ``S^n = {x in R^(n+1) : |x| = 1}``."""

from __future__ import annotations

import math

import torch

from .base import Manifold
from .special import (
    asinc_sq,
    chart_radial_sq,
    cos_sq,
    log_sinc_sq,
    one_minus_xcotx_over_x2_sq,
    safe_sqrt,
    sinc_sq,
)


class Sphere(Manifold):
    """The sphere ``S^n`` with the round metric induced from ``R^(n+1)``.

    The origin follows the reference code: ``o = (-1, 0, ..., 0)``. ``expmap`` is a chart only
    inside the injectivity radius ``pi``; ``logmap`` is singular at the antipode (the cut locus).
    """

    name = "Sphere"
    symbol = "S"
    injectivity_radius = math.pi
    compact = True
    figure_solver = {"method": "rk4", "step_size": 1 / 4}
    default_chart_radius = math.pi / 2  # half the injectivity radius
    # three quarters of the injectivity radius, where the chart velocity's r / sin r is 3.3
    chart_guard_radius = 0.75 * math.pi
    figure_kind = "globe"
    #: Pairs closer than this to antipodal (``1 + <x, z> < CUT_LOCUS_EPS``) are :meth:`near_cut_locus`:
    #: there ``log_x z`` has no unique direction. The set has measure zero; the guard only keeps a
    #: rounding accident from producing an arbitrary flow-matching target.
    CUT_LOCUS_EPS = 1e-6

    def near_cut_locus(self, x, z):
        return 1 + (x * z).sum(-1) <= self.CUT_LOCUS_EPS

    @property
    def volume(self) -> float:
        return 2 * math.pi ** ((self.dim + 1) / 2) / math.gamma((self.dim + 1) / 2)

    def plot_grid(self, res: int):
        """Cell centres of the (longitude, latitude) grid, ``res x res``, rows from south to north."""
        lon = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 * math.pi - math.pi
        lat = (torch.arange(res, dtype=torch.float64) + 0.5) / res * math.pi - math.pi / 2
        LAT, LON = torch.meshgrid(lat, lon, indexing="ij")
        x = self.lonlat_to_xyz(LON, LAT).reshape(-1, 3)
        return x, torch.ones(res * res, dtype=torch.bool).numpy(), torch.zeros(res * res, dtype=torch.float64)

    def to_plot(self, x):
        """Points to (longitude, latitude) in degrees."""
        lon, lat = self.xyz_to_lonlat(torch.as_tensor(x, dtype=torch.float64))
        return torch.stack([lon, lat], -1).rad2deg().numpy()

    def radial_scale(self, r):
        return torch.sin(r)

    def quadrature_pole(self, dtype=None, device=None):
        """The north pole ``e_n``: the grid is the usual latitude-longitude one (theta from the pole)."""
        p = torch.zeros(self.dim + 1, dtype=dtype, device=device)
        p[-1] = 1.0
        return p

    def residual(self, x):
        """``| |x|^2 - 1 |``."""
        return ((x * x).sum(-1) - 1).abs()

    def inner(self, x, u, v, keepdim: bool = False):
        return (u * v).sum(-1, keepdim=keepdim)

    def proju(self, x, u):
        """Orthogonal projection of an ambient vector onto ``T_x S^n``."""
        return u - (x * u).sum(-1, keepdim=True) * x

    def projx(self, x):
        """Radial projection onto the sphere."""
        return x / x.norm(dim=-1, keepdim=True)

    def expmap(self, x, u):
        """``exp_x(u) = cos(r) x + sin(r)/r u`` with ``r = |u|``."""
        r2 = (u * u).sum(-1, keepdim=True)
        return cos_sq(r2) * x + sinc_sq(r2) * u

    def logmap(self, x, y):
        """``log_x(y) = theta / sin(theta) (y - cos(theta) x)``, ``theta = atan2(|y - <x,y>x|, <x,y>)``."""
        c = (x * y).sum(-1, keepdim=True)
        u = y - c * x
        s2 = (u * u).sum(-1, keepdim=True)
        # theta/sin(theta) is a function of sin^2 on the near side (theta < pi/3); atan2 covers the rest.
        near = c > 0.5
        factor_far = torch.atan2(safe_sqrt(s2), c) / torch.where(s2 > 0, safe_sqrt(s2), torch.ones_like(s2))
        s2_near = torch.where(near, s2, torch.zeros_like(s2))
        factor_near = asinc_sq(s2_near)
        return torch.where(near, factor_near, factor_far) * u

    def geodesic(self, x, u, t):
        """``gamma(t) = cos(t r) x + sin(t r)/r u``, ``gamma'(t) = -r sin(t r) x + cos(t r) u`` (``r = |u|``).

        Written with ``r sin(t r) = t r^2 sinc(t r)`` so that ``u = 0`` needs no division.
        """
        r2 = (u * u).sum(-1, keepdim=True)
        rt2 = t * t * r2
        c, s = cos_sq(rt2), sinc_sq(rt2)
        return c * x + (t * s) * u, c * u - (t * r2 * s) * x

    def dist(self, x, y, keepdim: bool = False):
        """``2 atan2(|x - y|, |x + y|)``: accurate at both 0 and pi."""
        a = safe_sqrt(((x - y) ** 2).sum(-1, keepdim=keepdim))
        b = safe_sqrt(((x + y) ** 2).sum(-1, keepdim=keepdim))
        return 2 * torch.atan2(a, b)

    def transp(self, x, y, u):
        """Parallel transport of ``u`` from ``x`` to ``y`` along the minimizing geodesic."""
        c = (x * y).sum(-1, keepdim=True)
        return u - (y * u).sum(-1, keepdim=True) / (1 + c) * (x + y)

    def logdetexp(self, x, u):
        """``log J(u) = (n - 1) log|sin r / r|``, the volume change of ``expmap`` at ``x``."""
        r2 = (u * u).sum(-1)
        return (self.dim - 1) * log_sinc_sq(r2)

    def chart_coefficients(self, x, v, basis):
        r2 = (v * v).sum(-1, keepdim=True)
        u = self.from_coords(x, v, basis)
        c, s, q = chart_radial_sq(r2, 1)
        return {"u": u, "y": c * x + s * u, "r2": r2, "C": c, "S": s, "q": q}

    def chart_velocity(self, x, v, w, basis, coef=None):
        """Closed form of ``E (D exp_x(u))^(-1) w`` on the sphere (``u = E^T v``, ``r = |v|``).

        ``D exp_x(u)`` maps ``u`` to ``rho = cos(r) u - r sin(r) x`` (the radial velocity) and
        scales directions orthogonal to ``x`` and ``u`` by ``sin(r)/r``. Inverting both parts and
        using ``E x = 0`` gives ``E w r/sin(r) + (1 - r cot r)/r^2 <w, rho> v``.
        """
        coef = coef or self.chart_coefficients(x, v, basis)
        r2 = coef["r2"]
        rho = coef["C"] * coef["u"] - r2 * coef["S"] * x
        wr = (w * rho).sum(-1, keepdim=True)
        return self.coords(x, w, basis) / coef["S"] + coef["q"] * wr * v

    def grad_logdetexp(self, x, v, coef=None):
        """``grad_v log J(v) = -(n-1) q(r^2) v``, ``q = (1 - r cot r) / r^2``."""
        q = coef["q"] if coef else one_minus_xcotx_over_x2_sq((v * v).sum(-1, keepdim=True))
        return -(self.dim - 1) * q * v

    def proj_field_jvp(self, y, h, dy, dh):
        """Derivative of ``h - <y, h> y``."""
        yh = (y * h).sum(-1, keepdim=True)
        d_yh = (dy * h).sum(-1, keepdim=True) + (y * dh).sum(-1, keepdim=True)
        return dh - d_yh * y - yh * dy

    def field_divergence(self, y, dirs, h, dh, noise=None):
        """Closed form for ``f = h - <y, h> y``: ``D_e f = dh_e - (<e, h> + <y, dh_e>) y - <y, h> e``,
        so ``<e, D_e f> = <e, dh_e> - <y, h> |e|^2`` (``<e, y> = 0``), and over an orthonormal frame
        ``div f = sum_i <e_i, dh_i> - n <y, h>``. With Hutchinson's direction ``w`` the curvature part
        ``-<y, h> |w|^2`` is replaced by its expectation ``-n <y, h>`` (exact for Rademacher noise)."""
        yh = (y * h).sum(-1, keepdim=True)
        return h - yh * y, (dirs * dh).sum((-2, -1)) - self.dim * yh.squeeze(-1)

    def origin(self, *size, dtype=None, device=None):
        o = torch.zeros(*size, self.dim + 1, dtype=dtype, device=device)
        o[..., 0] = -1.0
        return o

    def tangent_basis(self, x):
        """The standard basis ``(0, u_i)`` transported from ``s o`` to ``x``, where ``s = 1`` (the origin)
        or, in the hemisphere ``x_0 > 0``, ``s = -1`` (its antipode ``e_0``, where transport from the
        origin is singular). In closed form, with ``x' = x_(1:)``:
        ``e_i = (s x'_i, u_i - x'_i x' / (1 + |x_0|))``."""
        x0, xs = x.split([1, self.dim], dim=-1)
        s = 1 - 2 * (x0 > 0).to(x.dtype)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        block = eye - (xs / (1 + x0.abs())).unsqueeze(-1) * xs.unsqueeze(-2)
        return torch.cat([(s * xs).unsqueeze(-1), block], -1)

    def random(self, *size, generator=None, dtype=None, device=None):
        """Uniform random points on the sphere."""
        x = torch.randn(*size, self.dim + 1, generator=generator, dtype=dtype, device=device)
        return self.projx(x)

    # -- conversions for plots ----------------------------------------------------------------
    @staticmethod
    def lonlat_to_xyz(lon, lat):
        """Geographic (longitude, latitude) in radians to points on ``S^2``.

        ``x = cos(lat) cos(lon), y = cos(lat) sin(lon), z = sin(lat)``.
        """
        lon, lat = torch.as_tensor(lon), torch.as_tensor(lat)
        return torch.stack(
            [torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1
        )

    @staticmethod
    def xyz_to_lonlat(x):
        """Points on ``S^2`` to (longitude, latitude) in radians, longitude in ``(-pi, pi]``."""
        lon = torch.atan2(x[..., 1], x[..., 0])
        lat = torch.atan2(x[..., 2], torch.linalg.vector_norm(x[..., :2], dim=-1))
        return lon, lat
