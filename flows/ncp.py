"""The sphere's baseline: the recursive flow on ``S^2`` of Rezende et al. (ICML 2020) with mixtures of
non-compact projections (NCP) for its circle layers (docs/math.md, "Baselines")."""

from __future__ import annotations

import math

import torch
from torch import nn

from manifolds.distributions import UniformSphere

from .discrete import DiscreteFlow, conditioner, soft_clamp

TWO_PI = 2 * math.pi
#: Bisection steps of the sampling direction (2 pi / 2^60 is below float64 resolution).
BISECTION_STEPS = 60


def _log_sech2(s):
    """``log sech^2(s)``, stable for any ``s``."""
    return 2 * (math.log(2) - s.abs() - torch.log1p(torch.exp(-2 * s.abs())))


def _ncp(phi, la, beta, logits):
    """Mixture of non-compact projections of the circle, its lift and log-derivative.

    One component: ``f(phi) = beta + 2 atan(alpha tan((phi - beta) / 2))``, written as
    ``phi + psi(phi)`` with ``psi = 2 atan2(alpha sin(d/2), cos(d/2)) - d`` (``d = phi - beta``
    wrapped into ``[-pi, pi)``), a continuous ``2 pi``-periodic function; ``f' = 2 alpha / ((1 +
    alpha^2) + (1 - alpha^2) cos(phi - beta)) > 0``. The convex combination with weights
    ``softmax(logits)`` is again an increasing lift of a circle diffeomorphism.
    """
    alpha, rho = torch.exp(la), torch.softmax(logits, -1)
    p = phi[..., None]
    d = torch.remainder(p - beta + math.pi, TWO_PI) - math.pi
    psi = 2 * torch.atan2(alpha * torch.sin(d / 2), torch.cos(d / 2)) - d
    lift = phi + (rho * psi).sum(-1)
    log_fp = math.log(2) + la - torch.log((1 + alpha * alpha) + (1 - alpha * alpha) * torch.cos(p - beta))
    return lift, torch.logsumexp(torch.log_softmax(logits, -1) + log_fp, -1)


def _interval(w, la, b, logits):
    """Mixture of ``g(z) = tanh(a atanh(z) + b)`` on ``[-1, 1]`` (the interval's non-compact projection),
    in the coordinate ``w = atanh z``, and its log-derivative ``log dg/dz``.

    With ``m = sum_i rho_i tanh(s_i)``, ``s_i = a_i w + b_i``: ``w_out = atanh m = (log(1 + m) - log(1 - m)) / 2``
    with ``1 +- m = 2 sum_i rho_i sigmoid(+-2 s_i)`` (log-sum-exp), and ``log dg/dz = log sum_i rho_i a_i
    sech^2(s_i) - log sech^2(w)``. Everything stays finite however close to a pole (``|w|`` large) a
    point is; in ``z`` itself, ``1 - z`` below 1e-16 is lost to rounding, and layers that compound
    towards a pole then disagreed with their inverse by up to 23 nats.
    """
    a = torch.exp(la)
    s = a * w[..., None] + b
    lr = torch.log_softmax(logits, -1)
    up = torch.logsumexp(lr + nn.functional.logsigmoid(2 * s), -1)
    down = torch.logsumexp(lr + nn.functional.logsigmoid(-2 * s), -1)
    log_gp = torch.logsumexp(lr + la + _log_sech2(s), -1) - _log_sech2(w)
    return (up - down) / 2, log_gp


