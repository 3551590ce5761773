"""One evaluation of the ODE function as one autograd node: the exact divergence on the hyperboloid and the
sphere, with its reverse pass written out.

Why. A default training step is 16 (``H^2``: rk4 step 1/4, one chart) or 12 (``S^2``: step 1/3, three
charts) evaluations of :func:`flows.divergence.chart_divergence`, each about 165 small tensor operations
forward and 280 autograd nodes backward on a batch of 200 points: the step is dispatch-bound, not
arithmetic-bound (the bare 32x3 network forward and backward is 0.2 ms of an evaluation's 1.25 ms on one
CPU thread). Here the same numbers are computed by :class:`ExactDivergence`, a ``torch.autograd.Function``
whose forward runs without recording a graph and whose backward is the chain rule of the formulas below
written by hand: one node per evaluation and about a third of the operations. On the CPU the kernel is
``flows/fused_kernel.cpp`` (:mod:`flows.native`: built on first use, one call per pass, 0.35 ms an evaluation
forward and backward against 0.21 ms for the bare network) for the shapes where it is faster (``n <= 2``,
hidden widths <= 32); elsewhere on the CPU the operations below run on numpy views of the tensors (no copies;
numpy's per-call cost on arrays this small is a third of torch's, and its ``tanh`` a tenth), the matrix
products through torch; on other devices on the tensors themselves (:class:`_Numpy`, :class:`_Torch`: one
kernel, two array libraries). The formulas are those of
:mod:`flows.divergence`, :class:`manifolds.Hyperboloid` and :class:`manifolds.Sphere`
(``chart_coefficients``, ``tangent_basis``, ``field_divergence``, ``chart_velocity``,
``grad_logdetexp``); tests/test_fused.py checks values and gradients against them and against
``torch.autograd.gradcheck``.

Forward, at chart coordinates ``v`` ``(B, n)`` of the chart at ``p`` ``(B, n+1)`` with basis ``E``
``(B, n, n+1)`` (``k = n - 1``; on the hyperboloid ``<.,.>`` is Minkowski's, ``J = diag(-1, 1, ..., 1)``;
``y'`` is ``y`` without its first coordinate)::

    r2 = |v|^2,  u = v E,  C = cos r, S = sin r / r, q = (1 - r cot r) / r^2   (cosh, sinh, coth on H^n)
    y = C p + S u                                                                (the chart point)
    H^n: w = 1 / (1 + y_0),     Ey = [y', I + w y' y'^T]                        (tangent frame at y)
    S^n: w = 1 / (1 + |y_0|),   Ey = [s y', I - w y' y'^T],  s = -sign(y_0) (1 at 0)
    h, dh = the network at [y, t] and its JVPs along Ey                         (tanh MLP)
    H^n: f = h' Ey,         div_f = tr(dh') + k w <y', h'>                      (field_divergence)
    S^n: f = h - <y, h> y,  div_f = sum_i <e_i, dh_i> - n <y, h>
    rho = C u -+ r2 S p  (- on S^n),  g = E (J) f / S + q <f, rho> v            (chart_velocity)
    div = div_f + k q <v, g>                                                     (minus <grad log J, g>)

The network's JVPs are propagated forward beside its values (``dz = da W^T``, ``da' = tanh'(z) dz``), the
time folded into the first layer's bias.

Scope: the exact divergence (no Hutchinson noise, no regularizers) of a :class:`flows.VectorField` with
``tanh`` units, no Fourier features and no speed limiter, on the hyperboloid or the sphere; everything
else runs through :func:`flows.divergence.chart_divergence` unchanged (:func:`supports`). Gradients flow
to ``t``, ``v``, ``p``, ``E`` and the network's parameters (``t``: an adaptive solver's times depend on the
state); not twice (``once_differentiable``: nothing here differentiates a gradient).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from manifolds.hyperboloid import Hyperboloid
from manifolds.special import _RADIAL_ROWS, _threshold, cached_constant
from manifolds.sphere import Sphere

from . import native
from .vector_field import VectorField

#: Whether the CPU runs the C++ kernel (flows/native.py) where it is built; False: the numpy kernel.
NATIVE = True

# Taylor coefficients in r2 = r^2, rows r2^0 .. r2^3, per curvature: (C, S, q) as in
# manifolds.special.chart_radial_sq, then their derivatives (dC/dr2, dS/dr2, dq/dr2), which need the r2^4 terms
# of the functions (q = (1 - r coth r) / r^2 = -1/3 + r2/45 - 2 r2^2/945 + r2^3/4725 - 2 r2^4/93555 ... on
# H^n; on S^n the signs of every other term flip)
_DERIVATIVE_ROWS = {
    -1: [[1 / 2, 1 / 6, 1 / 45], [1 / 12, 1 / 60, -4 / 945], [1 / 240, 1 / 1680, 3 / 4725],
         [1 / 10080, 1 / 90720, -8 / 93555]],
    1: [[-1 / 2, -1 / 6, 1 / 45], [1 / 12, 1 / 60, 4 / 945], [-1 / 240, -1 / 1680, 3 / 4725],
        [1 / 10080, 1 / 90720, 8 / 93555]],
}  # fmt: skip
_SERIES = {
    k: [f + d for f, d in zip(_RADIAL_ROWS[k], rows, strict=True)] for k, rows in _DERIVATIVE_ROWS.items()
}
_CONSTANTS: dict = {}


def supports(manifold, field, divergence: str) -> bool:
    """Whether :class:`ExactDivergence` computes this model's exact divergence (see the module's scope)."""
    return (
        divergence == "exact"
        and type(manifold) in (Hyperboloid, Sphere)
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


def _radial(ops, r2, curvature):
    """``(C, S, q)`` of :func:`manifolds.special.chart_radial_sq` and their derivatives in ``r2``, each
    ``(B, 1)``; the Taylor branch below the same threshold (computed only when a point needs it)."""
    xp = ops.xp
    small = r2 < _threshold(r2)
    some = bool(small.any())
    s = xp.where(small, 1.0, r2) if some else r2
    r = xp.sqrt(s)
    if curvature > 0:
        C, S = xp.cos(r), xp.sin(r) / r
    else:
        C, S = xp.cosh(r), xp.sinh(r) / r
    q = (1 - C / S) / s  # (1 - r cot r) / r^2
    dS = (C - S) / (2 * s)
    # dC/dr2 = -+ S / 2 and, with R = C / S = r cot r, dR/dr2 = -+ 1/2 - C dS / S^2, dq/dr2 = (-dR - q) / r2
    half = -0.5 if curvature > 0 else 0.5
    dq = (C * dS / (S * S) - half - q) / s
    out = [C, S, q, half * S, dS, dq]
    if some:
        c = ops.constant(("series", curvature), lambda: _SERIES[curvature], r2)
        series = c[0] + r2 * (c[1] + r2 * (c[2] + r2 * c[3]))
        out = [xp.where(small, series[:, i : i + 1], x) for i, x in enumerate(out)]
    return out


def _eye(ops, n, like):
    """The ``n x n`` identity in ``like``'s dtype (and device), cached."""
    return ops.constant(("eye", n), lambda: np.eye(n).tolist(), like)


