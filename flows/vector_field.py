"""The time-dependent vector field ``f(t, x)`` on the manifold (a small MLP in ambient coordinates)."""

from __future__ import annotations

import torch
from torch import nn

from .mlp import MLP

#: Speed bound of the hyperboloid field for unbounded activations (see :class:`VectorField`).
DEFAULT_MAX_SPEED = 10.0
#: Activations whose MLP output is bounded whatever the input (the last layer is linear).
BOUNDED_ACTIVATIONS = ("tanh",)


class VectorField(MLP):
    """``f(t, x) = proj_field(x, h(x, t))``: an MLP on ``[x, t]`` projected onto ``T_x M``.

    On the sphere this is the orthogonal projection ``proju``; on the hyperboloid the output is
    parallel-transported from the origin (see :meth:`manifolds.Hyperboloid.proj_field` for why not
    the Minkowski projection: its speed grows like ``cosh r`` and mass escapes to infinity).

    Speed bound on the hyperboloid. The transported field has speed ``|f(y)|_L = |h_(1:)(y, t)|``,
    so it is bounded exactly when the MLP output is. With ``tanh`` hidden units it is, whatever the
    input: ``|h| <= ||W_out||_2 sqrt(hidden) + |b_out|``. With unbounded units (``softplus``,
    ``silu``) ``h`` grows with the input ``y``, whose size is ``cosh r``, so the speed grows
    exponentially in ``r`` and trajectories reach infinity in finite time (measured with softplus:
    speeds 3.2, 474, 2.4e7 at r = 5, 10, 20). For those the output goes through the smooth speed
    limiter ``h -> B h / sqrt(B^2 + |h|^2)`` with ``B = max_speed`` (default
    :data:`DEFAULT_MAX_SPEED`): ``|f|_L < B`` everywhere, so no trajectory travels farther than
    ``B`` in unit time, the flow is a diffeomorphism and the density integrates to 1; for
    ``|h| << B`` the limiter is the identity up to ``|h|^2 / (2 B^2)``. ``max_speed`` may also be set
    for ``tanh`` or on the sphere (which is compact and needs no bound).

    Fourier features (``fourier = K > 0``): the MLP also sees ``sin(B x)`` and ``cos(B x)`` for a fixed
    random matrix ``B`` ``(K, n+1)`` with ``N(0, fourier_scale^2)`` entries (drawn at construction from
    torch's global generator, stored as a buffer in the state dict). Sharp densities (the Earth
    catalogues) need fields that vary on scales much finer than an MLP of raw coordinates learns
    quickly; the features are smooth, so the exact divergence is unchanged in kind
    (``d sin(Bx) = cos(Bx) B dx``). On the sphere ``x`` is a unit vector, so ``fourier_scale`` is a
    frequency in cycles per radian times ``2 pi``. Default 0: none (the reference's input).

    Mixed precision: the MLP runs in its parameters' dtype; inputs of another dtype (the
    hyperboloid's float64 geometry, :meth:`manifolds.Manifold.compute_dtype`) are cast on the way in
    and the outputs cast back.

    Args:
        manifold: the manifold, for the projection and the ambient dimension.
        hidden: width of each hidden layer (the reference's ``flow_hidden_size``, default 32).
        n_hidden: number of hidden layers (default 3, as the reference).
        activation: ``"tanh"`` (reference), ``"softplus"`` or ``"silu"``; it must be smooth,
            because training differentiates the divergence.
        max_speed: the limiter's bound ``B``; ``None`` means :data:`DEFAULT_MAX_SPEED` for unbounded
            activations on the hyperboloid and no limiter otherwise.
        fourier, fourier_scale: number and scale of the random Fourier features of ``x`` (0: none).
    """

    def __init__(
        self,
        manifold,
        hidden: int = 32,
        n_hidden: int = 3,
        activation: str = "tanh",
        max_speed=None,
        fourier: int = 0,
        fourier_scale: float = 1.0,
    ):
        if int(fourier) != fourier or fourier < 0 or not (0 < fourier_scale < float("inf")):
            raise ValueError(
                f"fourier must be an integer >= 0 and fourier_scale positive, got {fourier}, {fourier_scale}"
            )
        d = manifold.ambient_dim
        # drawn before the layers' initialization, as always (seeded runs keep their initial weights)
        freqs = fourier_scale * torch.randn(int(fourier), d) if fourier else None
        # the shared MLP of [x, sin/cos(Bx), t] (:mod:`flows.mlp`; its parameters are layers.{i})
        super().__init__(d + 2 * int(fourier) + 1, d, hidden, n_hidden, activation)
        if max_speed is not None and not (0 < max_speed < float("inf")):
            raise ValueError(f"max_speed must be a positive finite number, got {max_speed!r}")
        if max_speed is None and manifold.unbounded_speed and activation not in BOUNDED_ACTIVATIONS:
            max_speed = DEFAULT_MAX_SPEED
        self.max_speed = None if max_speed is None else float(max_speed)
        self.manifold = manifold
        self.fourier = int(fourier)
        if self.fourier:
            self.register_buffer("freqs", freqs)

    def _input(self, t, x):
        """``[x, t]``; ``t`` is a scalar (one time for all points, as in an ODE solve) or one time
        per point, shape ``x.shape[:-1]`` or ``x.shape[:-1] + (1,)`` (flow-matching training)."""
        x = x.to(self.layers[0].weight.dtype)
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if tt.dim() and tt.shape == x.shape[:-1]:
            tt = tt.unsqueeze(-1)
        feats = [x]
        if self.fourier:
            bx = x @ self.freqs.T
            feats += [bx.sin(), bx.cos()]
        return torch.cat([*feats, tt.expand(*x.shape[:-1], 1)], -1)

    def _limit(self, h, dh=None):
        """The speed limiter ``B h / sqrt(B^2 + |h|^2)`` (identity without ``max_speed``) and its JVP."""
        if self.max_speed is None:
            return h, dh
        B2 = self.max_speed**2
        s2 = B2 + (h * h).sum(-1, keepdim=True)
        c = self.max_speed * torch.rsqrt(s2)
        if dh is None:
            return c * h, None
        # d(c h) = c dh - c h <h, dh> / s2
        hdh = (dh * h.unsqueeze(-2)).sum(-1, keepdim=True)
        return c * h, c.unsqueeze(-2) * (dh - h.unsqueeze(-2) * hdh / s2.unsqueeze(-2))

    def ambient(self, t, x):
        """The unprojected MLP output ``h(x, t)`` (after the limiter), shape ``(..., n+1)``."""
        return self._limit(self.net(self._input(t, x)))[0].to(x.dtype)

    def ambient_jvp(self, t, x, dirs):
        """``h(x, t)`` and its spatial JVPs ``Dh(x)[d_k]`` for directions ``dirs`` ``(..., k, n+1)``.

        Forward-mode differentiation written out for the MLP (``dz' = W dz``, ``da = act'(z) dz``):
        ``k`` directions cost ``k`` small matrix products, with no autograd graph of its own.
        Returns ``(h, dh)`` with shapes ``(..., n+1)`` and ``(..., k, n+1)``.
        """
        a = self._input(t, x)
        first = self.layers[0]
        d = x.shape[-1]
        dirs = dirs.to(a.dtype)
        da = nn.functional.linear(dirs, first.weight[:, :d])  # time is not perturbed
        if self.fourier:  # d sin(Bx) = cos(Bx) B dx, d cos(Bx) = -sin(Bx) B dx
            K = self.fourier
            bd = dirs @ self.freqs.T  # (..., k, K)
            s, c = a[..., d : d + K].unsqueeze(-2), a[..., d + K : d + 2 * K].unsqueeze(-2)
            da = (
                da + (c * bd) @ first.weight[:, d : d + K].T - (s * bd) @ first.weight[:, d + K : d + 2 * K].T
            )
        for i, layer in enumerate(self.layers):
            z = layer(a) if i else first(a)
            if i:
                da = nn.functional.linear(da, layer.weight)
            if i == len(self.layers) - 1:
                z, da = self._limit(z, da)
                return z.to(x.dtype), da.to(x.dtype)
            a = self.act(z)
            da = self.dact(z, a).unsqueeze(-2) * da
        raise AssertionError  # pragma: no cover

    def forward(self, t, x):
        """Tangent vectors ``(..., n+1)`` at points ``x`` of shape ``(..., n+1)``; ``t`` a scalar or
        one time per point (see :meth:`_input`)."""
        return self.manifold.proj_field(x, self.ambient(t, x))

    #: flow matching's loss evaluates a field with ``split`` (:class:`FieldAverage`: each member on its
    #: share of the batch); one field's share is the whole batch
    split = forward


