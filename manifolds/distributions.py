"""Distributions on manifolds: wrapped normal, von Mises-Fisher, uniform on the sphere.

They sit with the geometry because two layers use them: the flow's base distributions
(:meth:`flows.MCNF.base`) and the test densities (:mod:`data.densities`); neither layer imports
the other. Parameters keep the dtype and device they are given (non-tensors become float64).

They are plain classes (not ``torch.distributions.Distribution`` subclasses): the reference code's
``WrappedNormal`` crashed on current PyTorch because it set attributes after
``Distribution.__init__`` validated them. Every ``log_prob`` is in nats with respect to the
Riemannian volume measure.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special as sps

from .sphere import Sphere


def _normal_log_prob(v, scale):
    return (-0.5 * (v / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def _as_float_tensor(x):
    """A floating tensor as given; anything else (lists, integer tensors) becomes float64."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    return torch.as_tensor(x, dtype=torch.float64)


class WrappedNormal:
    """Wrapped normal ``N_W(loc, diag(scale^2))`` on a manifold (docs/math.md, "Base distributions").

    Sampling: ``v ~ N(0, diag(scale^2))`` in ``R^n``, read as the tangent vector ``(0, v)`` at the
    origin, parallel-transported to ``loc`` and pushed through ``expmap(loc, .)``.
    Density: ``log N(v) - log J(u)`` with ``u = logmap(loc, x)`` and ``v`` its transport back to the
    origin. On the sphere the preimages beyond radius pi are ignored, as in the reference.

    Args:
        manifold: a :class:`manifolds.Manifold`.
        loc: mean point, shape ``(n+1,)``.
        scale: standard deviations, a float or shape ``(n,)``.
    """

    def __init__(self, manifold, loc, scale):
        self.manifold = manifold
        self.loc = _as_float_tensor(loc)
        scale = torch.as_tensor(scale, dtype=self.loc.dtype, device=self.loc.device)
        self.scale = scale.expand(manifold.dim).clone()
        if (self.scale <= 0).any():
            raise ValueError("WrappedNormal scale must be positive")

    def to(self, dtype=None, device=None):
        self.loc = self.loc.to(dtype=dtype, device=device)
        self.scale = self.scale.to(dtype=dtype, device=device)
        return self

    def _origin(self):
        """Where the scale axes ``(0, e_i)`` are defined before transport to ``loc``.

        The origin ``o``, except on the sphere for a ``loc`` near the antipode ``-o``, where
        transport from ``o`` divides by ``1 + <o, loc>`` (0 at ``-o``: NaN samples and densities).
        There the axes are transported from ``-o`` (where ``(0, e_i)`` is tangent too). The switch
        at ``1 + <o, loc> < 1/4`` leaves every ``loc`` at least 41 degrees from ``-o`` (all the
        paper's densities) exactly as before; isotropic laws do not depend on the frame at all.
        """
        o = self.manifold.origin(dtype=self.loc.dtype, device=self.loc.device)
        if self.manifold.compact and float(1 + (o * self.loc).sum()) < 0.25:
            return -o
        return o

    def rsample(self, n: int, generator=None):
        """Reparameterized samples, shape ``(n, n+1)``."""
        v = (
            torch.randn(
                n, self.manifold.dim, generator=generator, dtype=self.loc.dtype, device=self.loc.device
            )
            * self.scale
        )
        return self.sample_from_coords(v)

    sample = rsample

    def sample_from_coords(self, v):
        o = self._origin()
        u_o = torch.cat([torch.zeros_like(v[..., :1]), v], -1)
        u = self.manifold.transp(o, self.loc, u_o)
        return self.manifold.expmap(self.loc, u)

    def log_prob(self, x):
        """Log-density ``(...)`` of points ``(..., n+1)``."""
        loc = self.loc.to(x)
        u = self.manifold.logmap(loc, x)
        v = self.manifold.transp(loc, self._origin().to(x), u)[..., 1:]
        return _normal_log_prob(v, self.scale.to(x)) - self.manifold.logdetexp(loc, u)


