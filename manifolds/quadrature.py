"""Quadrature rules on 2- and 3-dimensional manifolds, to check that densities integrate to 1.

- Sphere ``S^2``: midpoint rule in (polar angle theta, azimuth phi), area element ``sin(theta)``.
- Hyperboloid ``H^2``: midpoint rule in geodesic polar coordinates ``(r, a)`` around the origin,
  ``x = exp_o(r (cos a e_1 + sin a e_2))``, area element ``sinh(r)``; truncated at ``r_max``.
- Euclidean ``R^2``: polar coordinates around 0, area element ``r``; truncated at ``r_max``.
- ``n = 3``: geodesic polar coordinates around the origin, ``x = exp_o(r w)`` with ``w`` on the
  2-sphere of directions (midpoint rule in its polar angle and azimuth, element ``sin(theta)``)
  and volume element ``s(r)^2`` with ``s = sin`` (``r < pi``), ``sinh`` (``r < r_max``) or ``r``;
  ``n_radial`` cells in ``r``, ``n_angular`` in the azimuth and ``n_angular / 2`` in the polar angle.
"""

from __future__ import annotations

import math

import torch


def quadrature_grid(
    manifold, n_radial: int = 400, n_angular: int = 800, r_max: float = 12.0, dtype=torch.float64, device=None
):
    """Points ``(N, ambient)`` and weights ``(N,)`` (volume of each cell) covering the manifold: the
    manifold's own rule (:meth:`manifolds.Manifold.quadrature`; the polar grid below by default)."""
    return manifold.quadrature(
        n_radial=n_radial, n_angular=n_angular, r_max=r_max, dtype=dtype, device=device
    )


def polar_grid(manifold, n_radial: int, n_angular: int, r_max: float, dtype=torch.float64, device=None):
    """Geodesic polar grid: ``n_radial`` cells along theta (sphere) or r, ``n_angular`` along the angle."""
    if manifold.dim == 3:
        return _polar_grid_3d(manifold, n_radial, n_angular, r_max, dtype, device)
    if manifold.dim != 2:
        raise ValueError(
            f"quadrature is implemented for 2- and 3-dimensional manifolds, got dim={manifold.dim}"
        )
    kw = dict(dtype=dtype, device=device)
    a = (torch.arange(n_angular, **kw) + 0.5) * (2 * math.pi / n_angular)
    da = 2 * math.pi / n_angular
    r_end = min(r_max, manifold.injectivity_radius)  # a compact manifold: the whole of it
    r = (torch.arange(n_radial, **kw) + 0.5) * (r_end / n_radial)
    rr, aa = torch.meshgrid(r, a, indexing="ij")
    v = torch.stack([rr * aa.cos(), rr * aa.sin()], -1).reshape(-1, 2)
    x = manifold.chart(manifold.quadrature_pole(**kw), v)
    return x, (manifold.radial_scale(rr) * (r_end / n_radial) * da).reshape(-1)


def _polar_grid_3d(manifold, n_radial, n_angular, r_max, dtype, device):
    kw = dict(dtype=dtype, device=device)
    r_end = min(r_max, manifold.injectivity_radius)
    dr, n_polar = r_end / n_radial, max(n_angular // 2, 1)
    r = (torch.arange(n_radial, **kw) + 0.5) * dr
    th = (torch.arange(n_polar, **kw) + 0.5) * (math.pi / n_polar)
    ph = (torch.arange(n_angular, **kw) + 0.5) * (2 * math.pi / n_angular)
    T, P = torch.meshgrid(th, ph, indexing="ij")
    w = torch.stack([T.sin() * P.cos(), T.sin() * P.sin(), T.cos()], -1).reshape(-1, 3)
    dw = (T.sin() * (math.pi / n_polar) * (2 * math.pi / n_angular)).reshape(-1)
    s = manifold.radial_scale(r)
    v = (r[:, None, None] * w[None]).reshape(-1, 3)
    x = manifold.chart(manifold.origin(**kw), v)
    return x, (s[:, None] ** 2 * dr * dw[None]).reshape(-1)


def integrate(log_prob, manifold, chunk: int = 50_000, **grid_kwargs) -> float:
    """``integral_M exp(log_prob(x)) dvol(x)`` by :func:`quadrature_grid`.

    ``log_prob`` maps points ``(N, n+1)`` to log-densities ``(N,)``; it is called in chunks.
    """
    x, w = quadrature_grid(manifold, **grid_kwargs)
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        lp = log_prob(x[i : i + chunk]).to(w.dtype)
        total += float((lp.exp() * w[i : i + chunk]).sum())
    return total
