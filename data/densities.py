"""The seven test densities of the paper, each with exact sampling and an exact log-density.

Hyperboloid H^2: ``1wrapped``, ``5gaussians``, ``bigcheckerboard``, ``mult_wrapped``.
Sphere S^2: ``1wrapped``, ``4wrapped``, ``bigcheckerboard``.
Definitions follow docs/math.md (taken from the reference code); unlike the reference, every
log-density is exact on the manifold (the checkerboards are not normalized over a plotting grid).
"""

from __future__ import annotations

import math

import torch

from manifolds import Hyperboloid, Sphere

from .distributions import Mixture, VonMisesFisher, WrappedNormal


class Density:
    """A target density on a manifold: ``sample(n, generator)`` and exact ``log_prob(x)``."""

    manifold = None
    name = ""

    def sample(self, n: int, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.manifold.name}, {self.name!r})"


class _FromDistribution(Density):
    def __init__(self, name, dist):
        self.name, self.dist, self.manifold = name, dist, dist.manifold

    def sample(self, n, generator=None):
        return self.dist.sample(n, generator=generator)

    def log_prob(self, x):
        return self.dist.log_prob(x)


class _PushedFromOriginChart(Density):
    """``x = exp_o(y)`` for ``y`` with a density in the tangent plane at the origin (``R^2``).

    ``log p(x) = log p_y(log_o x) - log J(log_o x)``.
    """

    def __init__(self, name, manifold):
        self.name, self.manifold = name, manifold

    def _origin(self, x):
        return self.manifold.origin(dtype=x.dtype, device=x.device)

    def sample(self, n, generator=None):
        y = self.sample_tangent(n, generator)
        o = self._origin(y)
        return self.manifold.expmap(o, torch.cat([torch.zeros_like(y[:, :1]), y], -1))

    def log_prob(self, x):
        o = self._origin(x)
        u = self.manifold.logmap(o, x)
        return self.log_prob_tangent(u[..., 1:]) - self.manifold.logdetexp(o, u)


class FiveGaussians(_PushedFromOriginChart):
    centers = 3.0 * torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1], [0, 0]])
    std = 0.5  # variance 0.25

    def sample_tangent(self, n, generator=None):
        idx = torch.randint(0, 5, (n,), generator=generator)
        c = self.centers.to(torch.get_default_dtype())[idx]
        return c + self.std * torch.randn(n, 2, generator=generator, dtype=c.dtype)

    def log_prob_tangent(self, y):
        c = self.centers.to(y)
        d2 = ((y.unsqueeze(-2) - c) ** 2).sum(-1) / self.std**2
        lp = -0.5 * d2 - 2 * math.log(self.std) - math.log(2 * math.pi)
        return torch.logsumexp(lp, -1) - math.log(5)


class BigCheckerboardHyperboloid(_PushedFromOriginChart):
    corners = torch.tensor(
        [[0.0, 0], [0, -3], [1.5, 1.5], [1.5, -1.5], [-1.5, 1.5], [-1.5, -1.5], [-3, 0], [-3, -3]]
    )
    side = 1.5

    def sample_tangent(self, n, generator=None):
        dtype = torch.get_default_dtype()
        idx = torch.randint(0, 8, (n,), generator=generator)
        return self.corners.to(dtype)[idx] + self.side * torch.rand(n, 2, generator=generator, dtype=dtype)

    def log_prob_tangent(self, y):
        c = self.corners.to(y)
        rel = y.unsqueeze(-2) - c
        inside = ((rel >= 0) & (rel < self.side)).all(-1).any(-1)
        area = len(self.corners) * self.side**2  # 18
        return torch.where(
            inside, torch.full_like(y[..., 0], -math.log(area)), torch.full_like(y[..., 0], -math.inf)
        )