def vmf_log_normalizer(dim: int, kappa: float) -> float:
    """``log C_d(kappa)`` of the vMF on ``S^(d-1)`` with ambient dimension ``d``.

    ``C_d(kappa) = kappa^(d/2-1) / ((2 pi)^(d/2) I_(d/2-1)(kappa))``, computed with the exponentially
    scaled Bessel function (``log I_nu(k) = log ive(nu, k) + k``) so that it is stable from
    ``kappa = 1e-3`` to ``1e3``; for vanishing ``kappa`` it tends to minus the log-area of the sphere.
    """
    nu = dim / 2 - 1
    if kappa <= 0:
        raise ValueError(f"vMF concentration must be positive, got {kappa}")
    ive = sps.ive(nu, kappa)
    if ive > 0 and np.isfinite(ive):
        log_i = math.log(ive) + kappa
    else:  # small-kappa series: I_nu(k) ~ (k/2)^nu / Gamma(nu + 1)
        log_i = nu * math.log(kappa / 2) - sps.gammaln(nu + 1)
    return nu * math.log(kappa) - (dim / 2) * math.log(2 * math.pi) - log_i


def vmf_mean_resultant_length(dim: int, kappa: float) -> float:
    """``A_d(kappa) = I_(d/2)(kappa) / I_(d/2-1)(kappa)``, the expected ``<mu, x>``."""
    return float(sps.ive(dim / 2, kappa) / sps.ive(dim / 2 - 1, kappa))


def _householder_to(mu, y):
    """Apply the reflection that maps ``e_0`` to ``mu`` to the rows of ``y``."""
    e0 = torch.zeros_like(mu)
    e0[0] = 1.0
    w = e0 - mu
    wn = (w * w).sum()
    if float(wn) < 1e-20:
        return y
    return y - 2 * (y @ w)[:, None] * w / wn


class VonMisesFisher:
    """von Mises-Fisher distribution on ``S^n`` (ambient dimension ``d = n + 1``).

    ``log p(x) = kappa <mu, x> + log C_d(kappa)``. Sampling is exact: the inverse CDF of
    ``w = <mu, x>`` in closed form on ``S^2``, Wood's (1994) rejection sampler otherwise.
    """

    def __init__(self, loc, concentration: float):
        self.loc = _as_float_tensor(loc)
        self.loc = self.loc / self.loc.norm()
        self.concentration = float(concentration)
        self.dim = self.loc.shape[-1]
        self.manifold = Sphere(self.dim - 1)
        self.log_normalizer = vmf_log_normalizer(self.dim, self.concentration)

    def to(self, dtype=None, device=None):
        self.loc = self.loc.to(dtype=dtype, device=device)
        return self

    def log_prob(self, x):
        return self.concentration * (x * self.loc.to(x)).sum(-1) + self.log_normalizer

    def _sample_w(self, n, generator):
        k, d = self.concentration, self.dim
        kw = dict(dtype=self.loc.dtype, device=self.loc.device)
        if d == 3:
            xi = torch.rand(n, generator=generator, **kw)
            # w = 1 + log(xi + (1 - xi) e^{-2k}) / k, written to avoid cancellation for large k
            return 1 + torch.log(xi + (1 - xi) * math.exp(-2 * k)) / k
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        b = (d - 1) / (2 * k + math.sqrt(4 * k * k + (d - 1) ** 2))
        x0 = (1 - b) / (1 + b)
        c = k * x0 + (d - 1) * math.log(1 - x0 * x0)
        out = np.empty(0)
        while out.size < n:
            m = max(2 * (n - out.size), 16)
            z = rng.beta((d - 1) / 2, (d - 1) / 2, size=m)
            w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
            u = rng.uniform(size=m)
            ok = k * w + (d - 1) * np.log(1 - x0 * w) - c >= np.log(u)
            out = np.concatenate([out, w[ok]])
        return torch.as_tensor(out[:n], **kw)

    def sample(self, n: int, generator=None):
        """Exact samples, shape ``(n, d)``."""
        w = self._sample_w(n, generator).clamp(-1.0, 1.0)
        kw = dict(dtype=self.loc.dtype, device=self.loc.device)
        v = torch.randn(n, self.dim - 1, generator=generator, **kw)
        v = v / v.norm(dim=-1, keepdim=True)
        y = torch.cat([w[:, None], torch.sqrt(1 - w * w)[:, None] * v], -1)
        return _householder_to(self.loc, y)


