"""The time-dependent vector field ``f(t, x)`` on the manifold (a small MLP in ambient coordinates)."""

from __future__ import annotations

import torch
from torch import nn

# activation -> derivative written in terms of (pre-activation z, activation a)
_ACTIVATIONS = {
    "tanh": (torch.tanh, lambda z, a: 1 - a * a),
    "softplus": (nn.functional.softplus, lambda z, a: torch.sigmoid(z)),
    "silu": (nn.functional.silu, lambda z, a: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))),
}


class VectorField(nn.Module):
    """``f(t, x) = proj_field(x, h(x, t))``: an MLP on ``[x, t]`` projected onto ``T_x M``.

    On the sphere this is the orthogonal projection ``proju``; on the hyperboloid the output is
    parallel-transported from the origin (see :meth:`manifolds.Hyperboloid.proj_field` for why not
    the Minkowski projection: its speed grows like ``cosh r`` and mass escapes to infinity).

    Args:
        manifold: the manifold, for the projection and the ambient dimension.
        hidden: width of each hidden layer (the reference's ``flow_hidden_size``, default 32).
        n_hidden: number of hidden layers (default 3, as the reference).
        activation: ``"tanh"`` (reference), ``"softplus"`` or ``"silu"``; it must be smooth,
            because training differentiates the divergence.
    """

    def __init__(self, manifold, hidden: int = 32, n_hidden: int = 3, activation: str = "tanh"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(_ACTIVATIONS)}")
        if hidden < 1 or n_hidden < 0:
            raise ValueError("hidden must be >= 1 and n_hidden >= 0")
        self.manifold = manifold
        self.act, self.dact = _ACTIVATIONS[activation]
        d = manifold.ambient_dim
        widths = [d + 1] + [hidden] * n_hidden + [d]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def _input(self, t, x):
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], 1)
        return torch.cat([x, tt], -1)

    def ambient(self, t, x):
        """The unprojected MLP output ``h(x, t)``, shape ``(..., n+1)``."""
        z = self._input(t, x)
        for layer in self.layers[:-1]:
            z = self.act(layer(z))
        return self.layers[-1](z)

    def ambient_jvp(self, t, x, dirs):
        """``h(x, t)`` and its spatial JVPs ``Dh(x)[d_k]`` for directions ``dirs`` ``(..., k, n+1)``.

        Forward-mode differentiation written out for the MLP (``dz' = W dz``, ``da = act'(z) dz``):
        ``k`` directions cost ``k`` small matrix products, with no autograd graph of its own.
        Returns ``(h, dh)`` with shapes ``(..., n+1)`` and ``(..., k, n+1)``.
        """
        a = self._input(t, x)
        first = self.layers[0]
        da = dirs @ first.weight[:, : x.shape[-1]].T  # time is not perturbed
        for i, layer in enumerate(self.layers):
            z = layer(a) if i else first(a)
            if i:
                da = da @ layer.weight.T
            if i == len(self.layers) - 1:
                return z, da
            a = self.act(z)
            da = self.dact(z, a).unsqueeze(-2) * da
        raise AssertionError  # pragma: no cover

    def forward(self, t, x):
        """Tangent vectors ``(..., n+1)`` at points ``x`` of shape ``(..., n+1)``; ``t`` a scalar."""
        return self.manifold.proj_field(x, self.ambient(t, x))
