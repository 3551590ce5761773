"""What a run trains: the model, its optimizer and schedule, the loss modules, and the EMA."""

from __future__ import annotations

import copy
import math

import torch

from utils import UserError

from .settings import ModelSettings, OptimSettings, SolverSettings


def build_model(m: ModelSettings, s: SolverSettings):
    """The model a run trains, from its frozen settings (:mod:`train.settings`); a bad combination is a
    :class:`UserError`."""
    from flows import BASELINES, MCNF

    if m.kind != "mcnf":
        try:
            extra = dict(components=m.components) if m.kind == "ncp" else {}
            return BASELINES[m.kind](m.manifold, dim=m.dim, hidden=m.hidden, n_hidden=m.n_hidden,
                                     activation=m.activation, blocks=m.blocks, **extra)  # fmt: skip
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        return MCNF(
            m.manifold, dim=m.dim, hidden=m.hidden, n_hidden=m.n_hidden, charts=m.charts,
            activation=m.activation, max_speed=m.max_speed, fourier=m.fourier,
            fourier_scale=m.fourier_scale, ensemble=m.ensemble, kinetic=m.kinetic, jacobian=m.jacobian,
            chart_center=m.chart_center, conc=m.conc, divergence=m.divergence,
            train_solver=dict(method=s.method, atol=s.atol, rtol=s.rtol, step_size=s.step_size, adjoint=s.adjoint),
            eval_solver=dict(method="dopri5", atol=s.eval_tol, rtol=s.eval_tol),
            **(dict(base="kde", base_n=m.base_n, base_kappas=list(m.base_kappas)) if m.base == "kde" else {}),
        )  # fmt: skip
    except ValueError as e:
        raise UserError(str(e)) from None


def make_scheduler(opt, o: OptimSettings):
    """The learning-rate schedule of :class:`OptimSettings` ``o`` (see :func:`schedule`)."""
    return schedule(opt, o.epochs, o.num_drops, o.lr_schedule, o.warmup)


def schedule(opt, epochs, num_drops, kind="drops", warmup=0):
    """``drops``: x0.1 at ``num_drops`` evenly spaced milestones (the reference); ``cosine``: linear
    warm-up over ``warmup`` epochs, then cosine decay to 0 at ``epochs``."""
    if kind == "cosine":

        def factor(step):  # a plain function: the schedule follows --epochs of a resumed run
            if step < warmup:
                return (step + 1) / warmup
            frac = (step - warmup) / max(epochs - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    milestones = [round(epochs * (i + 1) / (num_drops + 1)) for i in range(num_drops)]
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)


def make_optimizer(o: OptimSettings, params):
    kind = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=o.lr, weight_decay=o.weight_decay)


class MeanNLL(torch.nn.Module):
    """``-mean log p(x)`` (plus the mean of ``--kinetic``/``--jacobian``'s regularization when set): the
    training loss, as a module so that DistributedDataParallel wraps it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        lp, reg = self.model.log_prob_and_regularization(x)
        return -lp.mean() if reg is None else -lp.mean() + reg.mean()


class FlowMatching(torch.nn.Module):
    """The flow-matching loss :func:`flows.matching.flow_matching_loss` of a batch ``(x, z, t)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, z, t):
        from flows.matching import flow_matching_loss

        return flow_matching_loss(self.model, x, z, t)


class EMA:
    """Bias-corrected exponential moving average of a model's parameters.

    After ``t`` steps the EMA is ``sum_k (1 - d) d^(t-k) p_k / (1 - d^t)``: the plain average started
    at zero, divided by the weight it has gathered (Adam's bias correction; Kingma & Ba 2015). So the
    initial weights, which the uncorrected average keeps at weight ``d^t`` (61% after 500 steps at
    ``d = 0.999``), get none, and a short run is scored on weights it has trained. As an update:
    ``e <- b e + (1 - b) p`` with ``b = d (1 - d^(t-1)) / (1 - d^t)`` (``b = 0`` at the first step,
    ``b -> d`` as ``t`` grows). ``steps`` is saved in checkpoints; an older checkpoint without it
    resumes the uncorrected average (``b = d``).
    """

    def __init__(self, model, decay, steps: int = 0):
        self.decay, self.steps = decay, int(steps)
        self.model = copy.deepcopy(model).requires_grad_(False)

    def beta(self) -> float:
        """The weight of the old average in the update of step ``steps`` (after the increment)."""
        d, t = self.decay, self.steps
        return d * (1 - d ** (t - 1)) / (1 - d**t)

    @torch.no_grad()
    def update(self, model):
        self.steps += 1
        ema = list(self.model.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - self.beta())