class FieldAverage(nn.Module):
    """The average ``f = (1/K) sum_k f_k`` of ``K`` vector fields trained side by side (``MCNF(ensemble=K)``).

    Flow matching regresses a field onto the marginal velocity of one probability path; ``K`` fields
    trained from different initializations (and Fourier frequencies) on independent batches of the same
    path are ``K`` estimates of that one velocity, and their average is a better one where the estimates
    err independently (bagging; docs/earth_ablation.md, "Fields trained side by side"). The average is an
    ordinary vector field: its flow is one ODE, and the exact divergence is the average of the members'
    (the projection and the divergence's closed form are linear in the network's output and its JVPs).
    The cost of an evaluation is ``K`` members'.

    Members are ``members.{k}`` (each a :class:`VectorField`). :meth:`split` evaluates member ``k`` on the
    rows ``k, k + K, ...`` of a batch only: flow matching's loss, each member on its own share.
    """

    def __init__(self, members):
        super().__init__()
        if len(members) < 2:
            raise ValueError("a field average needs at least 2 members")
        self.members = nn.ModuleList(members)
        self.manifold = members[0].manifold

    def ambient(self, t, x):
        return sum(f.ambient(t, x) for f in self.members) / len(self.members)

    def ambient_jvp(self, t, x, dirs):
        out = [f.ambient_jvp(t, x, dirs) for f in self.members]
        return sum(h for h, _ in out) / len(out), sum(dh for _, dh in out) / len(out)

    def forward(self, t, x):
        return self.manifold.proj_field(x, self.ambient(t, x))

    def split(self, t, x):
        """Member ``k`` at the rows ``k::K`` of ``x`` (``t``: one time per row), in the rows' order."""
        K = len(self.members)
        out = torch.empty_like(x)
        for k, f in enumerate(self.members):
            out[k::K] = f(t[k::K], x[k::K])
        return out
