"""Compatibility name: the distributions live in :mod:`manifolds.distributions`.

They moved there so that the model (``flows``) and the datasets (``data``) share them without
``flows`` importing ``data``. Old imports such as ``from data.distributions import WrappedNormal``
keep working.
"""

from manifolds.distributions import (  # noqa: F401
    AdaptiveVonMisesFisherKDE,
    Mixture,
    StandardNormal,
    UniformSphere,
    VonMisesFisher,
    VonMisesFisherKDE,
    WrappedNormal,
    vmf_log_normalizer,
    vmf_mean_resultant_length,
)