class VonMisesFisherKDE:
    """Equal-weight mixture of vMF kernels of one concentration centred at the rows of ``centers``.

    A kernel density estimate on ``S^n``; exactly normalized, with exact samples. Used as an
    importance-sampling proposal for sharply peaked model densities (see
    :func:`flows.evaluation.importance_integral`).
    """

    def __init__(self, centers, concentration: float):
        c = _as_float_tensor(centers)
        self.centers = c / c.norm(dim=-1, keepdim=True)
        self.concentration = float(concentration)
        self.dim = self.centers.shape[-1]
        self.manifold = Sphere(self.dim - 1)
        self._kernel = VonMisesFisher(self.centers[0], self.concentration)

    def log_prob(self, x):
        lp = self.concentration * (x @ self.centers.to(x).T) + self._kernel.log_normalizer
        return torch.logsumexp(lp, -1) - math.log(self.centers.shape[0])

    def sample(self, n: int, generator=None):
        idx = torch.randint(0, self.centers.shape[0], (n,), generator=generator)
        mu = self.centers[idx]
        w = self._kernel._sample_w(n, generator).to(mu).clamp(-1.0, 1.0)
        # a uniform direction orthogonal to each centre
        v = torch.randn(n, self.dim, generator=generator, dtype=mu.dtype)
        v = v - (v * mu).sum(-1, keepdim=True) * mu
        v = v / v.norm(dim=-1, keepdim=True)
        return w[:, None] * mu + torch.sqrt(1 - w * w)[:, None] * v


class AdaptiveVonMisesFisherKDE:
    """Equal-weight mixture of vMF kernels on ``S^2``, one concentration per centre.

    ``log p(x) = logsumexp_i [kappa_i (<x, c_i> - 1) + log peak_i] - log K`` with the kernel's log-peak
    ``log(kappa_i / (2 pi)) - log(1 - e^(-2 kappa_i))``; ``<x, c> - 1 = -|x - c|^2 / 2`` is computed
    from the chord, so concentrations up to ~1e12 (kernels of metres on the Earth) keep their
    precision in float64. Exactly normalized, with exact samples (the inverse CDF of ``<c_i, x>``).
    """

    def __init__(self, centers, concentrations):
        c = _as_float_tensor(centers).double()
        k = torch.as_tensor(concentrations, dtype=torch.float64).reshape(-1)
        if c.dim() != 2 or c.shape[-1] != 3 or len(c) != len(k) or len(c) == 0:
            raise ValueError(
                f"need centres (K, 3) on S^2 and K concentrations, got {tuple(c.shape)} and {tuple(k.shape)}"
            )
        if not bool(torch.isfinite(k).all() and (k > 0).all()):
            raise ValueError("concentrations must be positive and finite")
        self.centers = c / c.norm(dim=-1, keepdim=True)
        self.kappas = k
        self.dim = 3
        self.manifold = Sphere(2)
        self.log_peak = torch.log(k / (2 * math.pi)) - torch.log(-torch.expm1(-2 * k))

    def log_prob(self, x, chunk: int = 4096):
        xd = x.double()
        out = []
        for i in range(0, xd.shape[0], chunk):
            xi = xd[i : i + chunk]
            chord2 = ((xi.unsqueeze(-2) - self.centers) ** 2).sum(-1)  # |x - c|^2 = 2 (1 - <x, c>)
            out.append(torch.logsumexp(self.log_peak - 0.5 * self.kappas * chord2, -1))
        return (torch.cat(out) - math.log(len(self.kappas))).to(x.dtype)

    def sample(self, n: int, generator=None):
        idx = torch.randint(0, len(self.kappas), (n,), generator=generator)
        return vmf_s2_around(self.centers[idx], self.kappas[idx], generator)


def vmf_s2_around(mu, kappa, generator=None):
    """One vMF draw on ``S^2`` per row of ``mu`` ``(B, 3)``, of concentration ``kappa`` ``(B,)`` (float64):
    the inverse CDF of ``w = <mu, x>``, then a uniform direction orthogonal to ``mu``."""
    n = len(mu)
    xi = torch.rand(n, generator=generator, dtype=torch.float64)
    w = (1 + torch.log(xi + (1 - xi) * torch.exp(-2 * kappa)) / kappa).clamp(-1, 1)
    v = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    v = v - (v * mu).sum(-1, keepdim=True) * mu
    v = v / v.norm(dim=-1, keepdim=True)
    return w[:, None] * mu + torch.sqrt((1 - w) * (1 + w))[:, None] * v


