"""Euclidean space ``R^n``: the flat case, where the MCNF must reduce to an ordinary CNF."""

from __future__ import annotations

import torch

from .base import Manifold


class Euclidean(Manifold):
    """``R^n`` with the standard metric; points have shape ``(..., n)`` (no extra ambient axis)."""

    name = "Euclidean"
    symbol = "R"

    @property
    def ambient_dim(self) -> int:
        return self.dim

    def inner(self, x, u, v, keepdim: bool = False):
        return (u * v).sum(-1, keepdim=keepdim)

    def proju(self, x, u):
        return u

    def projx(self, x):
        return x

    def expmap(self, x, u):
        return x + u

    def logmap(self, x, y):
        return y - x

    def geodesic(self, x, u, t):
        return x + t * u, u.expand_as(x + t * u)

    def transp(self, x, y, u):
        return u.expand(torch.broadcast_shapes(x.shape, y.shape, u.shape)).clone()

    def logdetexp(self, x, u):
        return torch.zeros_like(u[..., 0])

    def chart_coefficients(self, x, v, basis):
        return {"u": v, "y": x + v}

    def chart_velocity(self, x, v, w, basis, coef=None):
        return w

    def proj_field_jvp(self, y, h, dy, dh):
        return dh

    def grad_logdetexp(self, x, v, coef=None):
        return torch.zeros_like(v)

    def origin(self, *size, dtype=None, device=None):
        return torch.zeros(*size, self.dim, dtype=dtype, device=device)

    def tangent_basis(self, x):
        e = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return e.expand(*x.shape[:-1], self.dim, self.dim)

    def random(self, *size, generator=None, dtype=None, device=None):
        return torch.randn(*size, self.dim, generator=generator, dtype=dtype, device=device)
