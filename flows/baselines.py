"""The discrete normalizing flows that the paper compares the MCNF against (Lou et al. 2020, Sec. 6.1).

- ``whc``: Wrapped Hyperboloid Coupling on ``H^n`` (Bose et al., ICML 2020).
- ``prnvp``: Projected NVP on ``H^n``, RealNVP (Dinh et al. 2017) on a projection of the
  hyperboloid onto ``R^n`` (the projection flows of Gemici et al. 2016).
- ``ncp``: the recursive flow on ``S^2`` of Rezende et al. (ICML 2020), whose circle flows are
  mixtures of non-compact projections (NCP), as the paper's sphere baseline (:mod:`flows.ncp`).

Each is written from those papers' equations (docs/math.md, "Baselines", has them with their
log-determinants) and has the MCNF's interface: ``forward(x) -> (z, delta_logp)`` from data to base
with ``log p(x) = base.log_prob(z) + delta_logp``, ``log_prob``, ``inverse``, ``sample``,
``sample_base``, ``base``, ``config`` (which :func:`flows.model_from_checkpoint` rebuilds from), and
log-densities in nats with respect to the Riemannian volume. Every layer is the identity at
initialization (the conditioners' last layers start at zero), so an untrained model is its base.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from manifolds import Hyperboloid
from manifolds.distributions import WrappedNormal

from .discrete import DiscreteFlow, conditioner, soft_clamp  # noqa: F401  (re-exported)
from .ncp import NCP


# ---------------------------------------------------------------------------------------------
# Hyperboloid: coupling layers on R^n (tangent coordinates at o, or the projection x -> x_(1:))
# ---------------------------------------------------------------------------------------------
def _pad(v):
    """``(0, v)``: coordinates ``v in R^n`` as the ambient vector of ``R^(n+1)`` with a leading zero
    (a tangent vector at the origin ``o``, or a point to lift with ``projx``)."""
    return torch.cat([torch.zeros_like(v[..., :1]), v], -1)


def _split(n: int, i: int):
    """Layer ``i``'s conditioning and transformed coordinates (alternating parity)."""
    a = [j for j in range(n) if (j + i) % 2 == 0]
    b = [j for j in range(n) if (j + i) % 2 == 1]
    return a, b


