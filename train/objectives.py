"""Training objectives behind one small interface: code outside this module never compares their names.

An objective says how a training step draws its batch and computes its loss, which flags and presets
belong to it, and what that implies elsewhere (whether training solves the ODE, which the solver guard,
compilation, the memory estimate and the figures' solver depend on). Adding one is a class here and a
line in :data:`OBJECTIVES` (plus its presets in :data:`train.config.OBJECTIVE_PRESETS`).
"""

from __future__ import annotations

import torch

from manifolds.distributions import vmf_s2_around

from .build import FlowMatching, MeanNLL


class Objective:
    #: ``--objective`` name
    name = "?"
    #: the training loss's name in the log, and on the training curve
    loss_name = "loss"
    curve_label = "loss (batch)"
    #: whether a training step solves the ODE (maximum likelihood) or regresses the field (flow matching)
    solves_ode = True
    #: flags that only mean something for an objective that solves the ODE in training
    why_no_solver = ""

    def loss(self, model) -> torch.nn.Module:
        raise NotImplementedError

    def epoch_batches(
        self, task, model, batch_size, generator, dtype, paired=False, smooth=0.0
    ) -> list[tuple]:
        """One epoch's batches, each a tuple of the loss module's arguments."""
        raise NotImplementedError


class MaximumLikelihood(Objective):
    """The paper's objective: the exact negative log-likelihood through the ODE solve."""

    name, loss_name, curve_label, solves_ode = "mle", "train NLL", "training NLL (batch)", True

    def loss(self, model):
        return MeanNLL(model)

    def epoch_batches(self, task, model, batch_size, generator, dtype, paired=False, smooth=0.0):
        """A fresh batch of the true density (the reference), or one pass over an Earth training split."""
        return [(x,) for x in task.train_batches(batch_size, generator, dtype)]


class RiemannianFlowMatching(Objective):
    """Regression of the field onto geodesic conditional velocities (:mod:`flows.matching`); no solve."""

    name, loss_name, curve_label, solves_ode = "fm", "train FM loss", "flow-matching loss (batch)", False
    why_no_solver = "flow matching solves no ODE in training; evaluation uses dopri5 at --eval_tol"

    def loss(self, model):
        return FlowMatching(model)

    def epoch_batches(self, task, model, batch_size, generator, dtype, paired=False, smooth=0.0):
        """One batch of data (drawn with replacement from a finite split), base points and times.

        ``paired`` (``--coupling paired``, with the KDE base): each base point is a kernel draw at its own
        data point, so the conditional paths are short; the base marginal is still the KDE exactly,
        because the data are drawn uniformly from the KDE's centres (the training split). A field average
        (``--ensemble K``) draws ``K`` batches at once, one per member (:func:`flows.flow_matching_loss`).

        ``smooth`` ``kappa > 0`` (``--target_kappa``, S^2): each data point is replaced by a vMF draw of
        concentration ``kappa`` around it, so that the field is regressed onto the training split smoothed by
        that kernel (a kernel density estimate) instead of onto the events themselves, which a flexible field
        learns to memorize. The base points are drawn first, at the events (the paired base marginal stays the
        KDE exactly); the jitter is drawn last, so the other draws are those of an unsmoothed run."""
        x = task.random_batch(batch_size * model.config.get("ensemble", 1), generator, dtype)
        if paired:
            z = model.base().sample_around(x.double(), generator)
        else:
            z = model.sample_base(len(x), generator, torch.float64, torch.device("cpu"))
        t = torch.rand(len(x), generator=generator, dtype=torch.float64)
        if smooth:
            kappa = torch.full((len(x),), float(smooth), dtype=torch.float64)
            x = vmf_s2_around(x.double(), kappa, generator).to(x.dtype)
        return [(x, z, t)]


OBJECTIVES = {o.name: o for o in (MaximumLikelihood(), RiemannianFlowMatching())}


def accurate_figures(objective: str | None) -> bool:
    """The figure-precision rule, in one place: a model that was not trained through a fixed-step solve
    (flow matching) is drawn with its accurate evaluation solver in float64 (:func:`flows.figure_model`);
    a maximum-likelihood model with its training step, in float32. ``objective``: the run's objective
    (``None``, as saved by runs that predate the flag: maximum likelihood)."""
    return not get_objective(objective).solves_ode


def get_objective(name) -> Objective:
    """The objective called ``name`` (``None``, as in runs that predate the flag: maximum likelihood)."""
    if name is None:
        name = "mle"
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
