"""One evaluation of the ODE function as one autograd node: the hyperboloid's exact divergence with its
reverse pass written out.

Why. A default training step on ``H^2`` is 16 evaluations of :func:`flows.divergence.chart_divergence`
(rk4, step 1/4, one chart), each about 165 small tensor operations forward and 280 autograd nodes
backward on a batch of 200 points: the step is dispatch-bound, not arithmetic-bound (the bare 32x3
network forward and backward is 0.2 ms of an evaluation's 1.25 ms on one CPU thread). Here the same
numbers are computed by :class:`HyperboloidExact`, a ``torch.autograd.Function`` whose forward runs
without recording a graph and whose backward is the chain rule of the formulas below written by hand:
one node per evaluation and about a third of the operations. On the CPU those operations run on numpy
views of the tensors (no copies; numpy's per-call cost on arrays this small is a third of torch's, and
its ``tanh`` a tenth), the matrix products through torch; on other devices on the tensors themselves
(:class:`_Numpy`, :class:`_Torch`: one kernel, two array libraries). An evaluation forward and backward:
1.25 -> 0.65 ms. The formulas are those of :mod:`flows.divergence` and :class:`manifolds.Hyperboloid`
(``chart_coefficients``, ``tangent_basis``, ``field_divergence``, ``chart_velocity``,
``grad_logdetexp``); tests/test_fused.py checks values and gradients against them and against
``torch.autograd.gradcheck``.

Forward, at chart coordinates ``v`` ``(B, n)`` of the chart at ``p`` ``(B, n+1)`` with basis ``E``
``(B, n, n+1)`` (``k = n - 1``, ``<.,.>`` Minkowski, ``J = diag(-1, 1, ..., 1)``)::

    r2 = |v|^2,  u = v E,  (C, S, q) = (cosh r, sinh r / r, (1 - r coth r) / r^2)
    y = C p + S u,  w = 1 / (1 + y_0),  Ey = [y', I + w y' y'^T]           (tangent frame at y)
    h, dh = network and its JVPs along Ey                                    (tanh MLP of [y, t])
    f = h' Ey,  div_f = tr(dh') + k w <y', h'>                               (field_divergence)
    rho = C u + r2 S p,  g = E J f / S + q <f, rho> v                        (chart_velocity)
    div = div_f + k q <v, g>                                                  (minus <grad log J, g>)

The network's JVPs are propagated forward beside its values (``dz = da W^T``, ``da' = tanh'(z) dz``), the
time folded into the first layer's bias.

Scope: the exact divergence (no Hutchinson noise, no regularizers) of a :class:`flows.VectorField` with
``tanh`` units, no Fourier features and no speed limiter, on the hyperboloid; everything else runs
through :func:`flows.divergence.chart_divergence` unchanged (:func:`supports`). Gradients flow to ``t``, ``v``,
``p``, ``E`` and the network's parameters (``t``: an adaptive solver's times depend on the state); not
twice (``once_differentiable``: nothing here differentiates a gradient).
"""

from __future__ import annotations

import numpy as np
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


class _Numpy:
    """The kernel's array operations on numpy arrays (CPU): a small-array operation costs a third of
    torch's (0.4 against 1.2 us for a product of 200 x 3 floats; ``tanh`` of 200 x 32 floats 1.5 against
    15 us, one thread); matrix products go through torch (its BLAS and its thread setting)."""

    xp = np

    @staticmethod
    def cat(xs, axis):
        return np.concatenate(xs, axis)

    @staticmethod
    def cast(x, dtype):
        return x.astype(dtype, copy=False)

    @staticmethod
    def rowdot(a, b):
        return (a * b).sum(-1, keepdims=True)

    @staticmethod
    def mm(a, b):
        return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()

    @staticmethod
    def constant(name, rows, like):
        return cached_constant(
            _CONSTANTS, ("np", name, like.dtype), lambda: np.array(rows(), dtype=like.dtype)
        )


