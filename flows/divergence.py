"""Divergence ``tr(dg/dv)`` of the chart vector field ``g``: exact or Hutchinson, chosen by name.

Let ``phi_p`` be the exponential-map chart with volume change ``J(v)``, ``y = phi_p(v)`` and
``f = proj_field(y, h(y, t))`` the manifold field. Writing the Riemannian divergence in the chart
(``div_M f = (1/J) d_i (J g^i)``) gives the identity used here:

    tr(dg/dv) = div_M f(y) - <grad_v log J(v), g(v)>,
    div_M f(y) = sum_i <e_i, D_(e_i) f(y)>,

with ``(e_i)`` an orthonormal basis of ``T_y M`` and ``D`` the ambient derivative (for an embedded
manifold the tangential part of ``D`` is the Levi-Civita connection, and ``e_i`` is tangent).
``D_(e_i) f`` is propagated forward through the MLP and the projection in closed form. It is the same number as the trace of the chart
Jacobian (tests check it against ``torch.autograd`` Jacobians), at the cost of ``n`` forward-mode
JVPs of the MLP alone instead of ``n`` backward passes through the chart maps.

- ``exact`` (default): all ``n`` directions ``e_i``.
- ``hutchinson``: one direction ``w = sum_i eps_i e_i`` with ``E[eps eps^T] = I`` (Rademacher or
  Gaussian, drawn once per solve); unbiased for the Jacobian part, whatever ``n``; the curvature
  and log-det terms stay exact.
- ``exact_autograd``: the reference's approach, ``n`` reverse-mode passes through ``v -> g(v)``.
"""

from __future__ import annotations

import torch

from manifolds.special import sum_last

DIVERGENCES = ("exact", "hutchinson", "exact_autograd")


def chart_divergence(manifold, field, t, p, v, basis, noise=None, reg: bool = False):
    """``(g, tr(dg/dv))`` at chart coordinates ``v`` ``(B, n)`` of the chart at ``p``.

    ``noise`` ``(B, n)`` switches to the Hutchinson estimator. With ``reg`` also the integrands of
    the regularizers of Finlay et al. (2020), "How to train your neural ODE": the kinetic energy
    ``|f(y)|^2`` and the squared Frobenius norm of the covariant derivative,
    ``sum_i |P_y D_(e_i) f|^2`` over the orthonormal frame (exact) or ``|P_y D_w f|^2`` for the
    Hutchinson direction ``w`` (an unbiased estimate of the same), with ``P_y`` the projection onto
    ``T_y M``; returned as ``(g, div, kinetic, frobenius)``.
    """
    M = manifold
    coef = M.chart_coefficients(p, v, basis)
    y = coef["y"]
    Ey = M.tangent_basis(y)  # (B, n, n+1)
    dirs = Ey if noise is None else (noise.unsqueeze(-1) * Ey).sum(-2, keepdim=True)
    h, dh = field.ambient_jvp(t, y, dirs)
    if not reg:
        f, div_f = M.field_divergence(y, dirs, h, dh, noise)  # f and sum_i <e_i, D_{e_i} f>
        g = M.chart_velocity(p, v, f, basis, coef)
        return g, div_f - sum_last(M.grad_logdetexp(p, v, coef) * g)
    f, df = M.field_jvps(y, dirs, h, dh)  # f and D_{e_i} f
    div_f = sum_last(M.inner(y.unsqueeze(-2), dirs, df))  # sum_i <e_i, D_{e_i} f>
    g = M.chart_velocity(p, v, f, basis, coef)
    div = div_f - sum_last(M.grad_logdetexp(p, v, coef) * g)
    cov = M.proju(y.unsqueeze(-2), df)  # the covariant derivatives, tangent at y
    return g, div, M.inner(y, f, f), M.inner(y.unsqueeze(-2), cov, cov).sum(-1)


def exact_autograd(g_fn, v):
    """``(g, tr(dg/dv))`` by ``n`` reverse-mode passes (graphs kept only when grad is enabled)."""
    outer = torch.is_grad_enabled()
    with torch.enable_grad():
        if not (outer and v.requires_grad):  # evaluation, or the adjoint's forward solve
            v = v.detach().requires_grad_(True)
        g = g_fn(v)
        div = 0.0
        for i in range(v.shape[-1]):
            (col,) = torch.autograd.grad(g[..., i].sum(), v, create_graph=outer, retain_graph=True)
            div = div + col[..., i]
    return (g, div) if outer else (g.detach(), div.detach())


def sample_noise(shape, kind: str = "rademacher", dtype=None, device=None, generator=None):
    """Noise for the Hutchinson estimator, with ``E[eps eps^T] = I``."""
    if kind == "rademacher":
        r = torch.randint(0, 2, shape, generator=generator, device=device)
        return (2 * r - 1).to(dtype)
    if kind == "gaussian":
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)
    raise ValueError(f"unknown Hutchinson noise {kind!r}; valid: rademacher, gaussian")
