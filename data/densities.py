"""The seven test densities of the paper, each with exact sampling and an exact log-density.

Hyperboloid H^2: ``1wrapped``, ``5gaussians``, ``bigcheckerboard``, ``mult_wrapped``.
Sphere S^2: ``1wrapped``, ``4wrapped``, ``bigcheckerboard``.
Flat torus T^n (not in the paper; the proof that a manifold is one module plus registry lines):
``1wrapped`` (a wrapped normal of scale 0.6 at the angles ``(2, -2.5, 0, ...)``, near the square's
corner, so it wraps across the edges), ``4wrapped`` (``2n`` wrapped normals of scale 0.4 at
``+-pi/2 e_i``), ``checkerboard`` (``n = 2``: uniform on 8 of the 16 squares of side ``pi/2``).
Definitions follow docs/math.md (taken from the reference code); unlike the reference, every
log-density is exact on the manifold (the checkerboards are not normalized over a plotting grid).

Any dimension ``n`` (``get_density(..., dim=n)``; docs/math.md, "The test densities in n
dimensions"): at ``n = 2`` every density is the paper's, bit for bit. For other ``n``:

- ``1wrapped``: the same wrapped normal, its mean's coordinates extended by zeros (hyperboloid:
  ``exp_o(0, -1, 1, 0, ...)``; ``n = 1``: ``exp_o(0, -1)``) or by equal entries (sphere:
  ``-(1, ..., 1) / sqrt(n + 1)``).
- ``5gaussians`` (H^n): ``2n + 1`` Gaussians of standard deviation 0.5 in the tangent space at the
  origin, at ``0`` and ``+-3 e_i`` (at ``n = 2`` the paper's five), pushed through ``exp_o``.
- ``4wrapped`` (S^n): ``2n`` wrapped normals of scale 0.3 at ``+-e_i``, ``i = 1..n`` (the axes
  orthogonal to the base's mean ``o = -e_0``; pairwise angles pi/2 or pi). At ``n = 2`` the paper's
  four means, which are two antipodal pairs as well but tilted: 2n modes at every n.
- ``mult_wrapped`` (H^n, ``n >= 2``): the paper's four anisotropic wrapped normals in the plane of
  the first two spatial axes, scale 0.75 along the other ``n - 2``.
- ``antipodal`` (S^n): the vMF(30) at ``-o``, in every dimension.
- the checkerboards are 2-dimensional only.

Precision is explicit: a density holds its parameters in the ``dtype`` it was built with
(``get_density(..., dtype=torch.float64)`` by default) and ``sample(n, generator, dtype=None)``
returns points in ``dtype`` (default: the density's). Densities defined by a draw in a chart
(``5gaussians``, the checkerboards) make that draw in ``dtype``; densities defined by a
distribution (the wrapped normals, the vMF) draw in their parameters' dtype and cast the points.
Nothing reads the global default dtype.
"""

from __future__ import annotations

import math

import torch

from manifolds import Hyperboloid, Sphere, Torus
from manifolds.distributions import Mixture, VonMisesFisher, WrappedNormal
from manifolds.torus import WrappedNormalTorus


class Density:
    """A target density on a manifold: ``sample(n, generator, dtype)`` and exact ``log_prob(x)``.

    ``dtype``/``device`` are those of its parameters; ``log_prob`` computes in ``x``'s dtype.
    """

    manifold = None
    name = ""
    dtype = torch.float64
    device = torch.device("cpu")

    def sample(self, n: int, generator=None, dtype=None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.manifold.name}, {self.name!r})"


class _FromDistribution(Density):
    def __init__(self, name, dist, dtype, device):
        self.name, self.dist, self.manifold = name, dist, dist.manifold
        self.dtype, self.device = dtype, device

    def sample(self, n, generator=None, dtype=None):
        return self.dist.sample(n, generator=generator).to(dtype or self.dtype)

    def log_prob(self, x):
        return self.dist.log_prob(x)


class _PushedFromOriginChart(Density):
    """``x = exp_o(y)`` for ``y`` with a density in the tangent plane at the origin (``R^2``).

    ``log p(x) = log p_y(log_o x) - log J(log_o x)``.
    """

    def __init__(self, name, manifold, dtype, device):
        self.name, self.manifold = name, manifold
        self.dtype, self.device = dtype, device

    def _origin(self, x):
        return self.manifold.origin(dtype=x.dtype, device=x.device)

    def sample(self, n, generator=None, dtype=None):
        y = self.sample_tangent(n, generator, dtype or self.dtype)
        o = self._origin(y)
        return self.manifold.expmap(o, torch.cat([torch.zeros_like(y[:, :1]), y], -1))

    def log_prob(self, x):
        o = self._origin(x)
        u = self.manifold.logmap(o, x)
        return self.log_prob_tangent(u[..., 1:]) - self.manifold.logdetexp(o, u)