class _Torch:
    """The same on torch tensors (other devices)."""

    xp = torch

    @staticmethod
    def cat(xs, axis):
        return torch.cat(xs, axis)

    @staticmethod
    def cast(x, dtype):
        return x.to(dtype)

    @staticmethod
    def rowdot(a, b):
        return (a * b).sum(-1, keepdim=True)

    @staticmethod
    def mm(a, b):
        return a @ b

    @staticmethod
    def constant(name, rows, like):
        key = ("torch", name, like.dtype, like.device)
        return cached_constant(
            _CONSTANTS, key, lambda: torch.tensor(rows(), dtype=like.dtype, device=like.device)
        )


def _radial(ops, r2):
    """``(C, S, q)`` of :func:`manifolds.special.chart_radial_sq` (curvature -1) and their derivatives in
    ``r2``, each ``(B, 1)``; the Taylor branch below the same threshold (only when a point needs it)."""
    xp = ops.xp
    small = r2 < _threshold(torch.empty(0, dtype=torch.float64))
    some = bool(small.any())
    s = xp.where(small, 1.0, r2) if some else r2
    r = xp.sqrt(s)
    C = xp.cosh(r)
    S = xp.sinh(r) / r
    q = (1 - C / S) / s  # (1 - r coth r) / r^2
    dS = (C - S) / (2 * s)
    dq = (C * dS / (S * S) - 0.5 - q) / s  # d/dr2 of (1 - R) / r2, with dR/dr2 = 1/2 - C dS / S^2
    out = [C, S, q, 0.5 * S, dS, dq]
    if some:
        c = ops.constant("series", lambda: _SERIES, r2)
        series = c[0] + r2 * (c[1] + r2 * (c[2] + r2 * c[3]))
        out = [xp.where(small, series[:, i : i + 1], x) for i, x in enumerate(out)]
    return out


def _linear(ops, a, W):
    """``a W^T`` for ``a`` of shape ``(..., n_in)`` as one 2-d product."""
    return ops.mm(a.reshape(-1, a.shape[-1]), W.T).reshape(*a.shape[:-1], W.shape[0])


def _mlp_forward(ops, layers, a, da):
    """The tanh MLP at inputs ``a`` ``(B, n_in)`` with its directional derivatives along ``da``
    ``(B, k, n_in)``: returns ``(h, dh)`` and, per layer, ``(a, da, dz, ds)`` for the backward pass (the
    layer's inputs, and for a hidden layer its pre-activations' derivatives and ``tanh'``)."""
    saved = []
    for W, b in layers[:-1]:
        z = ops.mm(a, W.T) + b
        dz = _linear(ops, da, W)
        a_next = ops.xp.tanh(z)
        ds = 1 - a_next * a_next  # tanh'(z)
        saved.append((a, da, dz, ds))
        a, da = a_next, ds[:, None] * dz
    W, b = layers[-1]
    saved.append((a, da, None, None))
    return ops.mm(a, W.T) + b, _linear(ops, da, W), saved