def _linear(ops, a, W):
    """``a W^T`` for ``a`` of shape ``(..., n_in)`` as one 2-d product."""
    return ops.mm(a.reshape(-1, a.shape[-1]), W.T).reshape(*a.shape[:-1], W.shape[0])


def _network(ops, t, layers, y, Ey):
    """The tanh MLP at ``[y, t]`` and its derivatives along the rows of ``Ey`` (time is not perturbed, and is
    folded into the first layer's bias), in the network's dtype; returned in ``y``'s: ``(h, dh, saved)``."""
    W0, b0 = layers[0]
    nd, d = W0.dtype, y.shape[-1]
    a, da = ops.cast(y, nd), ops.cast(Ey, nd)
    saved = []
    for i, (W, b) in enumerate([(W0[:, :d], b0 + t * W0[:, d]), *layers[1:]]):
        z = ops.mm(a, W.T) + b
        dz = _linear(ops, da, W)
        saved.append((a, da, W))
        if i == len(layers) - 1:
            return ops.cast(z, y.dtype), ops.cast(dz, y.dtype), saved
        a_next = ops.xp.tanh(z)
        ds = 1 - a_next * a_next  # tanh'(z)
        saved[-1] += (dz, ds)
        a, da = a_next, ds[:, None] * dz
    raise AssertionError  # pragma: no cover


