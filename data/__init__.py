"""Distributions and datasets on manifolds (no training)."""

from .densities import DATASETS, Density, get_density
from .distributions import (
    AdaptiveVonMisesFisherKDE,
    Mixture,
    StandardNormal,
    UniformSphere,
    VonMisesFisher,
    VonMisesFisherKDE,
    WrappedNormal,
    vmf_log_normalizer,
)

__all__ = [
    "get_density",
    "Density",
    "DATASETS",
    "WrappedNormal",
    "VonMisesFisher",
    "VonMisesFisherKDE",
    "AdaptiveVonMisesFisherKDE",
    "UniformSphere",
    "Mixture",
    "StandardNormal",
    "vmf_log_normalizer",
]
