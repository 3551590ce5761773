"""Geometry only (no learning): the manifolds of Neural Manifold ODEs and their chart maps."""

from .base import Manifold
from .euclidean import Euclidean
from .hyperboloid import Hyperboloid, minkowski
from .quadrature import integrate, quadrature_grid
from .sphere import Sphere
from .torus import Torus

MANIFOLDS = {"Sphere": Sphere, "Hyperboloid": Hyperboloid, "Euclidean": Euclidean, "Torus": Torus}


def get_manifold(name: str, dim: int = 2) -> Manifold:
    """Build a manifold by name, one of :data:`MANIFOLDS`."""
    if name not in MANIFOLDS:
        raise ValueError(f"unknown manifold {name!r}; valid names: {', '.join(MANIFOLDS)}")
    return MANIFOLDS[name](dim=dim)


__all__ = [
    "Manifold",
    "Sphere",
    "Hyperboloid",
    "Euclidean",
    "Torus",
    "get_manifold",
    "minkowski",
    "quadrature_grid",
    "integrate",
    "MANIFOLDS",
]