def _network_backward(ops, t, saved, Gh, Gdh, want_t, like):
    """Gradients of :func:`_network`: from those of ``(h, dh)`` to those of ``(y, Ey)`` (in ``like``'s dtype),
    of every layer's weight and bias (a flat list) and of ``t`` (``None`` unless ``want_t``, the first layer's
    whole weight, is given). (Stacking the value and derivative rows into one product per layer was slower
    in training: 14.0 against 13.6 ms per S^2 step, 16.5 against 15.9 on H^2.)"""
    nd = saved[0][0].dtype
    G, dG = ops.cast(Gh, nd), ops.cast(Gdh, nd)
    gW, gb = [None] * len(saved), [None] * len(saved)
    for i in range(len(saved) - 1, -1, -1):
        a, da, W = saved[i][:3]
        m = da.shape[-1]
        gW[i] = ops.mm(G.T, a) + ops.mm(dG.reshape(-1, dG.shape[-1]).T, da.reshape(-1, m))
        gb[i] = G.sum(0)
        G, dG = ops.mm(G, W), _linear(ops, dG, W.T)  # the gradients of layer i's inputs
        if i:
            # those inputs are a = tanh(z), da = ds dz with ds = 1 - a^2 (layer i - 1's activation)
            dz, ds = saved[i - 1][3:]
            G = ds * (G - 2 * a * sum(dG[:, j] * dz[:, j] for j in range(dz.shape[1])))
            dG = ds[:, None] * dG
    W0 = saved[0][2]  # the first layer without its time column (z += t W[:, d])
    # t carries a gradient where the solver's times depend on the state (an adaptive solver's steps)
    Gt = None if want_t is None else (gb[0] * want_t[:, W0.shape[1]]).sum()
    gW[0] = ops.cat([gW[0], (t * gb[0])[:, None]], -1)
    return (
        ops.cast(G, like.dtype),
        ops.cast(dG, like.dtype),
        [x for pair in zip(gW, gb, strict=True) for x in pair],
        Gt,
    )


def _chart(ops, v, p, E, curvature):
    """The chart point ``y = C p + S u`` and what its backward pass needs."""
    r2 = ops.rowdot(v, v)
    u = (v[:, None] @ E)[:, 0]
    C, S, q, dC, dS, dq = _radial(ops, r2, curvature)
    return C * p + S * u, (r2, u, C, S, q, dC, dS, dq)


def _chart_backward(ops, v, p, E, chart, Gy, GC, GS, Gq, Gr2, Gu, want_p, want_E):
    """From the gradients of ``y`` and of the chart's coefficients to those of ``v``, ``p`` and ``E``
    (``Gu``: the part of ``u``'s gradient from elsewhere; ``None`` for ``p`` and ``E`` unless wanted)."""
    r2, u, C, S, q, dC, dS, dq = chart
    GC = GC + ops.rowdot(Gy, p)
    GS = GS + ops.rowdot(Gy, u)
    Gu = Gu + S * Gy
    Gr2 = Gr2 + GC * dC + GS * dS + Gq * dq
    Gv = (E @ Gu[:, :, None])[:, :, 0] + 2 * Gr2 * v
    return Gv, (C * Gy if want_p else None), (v[:, :, None] * Gu[:, None] if want_E else None)


def _hyperboloid(ops, t, v, p, E, layers):
    """``(g, div)`` on the hyperboloid and what :func:`_hyperboloid_backward` needs."""
    n = v.shape[-1]
    k = n - 1
    y, chart = _chart(ops, v, p, E, -1)
    r2, u, C, S, q = chart[:5]
    ys = y[:, 1:]
    w = 1 / (y[:, :1] + 1)
    Ey = ops.cat([ys[:, :, None], (w * ys)[:, :, None] * ys[:, None] + _eye(ops, n, y)], -1)
    h, dh, net = _network(ops, t, layers, y, Ey)
    hs, dhs = h[:, 1:], dh[:, :, 1:]
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
    return g, div[:, 0], (net, chart, y, w, Ey, hs, ysh, rho, Jf, wr, cf, vg)