class _Coupling(nn.Module):
    """One coupling layer on ``R^n``: ``y_A`` conditions, ``y_B`` is transformed (data -> base).

    ``wrapped=False`` (RealNVP): ``u_B = (y_B - t) e^(-s)``. ``wrapped=True`` (WHC): ``y_B`` is read as a point
    ``q = exp_o(y_B)`` of the totally geodesic ``H^m`` (``m = |B|``) and mapped to
    ``u_B = e^(-s) PT_(tau -> o)(log_tau(q))`` with ``tau`` the lift of ``t`` to ``H^m``; the generative
    direction is Bose et al.'s ``log_o(exp_tau(PT_(o -> tau)(u_B e^s)))``.
    """

    def __init__(self, n, i, hidden, n_hidden, activation, wrapped: bool):
        super().__init__()
        a, b = _split(n, i)
        self.register_buffer("a", torch.tensor(a), persistent=False)
        self.register_buffer("b", torch.tensor(b), persistent=False)
        self.m, self.wrapped = len(b), wrapped
        self.net = conditioner(len(a), 2 * len(b), hidden, n_hidden, activation)
        self.sub = Hyperboloid(self.m) if wrapped else None
        #: Use the closed form of a one-dimensional block (``H^1``, every block of ``H^2``): the general
        #: path's exp/transport/log reduce to ``y_B = u_B e^s + asinh(t)`` (tests check both agree),
        #: a few elementwise operations instead of three float64 hyperboloid maps.
        self.fast = True

    def params(self, y):
        h = self.net(y[..., self.a].to(self.net.layers[-1].weight.dtype)).to(y.dtype)
        return soft_clamp(h[..., : self.m]), h[..., self.m :]

    def _lift(self, t):
        return self.sub.projx(_pad(t))

    def to_base(self, y):
        s, t = self.params(y)
        yb = y[..., self.b]
        if not self.wrapped:
            ub, ld = (yb - t) * torch.exp(-s), -s.sum(-1)
        elif self.m == 1 and self.fast:  # H^1 is a line: exp_tau o PT translates by tau's signed distance
            ub, ld = (yb - torch.asinh(t)) * torch.exp(-s), -s.sum(-1)
        else:
            H, tau = self.sub, self._lift(t)
            o = H.origin(*yb.shape[:-1], dtype=y.dtype, device=y.device)
            yb0 = _pad(yb)
            w = H.logmap(tau, H.expmap(o, yb0))
            v = H.transp(tau, o, w)[..., 1:]
            ub = v * torch.exp(-s)
            ld = -s.sum(-1) - H.logdetexp(tau, w) + H.logdetexp(o, yb0)
        return y.index_copy(-1, self.b, ub), ld

    def to_data(self, u):
        s, t = self.params(u)
        ub = u[..., self.b]
        if not self.wrapped:
            yb, ld = ub * torch.exp(s) + t, -s.sum(-1)
        elif self.m == 1 and self.fast:
            yb, ld = ub * torch.exp(s) + torch.asinh(t), -s.sum(-1)
        else:
            H, tau = self.sub, self._lift(t)
            o = H.origin(*ub.shape[:-1], dtype=u.dtype, device=u.device)
            v = _pad(ub * torch.exp(s))
            w = H.transp(o, tau, v)
            yb0 = H.logmap(o, H.expmap(tau, w))
            yb = yb0[..., 1:]
            ld = -s.sum(-1) - H.logdetexp(tau, w) + H.logdetexp(o, yb0)
        return u.index_copy(-1, self.b, yb), ld  # ld: the data -> base log-det at the returned point


class _HyperbolicCoupling(DiscreteFlow):
    wrapped = False

    def __init__(self, manifold="Hyperboloid", dim=2, hidden=32, n_hidden=3, activation="tanh", blocks=8):
        super().__init__(manifold, dim, hidden, n_hidden, activation, blocks)
        M = self.manifold
        if M.name != "Hyperboloid":
            raise ValueError(f"--model {self.kind} is a flow on the hyperboloid, not the {M.name}; "
                             "on the sphere the baseline is --model ncp")  # fmt: skip
        if M.dim < 2:
            raise ValueError(f"--model {self.kind} couples coordinates and needs --dim >= 2, got {M.dim}")
        self.layers = nn.ModuleList(
            _Coupling(M.dim, i, hidden, n_hidden, activation, self.wrapped) for i in range(blocks)
        )

    def _flow_to_base(self, y):
        ld = torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
        for layer in self.layers:
            y, d = layer.to_base(y)
            ld = ld + d
        return y, ld

    def _flow_to_data(self, u):
        ld = torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
        for layer in reversed(self.layers):
            u, d = layer.to_data(u)
            ld = ld + d
        return u, ld

    # The couplings act on the coordinates of one global chart of H^n (``_coords``/``_point``), whose
    # volume factor ``_log_vol(v)`` relates densities: ``log p_M(point(v)) = log p_v(v) - _log_vol(v)``.
    # Hence, with data coordinates y and base coordinates u, ``delta = ld + _log_vol(u) - _log_vol(y)``.
    def _to_base(self, x):
        y = self._coords(x)
        u, ld = self._flow_to_base(y)
        return self._point(u), ld + self._log_vol(u) - self._log_vol(y)

    def _to_data(self, z, with_delta: bool = True):
        u = self._coords(z)
        y, ld = self._flow_to_data(u)
        return self._point(y), ld + self._log_vol(u) - self._log_vol(y)


