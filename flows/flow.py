"""The interface every model shares, implemented once: a flow is its two maps plus a base distribution.

A subclass supplies

- ``_to_base(x) -> (z, delta)``: data to base points, with ``log p(x) = log p_base(z) + delta``;
- ``_to_data(z, with_delta) -> (x, delta)``: base points to data, ``delta`` with the same meaning for
  the returned ``x`` (any value when ``with_delta`` is False);
- ``base(dtype, device)``: the base distribution (``sample``/``log_prob``), and ``config``: the
  plain-data arguments that rebuild it (:func:`flows.load_model`);

and may refine ``_cast`` (the points in the compute dtype) and ``check_input`` (points of the manifold
where the flow is not defined). The public methods validate their input
(:meth:`manifolds.Manifold.check_point`: ``ValueError`` for what cannot be scored), give empty results
for an empty batch, and return the input's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from manifolds.distributions import draw


class Flow(nn.Module):
    """Base class of :class:`flows.MCNF` and the discrete baselines (:class:`flows.DiscreteFlow`)."""

    #: No training regularizer unless the model sets one (``train.build.MeanNLL`` reads and clears it).
    regularization = None

    def compute_dtype(self, x):
        return self.manifold.compute_dtype(x)

    def _cast(self, x):
        return x.to(self.compute_dtype(x))

    def check_input(self, x):
        """Refuse (``ValueError``) points of the manifold where this flow is not defined (none here)."""

    def _check(self, x, what="x"):
        self.manifold.check_point(x, what)
        if len(x):
            self.check_input(x)

    def forward(self, x):
        """``(z, delta_logp)``: base points of data ``x`` ``(B, n+1)`` and ``log p(x) - log p_base(z)``."""
        self._check(x)
        if len(x) == 0:
            return x.clone(), x.new_zeros(0)
        z, delta = self._to_base(self._cast(x))
        return z.to(x.dtype), delta.to(x.dtype)

    def log_prob(self, x):
        """Model log-density ``(B,)`` in nats w.r.t. the Riemannian volume (the base density is evaluated
        in the compute dtype before the cast back to ``x``'s dtype)."""
        self._check(x)
        if len(x) == 0:
            return x.new_zeros(0)
        z, delta = self._to_base(self._cast(x))
        return (self.base(z.dtype, z.device).log_prob(z) + delta).to(x.dtype)

    def log_prob_and_regularization(self, x):
        """``(log p(x), R)`` with ``R`` the per-point regularization a model adds to its training loss, or
        ``None`` (the discrete flows have none; the MCNF's kinetic and Jacobian terms)."""
        return self.log_prob(x), None

    def inverse(self, z, return_delta: bool = False):
        """Base points to data; with ``return_delta`` also ``delta`` (``log p(x) = log p_base(z) + delta``)."""
        self._check(z, "z")
        if len(z) == 0:
            return (z.clone(), z.new_zeros(0)) if return_delta else z.clone()
        x, delta = self._to_data(self._cast(z), return_delta)
        return (x.to(z.dtype), delta.to(z.dtype)) if return_delta else x.to(z.dtype)

    @torch.no_grad()
    def sample_base(self, n: int, generator=None, dtype=None, device=None):
        """``n`` samples ``(n, n+1)`` of the base distribution (default: the parameters' dtype/device)."""
        p = next(self.parameters())
        dtype, device = dtype or p.dtype, device or p.device
        return draw(self.base(dtype, device), n, generator, dtype, device)

    @torch.no_grad()
    def sample(self, n: int, generator=None, return_log_prob: bool = False):
        """``n`` samples ``(n, n+1)`` of the model (base samples mapped to data), with their log-density."""
        p = next(self.parameters())
        z = self.sample_base(n, generator, p.dtype, p.device)
        if not return_log_prob:
            return self.inverse(z)
        x, delta = self.inverse(z, return_delta=True)
        return x, self.base(z.dtype, z.device).log_prob(z) + delta

    def save(self, path, **extra):
        """Write ``{"model_config", "model"}`` (plus ``extra``) to ``path`` with ``torch.save``."""
        torch.save({"model_config": self.config, "model": self.state_dict(), **extra}, path)