def _hyperboloid_backward(ops, t, v, p, E, g, saved, Gg, Gd, want):
    """The gradients of ``(t, v, p, E)`` and of the weights from those of ``(g, div)`` (``want``: whether to
    compute those of ``t, p, E``; ``None`` for the others)."""
    net, chart, y, w, Ey, hs, ysh, rho, Jf, wr, cf, vg = saved
    r2, u, C, S, q = chart[:5]
    n = v.shape[-1]
    k = n - 1
    ys = y[:, 1:]
    kGd = k * Gd[:, None]
    # div = tr(dh') + k w <y', h'> + k q <v, g>;  g = cf / S + q wr v
    Gg = Gg + (kGd * q) * v
    Ggv = ops.rowdot(Gg, v)
    Gq = kGd * vg + wr * Ggv
    Gwr = q * Ggv
    Gcf = Gg / S
    # cf = E J f, wr = <J f, rho>, rho = C u + r2 S p
    Gf = ((Gcf[:, None] @ E)[:, 0] + Gwr * rho) * ops.constant(("signs", n), lambda: [-1.0] + [1.0] * n, Jf)
    Grho = Gwr * Jf
    Grp = ops.rowdot(Grho, p)
    GS = r2 * Grp - ops.rowdot(Gcf, cf) / S
    GC = ops.rowdot(Grho, u)
    # f = h' Ey; the network's h' and dh' (the trace takes dh'_ii)
    kGdw = kGd * w
    Ghs = (Ey @ Gf[:, :, None])[:, :, 0] + kGdw * ys
    GEy = hs[:, :, None] * Gf[:, None]
    Gh = ops.cat([0 * Ghs[:, :1], Ghs], -1)
    Gdh = ops.cat([0 * GEy[:, :, :1], Gd[:, None, None] * _eye(ops, n, y)], -1)
    Gy, GEy_net, grads, Gt = _network_backward(ops, t, net, Gh, Gdh, want[0], y)
    GEy = GEy + GEy_net
    # the term k w <y', h'> and the frame Ey = [y', I + w y' y'^T], w = 1 / (1 + y_0)
    GB = GEy[:, :, 1:]
    GBs = ((GB + GB.swapaxes(-1, -2)) @ ys[:, :, None])[:, :, 0]
    Gys = GEy[:, :, 0] + w * GBs + kGdw * hs
    Gy0 = -(w * w) * (ops.rowdot(ys, GBs) / 2 + kGd * ysh)
    Gy = Gy + ops.cat([Gy0, Gys], -1)
    Gv, Gp, GE = _chart_backward(ops, v, p, E, chart, Gy, GC, GS, Gq, S * Grp, C * Grho, want[1], want[2])
    Gv = Gv + (kGd * q) * g + (q * wr) * Gg
    if want[1]:
        Gp = Gp + (r2 * S) * Grho
    if want[2]:
        GE = GE + Gcf[:, :, None] * Jf[:, None]
    return Gt, Gv, Gp, GE, grads


def _sphere(ops, t, v, p, E, layers):
    """``(g, div)`` on the sphere and what :func:`_sphere_backward` needs."""
    n = v.shape[-1]
    k = n - 1
    y, chart = _chart(ops, v, p, E, 1)
    r2, u, C, S, q = chart[:5]
    y0, ys = y[:, :1], y[:, 1:]
    sgn = 1 - 2 * ops.cast(y0 > 0, y.dtype)
    w = 1 / (1 + abs(y0))
    Ey = ops.cat([(sgn * ys)[:, :, None], _eye(ops, n, y) - (w * ys)[:, :, None] * ys[:, None]], -1)
    h, dh, net = _network(ops, t, layers, y, Ey)
    yh = ops.rowdot(y, h)
    f = h - yh * y
    div_f = (Ey * dh).sum((-2, -1))[:, None] - n * yh
    rho = C * u - (r2 * S) * p
    wr = ops.rowdot(f, rho)
    cf = (E @ f[:, :, None])[:, :, 0]
    g = cf / S + (q * wr) * v
    vg = ops.rowdot(v, g)
    div = div_f + k * q * vg
    return g, div[:, 0], (net, chart, y, sgn, w, Ey, h, dh, yh, f, rho, wr, cf, vg)