class MultiscaleKDE:
    """A data-informed base on ``S^2``: ``(1 - eps)`` times an equal-weight mixture, over concentrations
    ``kappa_1..kappa_m``, of vMF kernel density estimates at ``centers`` (a training split), plus ``eps``
    times the uniform law (which bounds ``-log p`` by ``log(4 pi / eps)`` far from every centre).

    Exactly normalized, with exact samples. ``log_prob`` works in float64 with ``kappa (<x, c> - 1)``, so
    concentrations up to ~1e7 (kernels of a few hundred metres on the Earth) keep full precision.
    :meth:`sample_around` draws a kernel at given centres: flow matching's paired coupling
    (:class:`train.objectives.RiemannianFlowMatching`), whose base marginal is this law exactly when the
    data points are drawn uniformly from ``centers``.
    """

    def __init__(self, centers, concentrations, eps: float = 0.01, chunk: int = 2048):
        c = _as_float_tensor(centers).double()
        if c.dim() != 2 or c.shape[-1] != 3 or len(c) == 0:
            raise ValueError(f"the KDE base needs centres of shape (N, 3) on S^2, got {tuple(c.shape)}")
        if not 0 < eps < 1 or not concentrations or min(concentrations) <= 0:
            raise ValueError("the KDE base needs 0 < eps < 1 and positive concentrations")
        self.centers = c / c.norm(dim=-1, keepdim=True)
        self.kappas = [float(k) for k in concentrations]
        self.eps, self.chunk = float(eps), int(chunk)
        self.manifold = Sphere(2)
        # kappa + log C_3(kappa) = log(kappa / (2 pi)) - log(1 - e^(-2 kappa)): the kernel's log-peak
        self.log_peak = torch.tensor([math.log(k / (2 * math.pi)) - math.log(-math.expm1(-2 * k)) for k in self.kappas],
                                     dtype=torch.float64)  # fmt: skip
        self.log_uniform = math.log(eps / (4 * math.pi))

    def kernel_log_probs(self, x):
        """``(N, m)`` float64: at each point, the log-density of the KDE of each concentration alone (an
        equal-weight mixture of the kernels of that concentration at every centre, normalized; no uniform)."""
        xd = x.double()
        c = self.centers.to(xd.device)
        k = torch.tensor(self.kappas, dtype=torch.float64, device=xd.device)
        peak = self.log_peak.to(xd.device)
        doubling = len(k) > 1 and all(b == 2 * a for a, b in zip(self.kappas, self.kappas[1:], strict=False))
        out = []
        for i in range(0, xd.shape[0], self.chunk):
            d = xd[i : i + self.chunk] @ c.T - 1  # <x, c> - 1 <= 0, exact to 1e-16 in float64
            if doubling:  # (train/stacking.py's ladder) exp(2 k d) = exp(k d)^2: one exp, then squares
                top = d.max(
                    -1, keepdim=True
                ).values  # the nearest centre: its term is 1, the sum never underflows
                e = torch.exp(k[0] * (d - top))
                cols = []
                for j in range(len(k)):
                    if j:
                        e = e * e
                    cols.append(k[j] * top[:, 0] + e.sum(-1).log() + peak[j])
                lp = torch.stack(cols, -1)
            else:
                lp = (torch.logsumexp(k[:, None, None] * d.unsqueeze(0), -1) + peak[:, None]).T
            out.append(lp - math.log(len(c)))
        return torch.cat(out) if out else xd.new_zeros(0, len(self.kappas))

    def log_prob(self, x):
        kde = torch.logsumexp(self.kernel_log_probs(x), -1) - math.log(len(self.kappas))
        lp = torch.logaddexp(kde + math.log1p(-self.eps), torch.full_like(kde, self.log_uniform))
        return lp.to(x.dtype)

    def sample_around(self, mu, generator=None):
        """One draw per row of ``mu`` ``(B, 3)``: uniform with probability ``eps``, else a vMF kernel at that
        row of a concentration drawn uniformly from ``kappas``."""
        mu = mu.double()
        n = len(mu)
        k = torch.tensor(self.kappas, dtype=torch.float64)[
            torch.randint(0, len(self.kappas), (n,), generator=generator)
        ]
        y = vmf_s2_around(mu, k, generator)
        unif = torch.rand(n, generator=generator, dtype=torch.float64) < self.eps
        return torch.where(
            unif[:, None], self.manifold.random(n, generator=generator, dtype=torch.float64), y
        )

    def sample(self, n: int, generator=None, dtype=None, device=None):
        idx = torch.randint(0, len(self.centers), (n,), generator=generator)
        return self.sample_around(self.centers[idx], generator).to(dtype=dtype, device=device)


