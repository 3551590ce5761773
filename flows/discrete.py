"""What the discrete baselines share: a conditioner MLP whose last layer starts at zero, the soft clamp
of their log-scales, and :class:`DiscreteFlow`, the interface built on their two closed-form maps."""

from __future__ import annotations

import torch

from manifolds import get_manifold

from .flow import Flow
from .mlp import ACTIVATIONS, MLP

#: Log-scales (RealNVP's ``s``, NCP's ``log alpha``, the interval map's ``log a``) are soft-clamped
#: to ``(-SCALE_BOUND, SCALE_BOUND)`` with ``B tanh(s / B)``: one layer changes a density by at most
#: ``e^4`` per direction, which keeps training at the paper's learning rate (1e-2) finite.
SCALE_BOUND = 4.0


def soft_clamp(s):
    return SCALE_BOUND * torch.tanh(s / SCALE_BOUND)


def conditioner(n_in: int, n_out: int, hidden: int, n_hidden: int, activation: str) -> MLP:
    """The shared :class:`flows.mlp.MLP` ``n_in -> hidden (x n_hidden) -> n_out`` with its last layer at
    zero (an identity coupling)."""
    return MLP(n_in, n_out, hidden, n_hidden, activation, zero_last=True)


class DiscreteFlow(Flow):
    """What the three baselines share: the public interface, built on ``_to_base`` / ``_to_data``.

    Subclasses implement ``_to_base(x) -> (z, delta)`` (data to base, ``log p(x) = log p_base(z) +
    delta``) and ``_to_data(z, with_delta) -> (x, delta)`` with the same meaning of ``delta`` for the
    returned ``x``, and ``base(dtype, device)``; the public interface is :class:`flows.Flow`'s.
    """

    kind = "?"

    def __init__(self, manifold, dim, hidden, n_hidden, activation, blocks, **extra):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if int(blocks) != blocks or blocks < 1:
            raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
        self.manifold = get_manifold(manifold, dim) if isinstance(manifold, str) else manifold
        self.config = dict(model=self.kind, manifold=self.manifold.name, dim=self.manifold.dim, hidden=hidden,
                           n_hidden=n_hidden, activation=activation, blocks=int(blocks), **extra)  # fmt: skip
