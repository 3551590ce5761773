"""A run's resolved configuration: frozen, typed groups built once from the command line.

The command line fills one namespace, then ``train.config`` resolves it (the objective's presets, the
solver presets, the limits; explicit flags win). :func:`resolve` reads that namespace once into four frozen
groups, the ones the trainer builds from: the model (:class:`ModelSettings`), its solver
(:class:`SolverSettings`), the optimization (:class:`OptimSettings`) and the run
(:class:`RunSettings`). Nothing changes them afterwards. The one value that does change during training,
the fixed training step that the solver guard refines, lives in the model
(``MCNF.train_solver.step_size``, saved in its configuration); ``SolverSettings.step_size`` is the step the
run started from.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ModelSettings:
    kind: str  # "mcnf" or a baseline (flows.BASELINES)
    manifold: str
    dim: int
    hidden: int
    n_hidden: int
    activation: str
    charts: int | str | None
    chart_center: str | None
    conc: float
    divergence: str | None
    max_speed: float | None
    fourier: int
    fourier_scale: float
    ensemble: int
    kinetic: float
    jacobian: float
    blocks: int
    components: int
    base: str
    base_n: int | None
    base_kappas: tuple | None


@dataclass(frozen=True)
class SolverSettings:
    method: str | None
    step_size: float | None  # the starting step (the guard refines the model's own)
    atol: float | None
    rtol: float | None
    adjoint: bool | None
    eval_tol: float
    guard_tol: float  # the solver guard's tolerance in nats (0: off)
    guard_freq: int
    compile: str


@dataclass(frozen=True)
class OptimSettings:
    objective: str
    optimizer: str
    lr: float
    weight_decay: float
    lr_schedule: str
    num_drops: int
    warmup: int
    ema: float
    max_grad_norm: float | None
    batch_size: int
    epochs: int
    amp: str
    coupling: str
    target_kappa: float


@dataclass(frozen=True)
class RunSettings:
    dataset: str
    split_seed: int
    data_dir: str | None
    dev: str
    dtype: str
    seed: int
    eval_freq: int
    test_size: int
    save: bool
    contsave: bool
    save_freq: int
    samples: int
    res: int
    out: str | None  # the output folder (chosen before the settings are read)
    resume: str | None  # the checkpoint this run continues
    stop_after: int | None  # this invocation's epochs (then a resumable checkpoint)
    quiet: bool
    stack: str  # "on": the best flow stacked with KDEs of the training split at the end (train/stacking.py)


@dataclass(frozen=True)
class Settings:
    model: ModelSettings
    solver: SolverSettings
    optim: OptimSettings
    run: RunSettings


# where a group's field comes from in the namespace, when the flag's name differs from the field's
_RENAMED = {
    ModelSettings: dict(kind="model", manifold="M", hidden="flow_hidden_size"),
    SolverSettings: dict(method="solver", guard_tol="solver_guard"),
}
_DEFAULTS = dict(kind="mcnf", ensemble=1, blocks=8, components=8, base="default", base_n=None, base_kappas=None,
                 amp="off", coupling="independent", target_kappa=0.0, compile="off", guard_freq=100, out=None, resume=None,
                 stop_after=None, quiet=False, stack="off")  # fmt: skip


def _group(cls, args):
    names = _RENAMED.get(cls, {})
    values = {}
    for f in fields(cls):
        key = names.get(f.name, f.name)
        v = getattr(args, key, _DEFAULTS.get(f.name))
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def resolve(args) -> Settings:
    """The frozen settings of a run from its resolved namespace (after ``train.config``'s fill functions)."""
    return Settings(
        *(_group(cls, args) for cls in (ModelSettings, SolverSettings, OptimSettings, RunSettings))
    )
