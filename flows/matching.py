"""Riemannian flow matching for the MCNF field (docs/math.md, "Flow matching").

The flow maps data ``x`` at ``t = 0`` to base points ``z`` at ``t = 1``. For a pair ``(x, z)`` the
conditional path is the geodesic ``x_t = exp_x(t log_x z)`` and its velocity ``u_t = d/dt x_t`` has
a closed form (:meth:`manifolds.Manifold.geodesic`). Regressing the field onto it,

    L = E_{t ~ U(0,1), x ~ data, z ~ base} |f(t, x_t) - u_t|^2_{x_t},

has the marginal velocity field of the mixture of these paths as its minimizer (Chen & Lipman
2023, "Flow Matching on General Geometries"), whose flow carries the data distribution to the base.
Training needs no ODE solve and no divergence; the trained field is an ordinary :class:`flows.MCNF`
field, scored by the exact multi-chart change of variables.
"""

from __future__ import annotations


def conditional_path(manifold, x, z, t):
    """``(x_t, u_t, keep)``: the geodesic from ``x`` to ``z`` at times ``t`` ``(B,)`` and its velocity
    (:meth:`manifolds.Manifold.interpolate`).

    Computed in the manifold's compute dtype (float64 on the hyperboloid for float32 inputs), with
    ``x`` and ``z`` re-projected onto the manifold when they are cast; ``x_t`` is re-projected onto the
    manifold and ``u_t`` onto its tangent space. ``keep`` is False for
    pairs at the sphere's cut locus.
    """
    dt = manifold.compute_dtype(x)
    # re-projected after an up-cast: a float32 hyperboloid point at r = 7 (x_0 ~ 550) is off the
    # sheet by ~0.04 in <x, x>_L, which made log_x z, and so the regression targets, wrong by 10x
    # and more (points already in the compute dtype are used as given)
    if x.dtype != dt:
        x = manifold.projx(x.to(dt))
    if z.dtype != dt:
        z = manifold.projx(z.to(dt))
    t = t.to(dt).unsqueeze(-1)
    xt, ut = manifold.interpolate(x, z, t)  # two-point on the hyperboloid: exact for far pairs
    xt = manifold.projx(xt)
    ut = manifold.proju(xt, ut)
    keep = ~manifold.near_cut_locus(x, z)
    return xt, ut, keep


def flow_matching_loss(model, x, z, t):
    """Mean Riemannian squared error ``|f(t, x_t) - u_t|^2`` of ``model.field`` over the batch.

    ``x``: data ``(B, n+1)``; ``z``: base samples ``(B, n+1)``; ``t``: times ``(B,)`` in ``[0, 1]``. A field
    average (:class:`flows.FieldAverage`) regresses each member on its own share of the batch.
    """
    M = model.manifold
    xt, ut, keep = conditional_path(M, x, z, t)
    f = model.field.split(t.to(xt.dtype), xt)
    d = f - ut
    sq = M.inner(xt, d, d)
    w = keep.to(sq.dtype)
    return ((sq * w).sum() / w.sum().clamp(min=1)).to(next(model.parameters()).dtype)