def _sphere_backward(ops, t, v, p, E, g, saved, Gg, Gd, want):
    """The sphere's counterpart of :func:`_hyperboloid_backward`."""
    net, chart, y, sgn, w, Ey, h, dh, yh, f, rho, wr, cf, vg = saved
    r2, u, C, S, q = chart[:5]
    n = v.shape[-1]
    k = n - 1
    ys = y[:, 1:]
    Gd = Gd[:, None]
    kGd = k * Gd
    # div = div_f + k q <v, g>;  g = cf / S + q wr v
    Gg = Gg + (kGd * q) * v
    Ggv = ops.rowdot(Gg, v)
    Gq = kGd * vg + wr * Ggv
    Gwr = q * Ggv
    Gcf = Gg / S
    # cf = E f, wr = <f, rho>, rho = C u - r2 S p
    Gf = (Gcf[:, None] @ E)[:, 0] + Gwr * rho
    Grho = Gwr * f
    Grp = ops.rowdot(Grho, p)
    GS = -r2 * Grp - ops.rowdot(Gcf, cf) / S
    GC = ops.rowdot(Grho, u)
    # f = h - <y, h> y and div_f = sum_i <e_i, dh_i> - n <y, h>
    Gyh = -ops.rowdot(Gf, y) - n * Gd
    Gh = Gf + Gyh * y
    Gdh = Gd[:, :, None] * Ey
    GEy = Gd[:, :, None] * dh
    Gy, GEy_net, grads, Gt = _network_backward(ops, t, net, Gh, Gdh, want[0], y)
    Gy = Gy - yh * Gf + Gyh * h
    GEy = GEy + GEy_net
    # the frame Ey = [s y', I - w y' y'^T], w = 1 / (1 + |y_0|) (s is piecewise constant)
    GB = GEy[:, :, 1:]
    GBs = ((GB + GB.swapaxes(-1, -2)) @ ys[:, :, None])[:, :, 0]
    Gys = sgn * GEy[:, :, 0] - w * GBs
    Gy0 = (w * w) * ops.xp.sign(y[:, :1]) * ops.rowdot(ys, GBs) / 2
    Gy = Gy + ops.cat([Gy0, Gys], -1)
    Gv, Gp, GE = _chart_backward(ops, v, p, E, chart, Gy, GC, GS, Gq, -S * Grp, C * Grho, want[1], want[2])
    Gv = Gv + (kGd * q) * g + (q * wr) * Gg
    if want[1]:
        Gp = Gp - (r2 * S) * Grho
    if want[2]:
        GE = GE + Gcf[:, :, None] * f[:, None]
    return Gt, Gv, Gp, GE, grads


_KERNELS = {"Hyperboloid": (_hyperboloid, _hyperboloid_backward), "Sphere": (_sphere, _sphere_backward)}