class FiveGaussians(_PushedFromOriginChart):
    """``2n + 1`` Gaussians in the tangent space at the origin: at ``+-3 e_1, ..., +-3 e_n`` and 0."""

    std = 0.5  # variance 0.25

    def __init__(self, name, manifold, dtype, device):
        super().__init__(name, manifold, dtype, device)
        eye = torch.eye(manifold.dim, dtype=torch.float64)
        # +e_1, -e_1, +e_2, -e_2, ..., then 0: at n = 2 the paper's centres, in the paper's order
        axes = torch.stack([sign * e for e in eye for sign in (1.0, -1.0)])
        self.centers = 3.0 * torch.cat([axes, torch.zeros(1, manifold.dim, dtype=torch.float64)])

    def sample_tangent(self, n, generator, dtype):
        k, dim = self.centers.shape
        idx = torch.randint(0, k, (n,), generator=generator, device=self.device)
        c = self.centers.to(dtype=dtype, device=self.device)[idx]
        return c + self.std * torch.randn(n, dim, generator=generator, dtype=dtype, device=self.device)

    def log_prob_tangent(self, y):
        c = self.centers.to(y)
        k, dim = c.shape
        d2 = ((y.unsqueeze(-2) - c) ** 2).sum(-1) / self.std**2
        lp = -0.5 * d2 - dim * math.log(self.std) - dim / 2 * math.log(2 * math.pi)
        return torch.logsumexp(lp, -1) - math.log(k)


class BigCheckerboardHyperboloid(_PushedFromOriginChart):
    corners = torch.tensor(
        [[0.0, 0], [0, -3], [1.5, 1.5], [1.5, -1.5], [-1.5, 1.5], [-1.5, -1.5], [-3, 0], [-3, -3]],
        dtype=torch.float64,
    )
    side = 1.5

    def sample_tangent(self, n, generator, dtype):
        kw = dict(dtype=dtype, device=self.device)
        idx = torch.randint(0, 8, (n,), generator=generator, device=self.device)
        return self.corners.to(**kw)[idx] + self.side * torch.rand(n, 2, generator=generator, **kw)

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

    def __init__(self, dtype=torch.float64, device=None):
        self.name, self.manifold = "bigcheckerboard", Sphere(2)
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        s = self.s
        ab = [(0, 0), (s, s / 2), (s, -s / 2), (0, -s), (-s, s / 2), (-s, -s / 2), (-2 * s, 0), (-2 * s, -s)]
        self.corners = torch.tensor([[math.pi + a, math.pi / 2 + b] for a, b in ab], dtype=torch.float64)
        self.size = torch.tensor([s, s / 2], dtype=torch.float64)

    def sample(self, n, generator=None, dtype=None):
        kw = dict(dtype=dtype or self.dtype, device=self.device)
        idx = torch.randint(0, 8, (n,), generator=generator, device=self.device)
        pt = self.corners.to(**kw)[idx] + self.size.to(**kw) * torch.rand(n, 2, generator=generator, **kw)
        phi, theta = pt[:, 0], pt[:, 1]
        return torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1)

    def log_prob(self, x):
        phi = torch.remainder(torch.atan2(x[..., 1], x[..., 0]), 2 * math.pi)
        theta = torch.atan2(torch.linalg.vector_norm(x[..., :2], dim=-1), x[..., 2])
        rel = torch.stack([phi, theta], -1).unsqueeze(-2) - self.corners.to(x)
        inside = ((rel >= 0) & (rel < self.size.to(x))).all(-1).any(-1)
        lp = -math.log(4 * self.s**2) - torch.log(theta.sin())
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))


def _padded(values, length, kw, fill=0.0):
    """``values`` cut or padded with ``fill`` to ``length`` entries, as a tensor."""
    values = list(values)[:length]
    return torch.tensor(values + [fill] * (length - len(values)), **kw)


def _hyperboloid_densities(dtype, device, dim=2):
    H = Hyperboloid(dim)
    kw = dict(dtype=dtype, device=device)
    o = H.origin(**kw)

    def one_wrapped():
        mu = H.expmap(o, _padded([0.0, -1.0, 1.0], dim + 1, kw))
        return _FromDistribution("1wrapped", WrappedNormal(H, mu, 0.75), **kw)

    def mult_wrapped():
        comps = []
        for s1, s2, scale in [
            (1, 1, (0.3, 1.5)),
            (-1, -1, (0.3, 1.5)),
            (-1, 1, (1.5, 0.3)),
            (1, -1, (1.5, 0.3)),
        ]:
            mu = H.projx(_padded([0.0, 1.3 * s1, 1.3 * s2], dim + 1, kw))
            comps.append(WrappedNormal(H, mu, _padded(scale, dim, kw, fill=0.75)))
        return _FromDistribution("mult_wrapped", Mixture(comps), **kw)

    table = {
        "1wrapped": one_wrapped,
        "5gaussians": lambda: FiveGaussians("5gaussians", H, **kw),
        "bigcheckerboard": lambda: BigCheckerboardHyperboloid("bigcheckerboard", H, **kw),
        "mult_wrapped": mult_wrapped,
    }
    if dim != 2:
        del table["bigcheckerboard"]
    if dim < 2:
        del table["mult_wrapped"]
    return table


