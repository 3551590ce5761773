"""Manifold continuous normalizing flows: vector field, divergence, multi-chart integration."""

from .baselines import BASELINE_MANIFOLD, BASELINES, NCP, PRNVP, WHC, DiscreteFlow
from .checkpoint import CheckpointError, read_checkpoint
from .divergence import DIVERGENCES
from .dynamics import ChartDynamics
from .evaluation import (
    FIGURE_SOLVER,
    ISEstimate,
    calibrated_map_model,
    defensive_proposal,
    evaluate,
    figure_model,
    importance_integral,
    metrics_from_log_probs,
    model_integral,
    model_integral_is,
    model_log_prob,
    solve_copy,
    solver_gap,
)
from .flow import Flow
from .loading import load_model, model_from_checkpoint
from .matching import conditional_path, flow_matching_loss
from .mcnf import MCNF
from .pointwise import pointwise_log_prob
from .solver import SolverError, SolverSettings
from .vector_field import FieldAverage, VectorField

#: ``main_density.py --model`` names: the MCNF and the paper's baselines (:mod:`flows.baselines`).
MODELS = ("mcnf", *BASELINES)

__all__ = [
    "Flow",
    "MCNF",
    "WHC",
    "PRNVP",
    "NCP",
    "DiscreteFlow",
    "BASELINES",
    "BASELINE_MANIFOLD",
    "MODELS",
    "ChartDynamics",
    "SolverError",
    "SolverSettings",
    "FieldAverage",
    "VectorField",
    "load_model",
    "model_from_checkpoint",
    "read_checkpoint",
    "CheckpointError",
    "DIVERGENCES",
    "evaluate",
    "metrics_from_log_probs",
    "figure_model",
    "FIGURE_SOLVER",
    "model_integral",
    "importance_integral",
    "ISEstimate",
    "defensive_proposal",
    "model_integral_is",
    "model_log_prob",
    "pointwise_log_prob",
    "solve_copy",
    "calibrated_map_model",
    "solver_gap",
    "conditional_path",
    "flow_matching_loss",
]