class WHC(_HyperbolicCoupling):
    """Wrapped Hyperboloid Coupling (Bose et al. 2020) on ``H^n``, base: wrapped normal at ``o``, std 1.

    Data ``x`` is read in tangent coordinates ``y = log_o(x)``; each layer keeps the coordinates
    ``A`` and maps ``B`` through the wrapped coupling of :class:`_Coupling` (its translation is a
    point ``tau`` of the ``|B|``-dimensional hyperboloid spanned by ``o`` and ``B``, the coordinates
    ``A`` being zero there, as in Bose et al.'s layer); the result ``u`` is ``z = exp_o(u)``. With
    ``J_n(u) = (sinh|u| / |u|)^(n-1)``:
    ``log p(x) = log p_base(z) + sum_layers ld + log J_n(u) - log J_n(y)``. On ``H^2`` each block is
    one-dimensional, where ``exp_tau o PT`` is a translation by the signed distance of ``tau``.
    """

    kind, wrapped = "whc", True

    def base(self, dtype=None, device=None):
        p = next(self.parameters())
        dtype, device = dtype or p.dtype, device or p.device
        o = self.manifold.origin(dtype=dtype, device=device)
        return WrappedNormal(self.manifold, o, torch.ones((), dtype=dtype, device=device))

    # the chart: tangent coordinates at the origin, v -> exp_o((0, v)), volume factor J_n(v)
    def _origin_like(self, x):
        return self.manifold.origin(dtype=x.dtype, device=x.device).expand(*x.shape[:-1], -1)

    def _coords(self, x):
        return self.manifold.logmap(self._origin_like(x), x)[..., 1:]

    def _point(self, v):
        v0 = _pad(v)
        return self.manifold.expmap(self._origin_like(v0), v0)

    def _log_vol(self, v):
        v0 = _pad(v)
        return self.manifold.logdetexp(self._origin_like(v0), v0)


class ProjectedNormal:
    """``N(0, I_n)`` on the coordinates ``y = x_(1:)`` of ``H^n``, as a density on ``H^n``.

    The chart ``y -> (sqrt(1 + |y|^2), y)`` has metric ``I - y y^T / (1 + |y|^2)``, whose
    determinant is ``1 / (1 + |y|^2) = 1 / x_0^2``; so ``log p(x) = log N(y) + log x_0``.
    """

    def __init__(self, manifold):
        self.manifold = manifold

    def log_prob(self, x):
        y = x[..., 1:]
        return (-0.5 * y * y - 0.5 * math.log(2 * math.pi)).sum(-1) + torch.log(x[..., 0])

    def sample(self, n: int, generator=None, dtype=None, device=None):
        y = torch.randn(n, self.manifold.dim, generator=generator, dtype=dtype, device=device)
        return self.manifold.projx(_pad(y))


class PRNVP(_HyperbolicCoupling):
    """Projected NVP: RealNVP on ``y = x_(1:)`` (the projection of ``H^n`` onto ``R^n`` that drops
    ``x_0``), with a standard normal on ``R^n`` as base (:class:`ProjectedNormal` on ``H^n``).

    ``log p(x) = log N(u) + sum_layers ld + log x_0``, i.e. ``log p_base(z) + sum ld + log x_0 - log z_0``.
    """

    kind = "prnvp"

    def base(self, dtype=None, device=None):
        return ProjectedNormal(self.manifold)

    # the chart: the projection's coordinates, v -> (sqrt(1 + |v|^2), v), volume factor 1 / x_0
    def _coords(self, x):
        return x[..., 1:]

    def _point(self, v):
        return self.manifold.projx(_pad(v))

    def _log_vol(self, v):
        return -0.5 * torch.log1p((v * v).sum(-1))


#: ``--model`` names of the baselines (the MCNF is ``mcnf``), with the manifold each lives on.
BASELINES = {"whc": WHC, "prnvp": PRNVP, "ncp": NCP}
BASELINE_MANIFOLD = {"whc": "Hyperboloid", "prnvp": "Hyperboloid", "ncp": "Sphere"}