class ExactDivergence(torch.autograd.Function):
    """``(g, div)`` of :func:`flows.divergence.chart_divergence` (exact divergence) as one autograd node;
    ``apply(kind, record, t, v, p, E, W_1, b_1, ..., W_L, b_L)`` with ``kind`` the manifold's name and ``record``
    whether grad mode is on (the C++ kernel then keeps its workspace for the reverse pass; inside ``forward``
    grad mode is always off). On the CPU it runs the C++ kernel or on numpy views of the tensors (no copies),
    elsewhere on the tensors."""

    @staticmethod
    def forward(ctx, kind, record, t, v, p, E, *params):
        ctx.ops = ops = _ops_for(v.device)
        W0 = params[0]
        ctx.kind = kind
        ctx.t = float(t) if ops is _Numpy else torch.as_tensor(t, dtype=W0.dtype, device=W0.device)
        ctx.t_dtype = t.dtype if torch.is_tensor(t) else W0.dtype
        ctx.native = ops is _Numpy and NATIVE and native.supports(v, p, E, params)
        # the same kernel in C++ (flows/native.py): the forward pass keeps each point's workspace for the reverse
        if ctx.native:
            v, p, E = v.contiguous(), p.contiguous(), E.contiguous()
            keep = record and any(ctx.needs_input_grad)  # the workspace the reverse pass reads
            ctx.series = _native_series(kind, v)
            g, div, ctx.kept = native.evaluate(kind, ctx.t, v, p, E, params, *ctx.series, keep=keep)
            ctx.save_for_backward(v, p, E, *params)
            return g, div
        g, div, ctx.kernel = _KERNELS[kind][0](ops, ctx.t, *ExactDivergence._arrays(ops, v, p, E, params))
        if ops is _Numpy:
            g, div = torch.from_numpy(g), torch.from_numpy(div)
        # the tensors the backward pass reads, saved so that autograd refuses them if changed in place
        ctx.save_for_backward(v, p, E, g, *params)
        return g, div

    @staticmethod
    def _arrays(ops, v, p, E, params):
        """``v, p, E`` and the layers ``[(W, b), ...]`` as the kernel takes them: numpy views for
        :class:`_Numpy`, the detached tensors for :class:`_Torch`."""
        arr = (lambda x: x.detach().numpy()) if ops is _Numpy else (lambda x: x.detach())
        return (
            arr(v),
            arr(p),
            arr(E),
            [(arr(params[i]), arr(params[i + 1])) for i in range(0, len(params), 2)],
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, Gg, Gd):
        if ctx.native:
            v, p, E, *params = ctx.saved_tensors
            grads = (Gg.to(v.dtype).contiguous(), Gd.to(v.dtype).contiguous(), *ctx.needs_input_grad[4:6])
            Gt, Gv, Gp, GE, gparams = native.evaluate(
                ctx.kind, ctx.t, v, p, E, params, *ctx.series, grads=grads, kept=ctx.kept
            )
            Gt = torch.tensor(Gt, dtype=ctx.t_dtype) if ctx.needs_input_grad[2] else None
            return None, None, Gt, Gv, Gp, GE, *gparams
        v, p, E, g, *params = ctx.saved_tensors
        ops = ctx.ops
        v, p, E, layers = ExactDivergence._arrays(ops, v, p, E, params)
        arr = (lambda x: x.contiguous().numpy()) if ops is _Numpy else (lambda x: x)
        want = (layers[0][0] if ctx.needs_input_grad[2] else None, *ctx.needs_input_grad[4:6])
        Gt, Gv, Gp, GE, grads = _KERNELS[ctx.kind][1](
            ops, ctx.t, v, p, E, arr(g), ctx.kernel, arr(Gg), arr(Gd), want
        )
        if ops is _Numpy:
            wrap = lambda x: None if x is None else torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
            Gv, Gp, GE, grads = wrap(Gv), wrap(Gp), wrap(GE), [wrap(x) for x in grads]
        Gt = None if Gt is None else torch.as_tensor(Gt, dtype=ctx.t_dtype)
        return None, None, Gt, Gv, Gp, GE, *grads


def runs_native(manifold, field, device, dtype) -> bool:
    """Whether :class:`ExactDivergence` runs the C++ kernel for this field on ``device`` with the flow's state
    in ``dtype`` (the manifold's geometry dtype for it, the field's own)."""
    if not NATIVE or torch.device(device).type != "cpu":
        return False
    if not native.shape_ok(manifold.dim, [layer.out_features for layer in field.layers[:-1]]):
        return False
    state = manifold.compute_dtype(torch.empty(0, dtype=dtype))
    return native.pairing(state, next(field.parameters()).dtype) and native.library() is not None


def _native_series(kind, v):
    """The Taylor rows and their switch on ``r2`` for the C++ kernel (those of :func:`_radial`)."""
    curvature = 1 if kind == "Sphere" else -1
    return native._series(curvature, _SERIES[curvature]), _threshold(v)


def _ops_for(device):
    """The kernel's array library for tensors on ``device``: numpy on the CPU, torch elsewhere."""
    return _Numpy if device.type == "cpu" else _Torch


def exact_divergence(manifold, field, t, p, v, E):
    """``(g, div)`` of the chart field through :class:`ExactDivergence` (the arguments of the generic
    :func:`flows.divergence.chart_divergence` without its options)."""
    params = [x for layer in field.layers for x in (layer.weight, layer.bias)]
    return ExactDivergence.apply(manifold.name, torch.is_grad_enabled(), t, v, p, E, *params)