def _bisect(fn, target, lo, hi):
    """The ``x`` in ``[lo, hi]`` with ``fn(x) = target`` for an increasing ``fn`` (elementwise; ``lo``,
    ``hi`` numbers or tensors like ``target``)."""
    lo, hi = torch.zeros_like(target) + lo, torch.zeros_like(target) + hi
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        below = fn(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


class NCP(DiscreteFlow):
    """The recursive flow on ``S^2`` of Rezende et al. (2020) with NCP circle flows; base: uniform.

    A point is written in cylinder coordinates, ``x = (sqrt(1 - z^2) cos phi, sqrt(1 - z^2) sin phi,
    z)``, whose area element is ``dz dphi`` (Archimedes), so the density of the sphere equals the
    density of ``(z, phi)`` on ``[-1, 1] x [0, 2 pi)``. The height is carried as ``w = atanh z``
    (``= asinh(x_2 / |x_(0:2)|)`` from a point, exact near the poles), see :func:`_interval`. Layers alternate: ``phi`` through a mixture of
    ``components`` NCPs whose parameters depend on ``z``, then ``z`` through a mixture of interval
    maps whose parameters depend on ``(cos phi, sin phi)``; ``log p(x) = -log(4 pi) + sum`` of the
    layers' log-derivatives. The map is a diffeomorphism away from the poles ``z = +-1`` only:
    there the density may vanish or diverge (the paper's objection to this construction).
    Data to base is closed-form; sampling inverts each one-dimensional map by bisection.
    """

    kind = "ncp"

    def __init__(self, manifold="Sphere", dim=2, hidden=32, n_hidden=3, activation="tanh", blocks=8,
                 components=8):  # fmt: skip
        if int(components) != components or components < 1:
            raise ValueError(f"components must be a positive integer, got {components!r}")
        super().__init__(manifold, dim, hidden, n_hidden, activation, blocks, components=int(components))
        M = self.manifold
        if M.name != "Sphere":
            raise ValueError(f"--model ncp is a flow on the sphere, not the {M.name}; on the hyperboloid "
                             "the baselines are --model whc and --model prnvp")  # fmt: skip
        if M.dim != 2:
            raise ValueError(
                f"--model ncp is written for the 2-sphere (cylinder coordinates), not --dim {M.dim}"
            )
        self.k = int(components)
        # even layers: circle (conditioned on z, 1 input); odd: interval (conditioned on cos/sin phi)
        self.nets = nn.ModuleList(
            conditioner(1 if i % 2 == 0 else 2, 3 * self.k, hidden, n_hidden, activation)
            for i in range(blocks)
        )

    def compute_dtype(self, x):
        return torch.float64  # atanh near the poles and the bisection want the digits; the nets stay float32

    def base(self, dtype=None, device=None):
        return UniformSphere(2)

    def _params(self, i, z, phi):
        net = self.nets[i]
        feat = z[..., None] if i % 2 == 0 else torch.stack([torch.cos(phi), torch.sin(phi)], -1)
        h = net(feat.to(net.layers[-1].weight.dtype)).to(z.dtype)
        return soft_clamp(h[..., : self.k]), h[..., self.k : 2 * self.k], h[..., 2 * self.k :]

    @staticmethod
    def _cyl(x):
        """``(w, phi)`` with ``w = atanh z = asinh(z / r)``, ``r = |x_(0:2)|`` (infinite at a pole)."""
        r = torch.hypot(x[..., 0], x[..., 1])
        return torch.asinh(x[..., 2] / r), torch.remainder(torch.atan2(x[..., 1], x[..., 0]), TWO_PI)

    @staticmethod
    def _point(w, phi):
        r = 1 / torch.cosh(w)
        return torch.stack([r * torch.cos(phi), r * torch.sin(phi), torch.tanh(w)], -1)

    def check_input(self, x):
        if (torch.hypot(x[..., 0], x[..., 1]) == 0).any():
            raise ValueError(
                "the NCP flow is not defined at the poles (0, 0, +-1), where its angle is undefined"
            )

    def _to_base(self, x):
        z, phi = self._cyl(x)
        ld = torch.zeros_like(z)
        for i in range(len(self.nets)):
            la, shift, logits = self._params(i, z, phi)
            if i % 2 == 0:
                lift, d = _ncp(phi, la, shift, logits)
                phi = torch.remainder(lift, TWO_PI)
            else:
                z, d = _interval(z, la, shift, logits)
            ld = ld + d
        return self._point(z, phi), ld

    def _to_data(self, x, with_delta: bool = True):
        z, phi = self._cyl(x)
        ld = torch.zeros_like(z)
        for i in reversed(range(len(self.nets))):
            la, shift, logits = self._params(i, z, phi)
            if i % 2 == 0:  # find phi0 with lift(phi0) = phi (mod 2 pi), lift(0) <= target < lift(0) + 2 pi
                start = _ncp(torch.zeros_like(phi), la, shift, logits)[0]
                target = start + torch.remainder(phi - start, TWO_PI)
                phi = _bisect(lambda p: _ncp(p, la, shift, logits)[0], target, 0.0, TWO_PI)
                d = _ncp(phi, la, shift, logits)[1]
            else:  # |g(w)| >= a_min |w| - max|b|: the root lies within (|target| + max|b|) / a_min
                bound = (z.abs() + shift.abs().amax(-1) + 1) / torch.exp(la).amin(-1)
                z = _bisect(lambda v: _interval(v, la, shift, logits)[0], z, -bound, bound)
                d = _interval(z, la, shift, logits)[1]
            ld = ld + d
        return self._point(z, phi), ld
