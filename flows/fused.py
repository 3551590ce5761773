"""One evaluation of the ODE function as one autograd node: the hyperboloid's exact divergence with its
reverse pass written out.

Why. A default training step on ``H^2`` is 16 evaluations of :func:`flows.divergence.chart_divergence`
(rk4, step 1/4, one chart), each about 165 small tensor operations forward and 280 autograd nodes
backward on a batch of 200 points: the step is dispatch-bound, not arithmetic-bound (the bare 32x3
network forward and backward is 0.2 ms of an evaluation's 1.35 ms on one CPU thread). Here the same
numbers are computed by :class:`HyperboloidExact`, a ``torch.autograd.Function`` whose forward runs
without recording a graph and whose backward is the chain rule of the formulas below written by hand:
about a third of the operations, one node per evaluation. The formulas are those of
:mod:`flows.divergence` and :class:`manifolds.Hyperboloid` (``chart_coefficients``, ``tangent_basis``,
``field_divergence``, ``chart_velocity``, ``grad_logdetexp``); tests/test_fused.py checks values and
gradients against them and against ``torch.autograd.gradcheck``.

Forward, at chart coordinates ``v`` ``(B, n)`` of the chart at ``p`` ``(B, n+1)`` with basis ``E``
``(B, n, n+1)`` (``k = n - 1``, ``<.,.>`` Minkowski, ``J = diag(-1, 1, ..., 1)``)::

    r2 = |v|^2,  u = v E,  (C, S, q) = (cosh r, sinh r / r, (1 - r coth r) / r^2)
    y = C p + S u,  w = 1 / (1 + y_0),  Ey = [y', I + w y' y'^T]           (tangent frame at y)
    h, dh = network and its JVPs along Ey                                    (tanh MLP of [y, t])
    f = h' Ey,  div_f = tr(dh') + k w <y', h'>                               (field_divergence)
    rho = C u + r2 S p,  g = E J f / S + q <f, rho> v                        (chart_velocity)
    div = div_f + k q <v, g>                                                  (minus <grad log J, g>)

The network's JVPs ride with its values as extra rows of the same matrix products (``[a; da] W^T``), so
a layer costs one product forward and two backward whatever ``n``.

Scope: the exact divergence (no Hutchinson noise, no regularizers) of a :class:`flows.VectorField` with
``tanh`` units, no Fourier features and no speed limiter, on the hyperboloid; everything else runs
through :func:`flows.divergence.chart_divergence` unchanged (:func:`supports`). Gradients flow to ``t``, ``v``,
``p``, ``E`` and the network's parameters (``t``: an adaptive solver's times depend on the state); not
twice (``once_differentiable``: nothing here differentiates a gradient).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from manifolds.hyperboloid import Hyperboloid
from manifolds.special import _threshold, cached_constant

from .vector_field import VectorField

# Taylor coefficients in r2 = r^2 of (C, S, q, dC/dr2, dS/dr2, dq/dr2) for the hyperboloid's chart, rows
# r2^0 .. r2^3 (q = (1 - r coth r) / r^2 = -1/3 + r2/45 - 2 r2^2/945 + r2^3/4725 - 2 r2^4/93555 ...)
_SERIES = [
    [1, 1, -1 / 3, 1 / 2, 1 / 6, 1 / 45],
    [1 / 2, 1 / 6, 1 / 45, 1 / 12, 1 / 60, -4 / 945],
    [1 / 24, 1 / 120, -2 / 945, 1 / 240, 1 / 1680, 3 / 4725],
    [1 / 720, 1 / 5040, 1 / 4725, 1 / 10080, 1 / 90720, -8 / 93555],
]


_CONSTANTS: dict = {}


def supports(manifold, field, divergence: str) -> bool:
    """Whether :class:`HyperboloidExact` computes this model's exact divergence (see the module's scope)."""
    return (
        divergence == "exact"
        and isinstance(manifold, Hyperboloid)
        and type(field) is VectorField
        and field.activation == "tanh"
        and field.fourier == 0
        and field.max_speed is None
    )


def radial(r2):
    """``(C, S, q)`` of :func:`manifolds.special.chart_radial_sq` (curvature -1) and their derivatives in
    ``r2``, each ``(B, 1)``; the Taylor branch below the same threshold (on the CPU only when a point needs
    it: the check costs less than the branch)."""
    small = r2 < _threshold(r2)
    some = r2.device.type != "cpu" or bool(small.any())
    s = torch.where(small, 1.0, r2) if some else r2
    r = s.sqrt()
    C = torch.cosh(r)
    S = torch.sinh(r) / r
    q = (1 - C / S) / s  # (1 - r coth r) / r^2
    dS = (C - S) / (2 * s)
    dq = (C * dS / (S * S) - 0.5 - q) / s  # d/dr2 of (1 - R) / r2, with dR/dr2 = 1/2 - C dS / S^2
    if not some:
        return C, S, q, 0.5 * S, dS, dq
    exact = torch.cat([C, S, q, 0.5 * S, dS, dq], -1)
    c = cached_constant(_CONSTANTS, ("series", r2.dtype, r2.device),
                        lambda: torch.tensor(_SERIES, dtype=r2.dtype, device=r2.device))  # fmt: skip
    series = c[0] + r2 * (c[1] + r2 * (c[2] + r2 * c[3]))
    return torch.where(small, series, exact).split(1, -1)


def _mlp_forward(layers, a, da):
    """The tanh MLP at inputs ``a`` ``(B, n_in)`` with its directional derivatives along ``da``
    ``(B, k, n_in)``: returns ``(h, dh)`` and, per layer, ``(a, da, dz, ds)`` for the backward pass (the
    layer's inputs, and for a hidden layer its pre-activations' derivatives and ``tanh'``)."""
    saved = []
    for W, b in layers[:-1]:
        z = torch.addmm(b, a, W.T)
        dz = da @ W.T
        a_next = torch.tanh(z)
        ds = 1 - a_next * a_next  # tanh'(z)
        saved.append((a, da, dz, ds))
        a, da = a_next, ds.unsqueeze(1) * dz
    W, b = layers[-1]
    saved.append((a, da, None, None))
    return torch.addmm(b, a, W.T), da @ W.T, saved


def _mlp_backward(layers, saved, G, dG):
    """Gradients of :func:`_mlp_forward`: from those of ``(h, dh)`` to those of ``(a, da)`` at the input and
    of every layer's weight and bias (lists in layer order)."""
    gW, gb = [None] * len(layers), [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        W = layers[i][0]
        a, da, _, _ = saved[i]
        gW[i] = torch.addmm(G.T @ a, dG.flatten(0, 1).T, da.flatten(0, 1))
        gb[i] = G.sum(0)
        G, dG = G @ W, dG @ W  # the gradients of layer i's inputs
        if i:
            # those inputs are a = tanh(z), da = ds dz with ds = 1 - a^2 (layer i - 1's activation)
            dz, ds = saved[i - 1][2:]
            G = ds * torch.addcmul(G, a, (dG * dz).sum(1), value=-2)
            dG = ds.unsqueeze(1) * dG
    return G, dG, gW, gb


class HyperboloidExact(torch.autograd.Function):
    """``(g, div)`` of :func:`flows.divergence.chart_divergence` on the hyperboloid (exact divergence), as
    one autograd node; ``apply(t, v, p, E, W_1, b_1, ..., W_L, b_L)``."""

    @staticmethod
    def forward(ctx, t, v, p, E, *params):
        layers = list(zip(params[0::2], params[1::2], strict=True))
        n = v.shape[-1]
        k = n - 1
        r2 = (v * v).sum(-1, keepdim=True)
        u = torch.bmm(v.unsqueeze(1), E).squeeze(1)
        C, S, q, dC, dS, dq = radial(r2)
        y = torch.addcmul(C * p, S, u)
        ys = y[:, 1:]
        w = (y[:, :1] + 1).reciprocal()
        eye = cached_constant(_CONSTANTS, ("eye", n, y.dtype, y.device),
                              lambda: torch.eye(n, dtype=y.dtype, device=y.device))  # fmt: skip
        Ey = torch.cat([ys.unsqueeze(-1), torch.baddbmm(eye, (w * ys).unsqueeze(-1), ys.unsqueeze(1))], -1)
        # the network at [y, t] and its derivatives along the frame (time is not perturbed)
        W0, b0 = layers[0]
        nd = W0.dtype
        ctx.t_dtype = t.dtype if torch.is_tensor(t) else nd
        ctx.t = t = torch.as_tensor(t, dtype=nd, device=W0.device)
        first = (W0[:, : n + 1], b0 + t * W0[:, n + 1])
        h, dh, saved = _mlp_forward([first, *layers[1:]], y.to(nd), Ey.to(nd))
        hs, dhs = h[:, 1:].to(y.dtype), dh[:, :, 1:].to(y.dtype)
        f = torch.bmm(hs.unsqueeze(1), Ey).squeeze(1)
        ysh = (ys * hs).sum(-1, keepdim=True)
        rho = torch.addcmul(C * u, r2 * S, p)
        Jf = f * _minkowski_signs(f)
        wr = (Jf * rho).sum(-1, keepdim=True)
        cf = torch.bmm(E, Jf.unsqueeze(-1)).squeeze(-1)
        g = torch.addcmul(cf / S, q * wr, v)
        vg = (v * g).sum(-1, keepdim=True)
        div = dhs.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True) + k * (w * ysh + q * vg)
        # (g is an output: saved through save_for_backward, or the graph would hold itself in a cycle)
        ctx.save_for_backward(v, p, E, g)
        ctx.geometry = (r2, u, C, S, q, dC, dS, dq, y, w, Ey, hs, ysh, rho, Jf, wr, cf, vg)
        ctx.network = (layers, saved)
        return g, div.squeeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, Gg, Gd):
        v, p, E, g = ctx.saved_tensors
        r2, u, C, S, q, dC, dS, dq, y, w, Ey, hs, ysh, rho, Jf, wr, cf, vg = ctx.geometry
        layers, saved = ctx.network
        want_p, want_E = ctx.needs_input_grad[2:4]
        n = v.shape[-1]
        k = n - 1
        ys = y[:, 1:]
        kGd = k * Gd.unsqueeze(-1)
        # div = tr(dh') + k w <y', h'> + k q <v, g>;  g = cf / S + q wr v
        Gg = torch.addcmul(Gg, kGd * q, v)
        Ggv = (Gg * v).sum(-1, keepdim=True)
        Gq = torch.addcmul(kGd * vg, wr, Ggv)
        Gv = torch.addcmul((kGd * q) * g, q * wr, Gg)
        Gwr = q * Ggv
        Gcf = Gg / S
        # cf = E J f, wr = <J f, rho>, rho = C u + r2 S p
        Gf = torch.addcmul(torch.bmm(Gcf.unsqueeze(1), E).squeeze(1), Gwr, rho) * _minkowski_signs(Jf)
        Grho = Gwr * Jf
        Grp = (Grho * p).sum(-1, keepdim=True)
        GS = r2 * Grp - (Gcf * cf).sum(-1, keepdim=True) / S
        GC = (Grho * u).sum(-1, keepdim=True)
        Gr2 = S * Grp
        # f = h' Ey; the network's h' and dh' (the trace takes dh'_ii)
        kGdw = kGd * w
        Ghs = torch.addcmul(torch.bmm(Ey, Gf.unsqueeze(-1)).squeeze(-1), kGdw, ys)
        GEy = hs.unsqueeze(-1) * Gf.unsqueeze(1)
        nd = layers[0][0].dtype
        Gh = torch.cat([torch.zeros_like(Ghs[:, :1]), Ghs], -1).to(nd)
        Gdh = torch.diag_embed(Gd.to(nd).unsqueeze(-1).expand(-1, n), offset=1)[:, :n]
        W0, b0 = layers[0]
        first = (W0[:, : n + 1], b0)
        Ga, Gda, gW, gb = _mlp_backward([first, *layers[1:]], saved, Gh, Gdh)
        gW[0] = torch.cat([gW[0], (ctx.t * gb[0]).unsqueeze(-1)], -1)  # the time column: z += t W[:, n+1]
        Gy = Ga.to(y.dtype)
        GEy = GEy + Gda.to(y.dtype)
        # the term k w <y', h'> and the frame Ey = [y', I + w y' y'^T], w = 1 / (1 + y_0)
        GB = GEy[:, :, 1:]
        GBs = torch.bmm(GB + GB.transpose(-1, -2), ys.unsqueeze(-1)).squeeze(-1)
        Gys = GEy[:, :, 0] + w * GBs + kGdw * hs
        Gy0 = -(w * w) * ((ys * GBs).sum(-1, keepdim=True) / 2 + kGd * ysh)
        Gy = Gy + torch.cat([Gy0, Gys], -1)
        # y = C p + S u
        GC = GC + (Gy * p).sum(-1, keepdim=True)
        GS = GS + (Gy * u).sum(-1, keepdim=True)
        Gu = torch.addcmul(C * Grho, S, Gy)
        # u = v E, r2 = |v|^2, (C, S, q) of r2
        Gr2 = Gr2 + GC * dC + GS * dS + Gq * dq
        Gv = Gv + torch.bmm(E, Gu.unsqueeze(-1)).squeeze(-1) + 2 * Gr2 * v
        Gp = torch.addcmul((r2 * S) * Grho, C, Gy) if want_p else None
        GE = (Gcf.unsqueeze(-1) * Jf.unsqueeze(1) + v.unsqueeze(-1) * Gu.unsqueeze(1)) if want_E else None
        # t enters the first layer as z += t W[:, n+1]: it carries a gradient where the solver's times depend
        # on the state (an adaptive solver's steps), and the generic path follows it there too
        Gt = (gb[0] * W0[:, n + 1]).sum().to(ctx.t_dtype) if ctx.needs_input_grad[0] else None
        grads = [x for pair in zip(gW, gb, strict=True) for x in pair]
        return Gt, Gv, Gp, GE, *grads


def _minkowski_signs(x):
    """``(-1, 1, ..., 1)`` in ``x``'s dtype and device (cached)."""
    d = x.shape[-1]

    def build():
        s = torch.ones(d, dtype=x.dtype, device=x.device)
        s[0] = -1
        return s

    return cached_constant(_CONSTANTS, ("signs", d, x.dtype, x.device), build)


def hyperboloid_exact(field, t, p, v, E):
    """``(g, div)`` of the chart field through :class:`HyperboloidExact` (same signature as the generic
    :func:`flows.divergence.chart_divergence` minus the manifold and its options)."""
    params = [x for layer in field.layers for x in (layer.weight, layer.bias)]
    return HyperboloidExact.apply(t, v, p, E, *params)