def _sphere_densities(dtype, device, dim=2):
    S = Sphere(dim)
    kw = dict(dtype=dtype, device=device)

    def unit(v):
        v = torch.tensor(v, **kw)
        return v / v.norm()

    def four_wrapped():
        if dim == 2:
            means = [unit(v) for v in [(1, 1, 1), (-1, -1, -1), (1, 1, -1), (-1, -1, 1)]]
        else:
            means = [sign * torch.eye(dim + 1, **kw)[i] for i in range(1, dim + 1) for sign in (1, -1)]
        return _FromDistribution("4wrapped", Mixture([WrappedNormal(S, m, 0.3) for m in means]), **kw)

    def antipodal():
        # The paper's appendix: vMF(30) at the antipode of the base distribution's mean.
        return _FromDistribution("antipodal", VonMisesFisher(-S.origin(**kw), 30.0), **kw)

    table = {
        "1wrapped": lambda: _FromDistribution(
            "1wrapped", WrappedNormal(S, unit([-1] * (dim + 1)), 0.3), **kw
        ),
        "4wrapped": four_wrapped,
        "bigcheckerboard": lambda: BigCheckerboardSphere(**kw),
        "antipodal": antipodal,
    }
    if dim != 2:
        del table["bigcheckerboard"]
    return table


class TorusCheckerboard(Density):
    """Uniform on the 8 cells ``(i + j)`` even of the 4 x 4 grid of side ``pi/2`` on ``T^2``: ``p = 1 / (2 pi^2)``."""

    def __init__(self, dtype=torch.float64, device=None):
        self.name, self.manifold = "checkerboard", Torus(2)
        self.dtype, self.device = dtype, torch.device(device or "cpu")

    def sample(self, n, generator=None, dtype=None):
        kw = dict(dtype=dtype or self.dtype, device=self.device)
        i = torch.randint(0, 4, (n,), generator=generator, device=self.device)
        j = 2 * torch.randint(0, 2, (n,), generator=generator, device=self.device) + i % 2
        cell = torch.stack([i, j], -1).to(**kw)
        a = (cell + torch.rand(n, 2, generator=generator, **kw)) * (math.pi / 2) - math.pi
        return Torus.from_angles(a)

    def log_prob(self, x):
        cell = torch.floor((Torus.to_angles(x) + math.pi) / (math.pi / 2)).clamp(0, 3)
        inside = cell.sum(-1) % 2 == 0
        lp = torch.full_like(x[..., 0], -math.log(2 * math.pi**2))
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))


def _torus_densities(dtype, device, dim=2):
    T = Torus(dim)
    kw = dict(dtype=dtype, device=device)

    def wrapped(name, means, scale):
        comps = [WrappedNormalTorus(T, m.to(**kw), scale) for m in means]
        return _FromDistribution(name, comps[0] if len(comps) == 1 else Mixture(comps), **kw)

    axes = [sign * math.pi / 2 * e for e in torch.eye(dim, dtype=torch.float64) for sign in (1, -1)]
    table = {
        "1wrapped": lambda: wrapped("1wrapped", [_padded([2.0, -2.5], dim, kw)], 0.6),
        "4wrapped": lambda: wrapped("4wrapped", axes, 0.4),
        "checkerboard": lambda: TorusCheckerboard(**kw),
    }
    if dim != 2:
        del table["checkerboard"]
    return table


DENSITIES = {"Hyperboloid": _hyperboloid_densities, "Sphere": _sphere_densities, "Torus": _torus_densities}

#: Valid dataset names for each manifold (synthetic densities, n = 2).
DATASETS = {m: tuple(f(torch.float64, None)) for m, f in DENSITIES.items()}


def datasets(manifold_name: str, dim: int = 2) -> tuple:
    """The synthetic densities defined on the named manifold in dimension ``dim``."""
    return tuple(DENSITIES[manifold_name](torch.float64, None, dim))


def get_density(manifold_name: str, dataset: str, dtype=torch.float64, device=None, dim: int = 2) -> Density:
    """The named test density on the named manifold of dimension ``dim`` (default 2, the paper's).

    Its parameters are built in ``dtype`` on ``device`` (default float64 on the CPU: the training
    and evaluation code samples and scores the truth in float64 and casts batches itself).

    Raises:
        ValueError: unknown manifold, or a dataset that does not exist for that manifold in that
            dimension (the message lists the valid ones).
    """
    if manifold_name not in DENSITIES:
        raise ValueError(f"unknown manifold {manifold_name!r}; valid: {', '.join(DENSITIES)}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    table = DENSITIES[manifold_name](dtype, torch.device(device or "cpu"), dim)
    if dataset not in table:
        where = f"the {manifold_name}" if dim == 2 else f"the {dim}-dimensional {manifold_name}"
        why = {
            "bigcheckerboard": " (the checkerboards are 2-dimensional only)",
            "checkerboard": " (the checkerboards are 2-dimensional only)",
            "mult_wrapped": " (it needs n >= 2)",
        }
        only2 = why.get(dataset, "") if dataset in DATASETS[manifold_name] else ""
        raise ValueError(f"dataset {dataset!r} does not exist on {where}{only2}; valid: {', '.join(table)}")
    return table[dataset]()