class BigCheckerboardSphere(Density):
    """``(phi, theta)`` uniform on 8 rectangles; ``p(x) = 1 / (4 s^2 sin theta)`` inside."""

    s = math.pi / 2 - 0.2

    def __init__(self):
        self.name, self.manifold = "bigcheckerboard", Sphere(2)
        s = self.s
        ab = [(0, 0), (s, s / 2), (s, -s / 2), (0, -s), (-s, s / 2), (-s, -s / 2), (-2 * s, 0), (-2 * s, -s)]
        self.corners = torch.tensor([[math.pi + a, math.pi / 2 + b] for a, b in ab])
        self.size = torch.tensor([s, s / 2])

    def sample(self, n, generator=None):
        dtype = torch.get_default_dtype()
        idx = torch.randint(0, 8, (n,), generator=generator)
        pt = self.corners.to(dtype)[idx] + self.size.to(dtype) * torch.rand(
            n, 2, generator=generator, dtype=dtype
        )
        phi, theta = pt[:, 0], pt[:, 1]
        return torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1)

    def log_prob(self, x):
        phi = torch.remainder(torch.atan2(x[..., 1], x[..., 0]), 2 * math.pi)
        theta = torch.atan2(torch.linalg.vector_norm(x[..., :2], dim=-1), x[..., 2])
        rel = torch.stack([phi, theta], -1).unsqueeze(-2) - self.corners.to(x)
        inside = ((rel >= 0) & (rel < self.size.to(x))).all(-1).any(-1)
        lp = -math.log(4 * self.s**2) - torch.log(theta.sin())
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))


def _hyperboloid_densities():
    H = Hyperboloid(2)
    o = H.origin(dtype=torch.get_default_dtype())

    def one_wrapped():
        mu = H.expmap(o, torch.tensor([0.0, -1.0, 1.0], dtype=o.dtype))
        return _FromDistribution("1wrapped", WrappedNormal(H, mu, 0.75))

    def mult_wrapped():
        comps = []
        for s1, s2, scale in [
            (1, 1, (0.3, 1.5)),
            (-1, -1, (0.3, 1.5)),
            (-1, 1, (1.5, 0.3)),
            (1, -1, (1.5, 0.3)),
        ]:
            mu = H.projx(torch.tensor([0.0, 1.3 * s1, 1.3 * s2], dtype=o.dtype))
            comps.append(WrappedNormal(H, mu, torch.tensor(scale, dtype=o.dtype)))
        return _FromDistribution("mult_wrapped", Mixture(comps))

    return {
        "1wrapped": one_wrapped,
        "5gaussians": lambda: FiveGaussians("5gaussians", H),
        "bigcheckerboard": lambda: BigCheckerboardHyperboloid("bigcheckerboard", H),
        "mult_wrapped": mult_wrapped,
    }


def _sphere_densities():
    S = Sphere(2)
    dtype = torch.get_default_dtype()

    def unit(v):
        v = torch.tensor(v, dtype=dtype)
        return v / v.norm()

    def four_wrapped():
        means = [unit(v) for v in [(1, 1, 1), (-1, -1, -1), (1, 1, -1), (-1, -1, 1)]]
        return _FromDistribution("4wrapped", Mixture([WrappedNormal(S, m, 0.3) for m in means]))

    def antipodal():
        # The paper's appendix: vMF(30) at the antipode of the base distribution's mean.
        return _FromDistribution("antipodal", VonMisesFisher(-S.origin(dtype=dtype), 30.0))

    return {
        "1wrapped": lambda: _FromDistribution("1wrapped", WrappedNormal(S, unit((-1, -1, -1)), 0.3)),
        "4wrapped": four_wrapped,
        "bigcheckerboard": BigCheckerboardSphere,
        "antipodal": antipodal,
    }


DENSITIES = {"Hyperboloid": _hyperboloid_densities, "Sphere": _sphere_densities}

#: Valid dataset names for each manifold (synthetic densities).
DATASETS = {m: tuple(f()) for m, f in DENSITIES.items()}


def get_density(manifold_name: str, dataset: str) -> Density:
    """The named test density on the named manifold (2-dimensional).

    Raises:
        ValueError: unknown manifold, or a dataset that does not exist for that manifold (the
            message lists the valid ones).
    """
    if manifold_name not in DENSITIES:
        raise ValueError(f"unknown manifold {manifold_name!r}; valid: {', '.join(DENSITIES)}")
    table = DENSITIES[manifold_name]()
    if dataset not in table:
        raise ValueError(
            f"dataset {dataset!r} does not exist on the {manifold_name}; valid: {', '.join(table)}"
        )
    return table[dataset]()
