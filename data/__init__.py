"""Distributions and datasets on manifolds (no training)."""

from .densities import DATASETS, Density, get_density
from .distributions import Mixture, UniformSphere, VonMisesFisher, WrappedNormal, vmf_log_normalizer

__all__ = [
    "get_density",
    "Density",
    "DATASETS",
    "WrappedNormal",
    "VonMisesFisher",
    "UniformSphere",
    "Mixture",
    "vmf_log_normalizer",
]
