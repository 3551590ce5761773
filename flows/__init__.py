"""Manifold continuous normalizing flows: vector field, divergence, multi-chart integration."""

from .divergence import DIVERGENCES
from .evaluation import (
    FIGURE_SOLVER,
    evaluate,
    figure_model,
    metrics_from_log_probs,
    model_integral,
    model_log_prob,
)
from .mcnf import MCNF, ChartDynamics, SolverError, SolverSettings, load_model
from .vector_field import VectorField

__all__ = [
    "MCNF",
    "ChartDynamics",
    "SolverError",
    "SolverSettings",
    "VectorField",
    "load_model",
    "DIVERGENCES",
    "evaluate",
    "metrics_from_log_probs",
    "figure_model",
    "FIGURE_SOLVER",
    "model_integral",
    "model_log_prob",
]