def _mlp_backward(ops, layers, saved, G, dG):
    """Gradients of :func:`_mlp_forward`: from those of ``(h, dh)`` to those of ``(a, da)`` at the input and
    of every layer's weight and bias (lists in layer order)."""
    gW, gb = [None] * len(layers), [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        W = layers[i][0]
        a, da, _, _ = saved[i]
        m = da.shape[-1]
        gW[i] = ops.mm(G.T, a) + ops.mm(dG.reshape(-1, dG.shape[-1]).T, da.reshape(-1, m))
        gb[i] = G.sum(0)
        G, dG = ops.mm(G, W), _linear(ops, dG, W.T)  # the gradients of layer i's inputs
        if i:
            # those inputs are a = tanh(z), da = ds dz with ds = 1 - a^2 (layer i - 1's activation)
            dz, ds = saved[i - 1][2:]
            G = ds * (G - 2 * a * sum(dG[:, j] * dz[:, j] for j in range(dz.shape[1])))
            dG = ds[:, None] * dG
    return G, dG, gW, gb


def _forward(ops, t, v, p, E, layers):
    """``(g, div)`` and what :func:`_backward` needs (see the module's formulas)."""
    n = v.shape[-1]
    k = n - 1
    r2 = ops.rowdot(v, v)
    u = (v[:, None] @ E)[:, 0]
    C, S, q, dC, dS, dq = _radial(ops, r2)
    y = C * p + S * u
    ys = y[:, 1:]
    w = 1 / (y[:, :1] + 1)
    Ey = ops.cat([ys[:, :, None], (w * ys)[:, :, None] * ys[:, None] + ops.xp.eye(n, dtype=y.dtype)], -1)
    # the network at [y, t] and its derivatives along the frame (time is not perturbed): t folded into
    # the first layer's bias
    W0, b0 = layers[0]
    nd = W0.dtype
    first = (W0[:, : n + 1], b0 + t * W0[:, n + 1])
    h, dh, net = _mlp_forward(ops, [first, *layers[1:]], ops.cast(y, nd), ops.cast(Ey, nd))
    hs, dhs = ops.cast(h[:, 1:], y.dtype), ops.cast(dh[:, :, 1:], y.dtype)
    f = (hs[:, None] @ Ey)[:, 0]
    ysh = ops.rowdot(ys, hs)
    rho = C * u + (r2 * S) * p
    Jf = f * ops.constant(("signs", n), lambda: [-1.0] + [1.0] * n, f)
    wr = ops.rowdot(Jf, rho)
    cf = (E @ Jf[:, :, None])[:, :, 0]
    g = cf / S + (q * wr) * v
    vg = ops.rowdot(v, g)
    trace = sum(dhs[:, i, i : i + 1] for i in range(n))
    div = trace + k * (w * ysh + q * vg)
    return g, div[:, 0], (net, r2, u, C, S, q, dC, dS, dq, y, w, Ey, hs, ysh, rho, Jf, wr, cf, vg)


def _backward(ops, inputs, g, saved, Gg, Gd, want):
    """The gradients of ``inputs = (t, v, p, E, layers)`` from those of the outputs ``(g, div)`` (``saved``:
    the rest of what :func:`_forward` kept; ``want``: whether to compute those of ``t, p, E``; ``None`` for
    the others)."""
    t, v, p, E, layers = inputs
    net, r2, u, C, S, q, dC, dS, dq, y, w, Ey, hs, ysh, rho, Jf, wr, cf, vg = saved
    n = v.shape[-1]
    k = n - 1
    ys = y[:, 1:]
    kGd = k * Gd[:, None]
    # div = tr(dh') + k w <y', h'> + k q <v, g>;  g = cf / S + q wr v
    Gg = Gg + (kGd * q) * v
    Ggv = ops.rowdot(Gg, v)
    Gq = kGd * vg + wr * Ggv
    Gv = (kGd * q) * g + (q * wr) * Gg
    Gwr = q * Ggv
    Gcf = Gg / S
    # cf = E J f, wr = <J f, rho>, rho = C u + r2 S p
    Gf = ((Gcf[:, None] @ E)[:, 0] + Gwr * rho) * ops.constant(("signs", n), lambda: [-1.0] + [1.0] * n, Jf)
    Grho = Gwr * Jf
    Grp = ops.rowdot(Grho, p)
    GS = r2 * Grp - ops.rowdot(Gcf, cf) / S
    GC = ops.rowdot(Grho, u)
    Gr2 = S * Grp
    # f = h' Ey; the network's h' and dh' (the trace takes dh'_ii)
    kGdw = kGd * w
    Ghs = (Ey @ Gf[:, :, None])[:, :, 0] + kGdw * ys
    GEy = hs[:, :, None] * Gf[:, None]
    W0, b0 = layers[0]
    nd = W0.dtype
    Gh = ops.cat([0 * Ghs[:, :1], Ghs], -1)
    Gdh = ops.cat([0 * GEy[:, :, :1], Gd[:, None, None] * ops.xp.eye(n, dtype=y.dtype)], -1)
    Ga, Gda, gW, gb = _mlp_backward(
        ops, [(W0[:, : n + 1], b0), *layers[1:]], net, ops.cast(Gh, nd), ops.cast(Gdh, nd)
    )
    gW[0] = ops.cat([gW[0], (t * gb[0])[:, None]], -1)  # the time column: z += t W[:, n+1]
    GEy = GEy + ops.cast(Gda, y.dtype)
    # the term k w <y', h'> and the frame Ey = [y', I + w y' y'^T], w = 1 / (1 + y_0)
    GB = GEy[:, :, 1:]
    GBs = ((GB + GB.swapaxes(-1, -2)) @ ys[:, :, None])[:, :, 0]
    Gys = GEy[:, :, 0] + w * GBs + kGdw * hs
    Gy0 = -(w * w) * (ops.rowdot(ys, GBs) / 2 + kGd * ysh)
    Gy = ops.cast(Ga, y.dtype) + ops.cat([Gy0, Gys], -1)
    # y = C p + S u
    GC = GC + ops.rowdot(Gy, p)
    GS = GS + ops.rowdot(Gy, u)
    Gu = C * Grho + S * Gy
    # u = v E, r2 = |v|^2, (C, S, q) of r2
    Gr2 = Gr2 + GC * dC + GS * dS + Gq * dq
    Gv = Gv + (E @ Gu[:, :, None])[:, :, 0] + 2 * Gr2 * v
    Gp = (r2 * S) * Grho + C * Gy if want[1] else None
    GE = (Gcf[:, :, None] * Jf[:, None] + v[:, :, None] * Gu[:, None]) if want[2] else None
    # t enters the first layer as z += t W[:, n+1]: the gradient follows it where the solver's times
    # depend on the state (an adaptive solver's steps), as the generic path's does
    Gt = (gb[0] * W0[:, n + 1]).sum() if want[0] else None
    return Gt, Gv, Gp, GE, [x for pair in zip(gW, gb, strict=True) for x in pair]


class HyperboloidExact(torch.autograd.Function):
    """``(g, div)`` of :func:`flows.divergence.chart_divergence` on the hyperboloid (exact divergence), as
    one autograd node; ``apply(t, v, p, E, W_1, b_1, ..., W_L, b_L)``. On the CPU it runs on numpy views
    of the tensors (no copies), elsewhere on the tensors."""

    @staticmethod
    def forward(ctx, t, v, p, E, *params):
        cpu = v.device.type == "cpu"
        W0 = params[0]
        ctx.t = float(t) if cpu else torch.as_tensor(t, dtype=W0.dtype, device=W0.device)
        ctx.t_dtype = t.dtype if torch.is_tensor(t) else W0.dtype
        g, div, ctx.kernel = _forward(*HyperboloidExact._inputs(ctx, v, p, E, params))
        if cpu:
            g, div = torch.from_numpy(g), torch.from_numpy(div)
        # the tensors the backward pass reads, saved so that autograd refuses them if changed in place
        ctx.save_for_backward(v, p, E, g, *params)
        return g, div

    @staticmethod
    def _inputs(ctx, v, p, E, params):
        """The kernel's operations and inputs: numpy views of the tensors on the CPU, the tensors elsewhere."""
        if v.device.type == "cpu":
            ops, arr = _Numpy, (lambda x: x.detach().numpy())
        else:
            ops, arr = _Torch, (lambda x: x.detach())
        layers = [(arr(params[i]), arr(params[i + 1])) for i in range(0, len(params), 2)]
        return ops, ctx.t, arr(v), arr(p), arr(E), layers

    @staticmethod
    @once_differentiable
    def backward(ctx, Gg, Gd):
        v, p, E, g, *params = ctx.saved_tensors
        ops, *inputs = HyperboloidExact._inputs(ctx, v, p, E, params)
        cpu = ops is _Numpy
        arr = (lambda x: x.contiguous().numpy()) if cpu else (lambda x: x)
        want = (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:4])
        Gt, Gv, Gp, GE, grads = _backward(ops, inputs, arr(g), ctx.kernel, arr(Gg), arr(Gd), want)
        if cpu:
            wrap = lambda x: None if x is None else torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
            Gv, Gp, GE, grads = wrap(Gv), wrap(Gp), wrap(GE), [wrap(x) for x in grads]
        Gt = None if Gt is None else torch.as_tensor(Gt, dtype=ctx.t_dtype)
        return Gt, Gv, Gp, GE, *grads


def hyperboloid_exact(field, t, p, v, E):
    """``(g, div)`` of the chart field through :class:`HyperboloidExact` (same signature as the generic
    :func:`flows.divergence.chart_divergence` minus the manifold and its options)."""
    params = [x for layer in field.layers for x in (layer.weight, layer.bias)]
    return HyperboloidExact.apply(t, v, p, E, *params)
