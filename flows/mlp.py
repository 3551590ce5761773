"""The one MLP of every model: the MCNF's vector field and the baselines' conditioners.

``MLP(n_in, n_out, hidden, n_hidden, activation)``: ``n_hidden`` hidden layers of width ``hidden`` with a
smooth activation, then a linear output layer; its parameters are ``layers.{i}.weight/bias``. The
activations carry their derivative written in terms of (pre-activation, activation), which the vector
field's forward-mode JVP uses (:meth:`flows.VectorField.ambient_jvp`). ``zero_last`` starts the output
layer at zero (a baseline's coupling then starts at the identity).
"""

from __future__ import annotations

import torch
from torch import nn

#: activation -> (function, derivative in terms of the pre-activation z and the activation a)
ACTIVATIONS = {
    "tanh": (torch.tanh, lambda z, a: 1 - a * a),
    "softplus": (nn.functional.softplus, lambda z, a: torch.sigmoid(z)),
    "silu": (nn.functional.silu, lambda z, a: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))),
}


class MLP(nn.Module):
    def __init__(self, n_in: int, n_out: int, hidden: int, n_hidden: int, activation: str = "tanh",
                 zero_last: bool = False):  # fmt: skip
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if hidden < 1 or n_hidden < 0:
            raise ValueError("hidden must be >= 1 and n_hidden >= 0")
        self.activation = activation
        self.act, self.dact = ACTIVATIONS[activation]
        widths = [n_in] + [hidden] * n_hidden + [n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        if zero_last:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def net(self, z):
        """The network's output for inputs ``z`` ``(..., n_in)``."""
        for layer in self.layers[:-1]:
            z = self.act(layer(z))
        return self.layers[-1](z)

    forward = net

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before this module held the conditioners as nn.Sequential(Linear, act,
        # Linear, ...): Linear i was entry 2 i. Rename those keys; the numbers are the same.
        for i in range(len(self.layers)):
            for p in ("weight", "bias"):
                old, new = f"{prefix}{2 * i}.{p}", f"{prefix}layers.{i}.{p}"
                if old in state_dict and new not in state_dict:
                    state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