class UniformSphere:
    """Uniform distribution on ``S^n``: ``log p = -log area(S^n)``."""

    def __init__(self, dim: int = 2):
        self.manifold = Sphere(dim)
        d = dim + 1
        self.log_area = math.log(2) + (d / 2) * math.log(math.pi) - sps.gammaln(d / 2)

    def log_prob(self, x):
        return torch.full(x.shape[:-1], -self.log_area, dtype=x.dtype, device=x.device)

    def sample(self, n: int, generator=None, dtype=None, device=None):
        return self.manifold.random(n, generator=generator, dtype=dtype, device=device)


class Mixture:
    """Equal-weight mixture of components with ``sample`` and ``log_prob``."""

    def __init__(self, components):
        self.components = list(components)
        self.manifold = self.components[0].manifold

    def log_prob(self, x):
        lp = torch.stack([c.log_prob(x) for c in self.components], -1)
        return torch.logsumexp(lp, -1) - math.log(len(self.components))

    def sample(self, n: int, generator=None):
        k = len(self.components)
        idx = torch.randint(0, k, (n,), generator=generator)
        xs = [c.sample(int((idx == i).sum()), generator=generator) for i, c in enumerate(self.components)]
        x = torch.cat(xs, 0)
        perm = torch.randperm(n, generator=generator)
        return x[perm]


class StandardNormal:
    """Standard normal on Euclidean ``R^n`` (the base of an ordinary CNF)."""

    def __init__(self, manifold):
        self.manifold = manifold

    def log_prob(self, x):
        return (-0.5 * x * x - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, n: int, generator=None, dtype=None, device=None):
        return torch.randn(n, self.manifold.dim, generator=generator, dtype=dtype, device=device)


#: The flow's base distribution at ``t = 1`` per manifold: ``(manifold, conc, dtype, device) -> law``.
#: Hyperboloid: wrapped normal of std 1 at the origin; sphere: vMF(conc) at the origin, or uniform
#: for ``conc = 0``; Euclidean: standard normal. A manifold not listed here carries its own base, as a
#: method ``base_distribution(conc, dtype, device)`` (the torus: :meth:`manifolds.Torus.base_distribution`).
BASE_DISTRIBUTIONS = {
    "Hyperboloid": lambda M, conc, dtype, device: WrappedNormal(
        M, M.origin(dtype=dtype, device=device), torch.ones((), dtype=dtype, device=device)
    ),
    "Sphere": lambda M, conc, dtype, device: (
        VonMisesFisher(M.origin(dtype=dtype, device=device), conc) if conc > 0 else UniformSphere(M.dim)
    ),
    "Euclidean": lambda M, conc, dtype, device: StandardNormal(M),
}


def base_distribution(manifold, conc: float = 1.0, dtype=None, device=None):
    """The flow's base distribution on ``manifold`` (:data:`BASE_DISTRIBUTIONS`)."""
    if manifold.name in BASE_DISTRIBUTIONS:
        return BASE_DISTRIBUTIONS[manifold.name](manifold, conc, dtype, device)
    if hasattr(manifold, "base_distribution"):
        return manifold.base_distribution(conc, dtype=dtype, device=device)
    raise ValueError(f"no base distribution is registered for the {manifold.name}")


def draw(dist, n: int, generator=None, dtype=None, device=None):
    """``n`` samples of any base distribution of this module, in ``dtype`` on ``device``: the one place
    that knows their differing ``sample`` signatures (the MCNF and the baselines both draw through it)."""
    if isinstance(dist, WrappedNormal):
        return dist.rsample(n, generator=generator).to(dtype=dtype, device=device)
    if isinstance(dist, VonMisesFisher):
        return dist.sample(n, generator=generator).to(dtype=dtype, device=device)
    return dist.sample(n, generator=generator, dtype=dtype, device=device)
