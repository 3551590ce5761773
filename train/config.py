"""Run configuration: the named solver presets, what may change on resume, and size limits.

``REFERENCE_SETTINGS`` is the published code's own configuration per manifold, ``DEFAULT_SETTINGS``
this project's measured default; ``main_density.py --reference_settings`` selects the first.
Scripts and benchmarks import the presets from here (never from ``main_density.py``).
"""

from __future__ import annotations

from manifolds import MANIFOLDS

from .objectives import get_objective

# Per manifold: (the reference's own configuration, this project's default)
REFERENCE_SETTINGS = {
    "Sphere": dict(charts=4, solver="rk4", step_size=1 / 16, adjoint=True, divergence="exact_autograd",
                   chart_center="point", atol=1e-5, rtol=1e-5),
    "Hyperboloid": dict(charts=1, solver="dopri5", step_size=None, adjoint=True, divergence="exact_autograd",
                        chart_center="origin", atol=1e-3, rtol=1e-3),
}  # fmt: skip
DEFAULT_SETTINGS = {
    "Sphere": dict(charts=3, solver="rk4", step_size=1 / 3, adjoint=False, divergence="exact",
                   chart_center="point", atol=1e-5, rtol=1e-5),
    "Hyperboloid": dict(charts=1, solver="rk4", step_size=1 / 4, adjoint=False, divergence="exact",
                        chart_center="point", atol=1e-5, rtol=1e-5),
}  # fmt: skip
#: A manifold without a line above (the flat torus): one chart (its exponential chart has no singularity,
#: ``manifolds.Manifold.chart_guard_radius``), rk4 at step 1/4 (the solver guard refines it if needed).
GENERIC_SETTINGS = dict(charts=1, solver="rk4", step_size=1 / 4, adjoint=False, divergence="exact",
                        chart_center="point", atol=1e-5, rtol=1e-5)  # fmt: skip
#: ``--solver_guard`` of maximum-likelihood runs with a fixed-step solver (0 with --reference_settings,
#: which reproduce the published configuration as it is): the tolerance, in nats, on the gap between
#: the training solver's and the accurate solve's mean NLL of 1000 fixed training points.
#: 0.005: at the paper's budget on H^2 5gaussians (python main_density.py --M Hyperboloid --dataset
#: 5gaussians --lr 1e-2 --dev cpu --eval_freq 1000 --epochs 5000 --solver_guard TOL), 0.02 let the
#: step-1/8 model drift into gaps it then had to refine away (step 1/16, KL 0.0054, 494 s, final
#: training-solver KL -0.0016 +- 0.0007); 0.01 refined once, at epoch 300 (KL 0.0038, 178 s,
#: training-solver KL -0.0021 +- 0.0006); 0.005 refined once, at epoch 200 (KL 0.0034, 181 s,
#: training-solver KL +0.0005 +- 0.0005, the only one within the drift criterion).
DEFAULT_SOLVER_GUARD = 0.005
# Why these defaults (measured on 4wrapped / 5gaussians, lr 1e-2, exact test KL): coarser fixed steps
# train faster per step but, over long runs, the model learns to exploit the solver's error in the
# log-determinant: its training NLL falls below the true entropy while the exact test KL grows
# (hyperboloid rk4 step 1/4: KL 0.04 at epoch 400, 0.63 at 2000; sphere 2 charts x step 1/2: KL 4.2
# at 1000). rk4 with 4 steps per unit time on the sphere and 8 on the hyperboloid did not (KL 0.009
# and 0.012 at 1000 epochs). Since the solver guard (DEFAULT_SOLVER_GUARD) watches for exactly that
# and halves the step when it happens, the hyperboloid starts from 4 steps (2000 epochs of 5gaussians:
# unguarded step 1/4 KL 0.728; guarded, refined to 1/8 at epoch 500, KL 0.0067 in 181 s; step 1/8
# throughout KL 0.0045 in 221 s; README, "Solver guard"). The reference's adaptive dopri5 at atol = rtol = 1e-3 (with direct
# backprop and the closed-form divergence) needs 14 evaluations per step at initialization against
# rk4's 32 (0.029 vs 0.058 s per step, one thread) and reached KL 0.0049 on 5gaussians at 5000 epochs,
# but on mult_wrapped at lr 1e-2 a step produced a non-finite state at epoch 186, so it is not the
# default.
# The sphere takes one rk4 step per chart: 3 charts x step 1/3 (12 evaluations per training step) since 2026-12-03,
# 4 x 1/4 (16) before. At 5000 epochs (python main_density.py --M Sphere --dataset D --lr 1e-2 --dev cpu --eval_freq
# 1000 --epochs 5000, docs/reproduction.md): 4wrapped KL 0.0012 +- 0.0003 against 0.0018 +- 0.0004, bigcheckerboard
# 0.0784 +- 0.0020 against 0.0827 +- 0.0020, the guard refining to 1/6 at epochs 600 and 800 (4 charts: to 1/8 at 3100
# and 1300). At the README demo's 300 epochs: KL 0.0067 +- 0.0008 against 0.0068 +- 0.0008, unrefined, 12.3 s of
# training against 16.9 s. Lost: 2 charts x step 1/2 (refined at epoch 100) and, on the hyperboloid, step 1/3
# (refined to 1/6 at epoch 100).
# Training-objective presets: what an unspecified flag means for each objective (explicit flags win).
# mle keeps the reference's defaults (argparse's), adding only the values of the new flags.
MLE_SETTINGS = dict(
    optimizer="adam", lr_schedule="drops", warmup=0, ema=0.0, conc=1.0, fourier=0, fourier_scale=1.0
)
#: ``--budget`` of flow matching on Earth data: the default, 60,000 steps (issue #26: at most 10 minutes of
#: training per split on one thread; volcano and fire split 0 took 501 and 535 s with another training on
#: the second core), and three times its steps (at most 45 minutes).
BUDGETS = {"default": dict(epochs=60_000, eval_freq=6_000), "long": dict(epochs=180_000, eval_freq=18_000)}
# fm: measured on the Earth data and the paper densities (docs/earth_fm.md, docs/reproduction_fm.md).
# Earth: volcano split 0, 30,000 steps, one thread (test NLL, best validation): 256x4 silu MLP of raw
# coordinates -2.20 (330 s); with 64 random Fourier features of scale 10: -3.49 (337 s); scale 30:
# -4.02 (467 s, two runs sharing the CPU); 128 features of scale 60 trailed scale 30 at every
# evaluation (validation -2.91 vs -3.61 at step 12,000) and was stopped. lr 5e-3 instead of 2e-3
# changed the validation NLL by < 0.01 up to step 12,000.
# The base and the features (docs/earth_ablation.md, "A broad KDE base"; validation NLL of split 0, 30,000
# steps): fire, uniform base and 64 features -1.002; a KDE base of broad kernels with the paired coupling
# wins, the broader the better (concentrations 400-6400: -1.036, 100-400: -1.168, 30-400: -1.208), and
# more features win on top (30-400 with 128: -1.257, with 256: -1.284; 10-400 with 128: -1.271, with 256:
# see the page); volcano, uniform -4.479 against 10-400 with 256 features (see the page). lr 5e-3 with
# the KDE base stalled at the base's level; bf16 at 60,000 steps lost to float32 at 30,000 (-1.105, -1.168).
FM_SETTINGS = {
    "earth": dict(optimizer="adamw", lr_schedule="cosine", warmup=500, ema=0.999, conc=0.0, lr=2e-3,
                  weight_decay=0.0, batch_size=512, flow_hidden_size=256, n_hidden=4, activation="silu",
                  fourier=256, fourier_scale=30.0, **BUDGETS["default"],
                  base="kde", base_kappas=[10.0, 30.0, 100.0, 400.0]),
    "Sphere": dict(optimizer="adamw", lr_schedule="cosine", warmup=200, ema=0.999, conc=1.0, lr=2e-3,
                   weight_decay=0.0, batch_size=1024, flow_hidden_size=128, n_hidden=3, activation="silu",
                   fourier=0, fourier_scale=1.0, epochs=5_000, eval_freq=1_000),
    # tanh on the hyperboloid: flow matching fits the field only where the paths go (r < ~4 for the
    # paper's densities); an unbounded activation then extrapolates into a field that is too stiff
    # to solve far out (silu, H^2 1wrapped, 300 steps: dopri5 at 1e-6 underflows its step at r = 8-10),
    # while tanh saturates into a smooth one (the same run integrates to 1.0002 over r <= 12).
    "Hyperboloid": dict(optimizer="adamw", lr_schedule="cosine", warmup=200, ema=0.999, lr=2e-3,
                        weight_decay=0.0, batch_size=1024, flow_hidden_size=128, n_hidden=3, activation="tanh",
                        fourier=0, fourier_scale=1.0, epochs=5_000, eval_freq=1_000),
}  # fmt: skip
#: Maximum likelihood on a manifold that the published code does not have (the torus): there is no
#: reference default to keep, so this project's: the README demos' learning rate and, on a compact
#: manifold, the uniform base (T^2 1wrapped, 300 epochs: lr 1e-3 KL 0.209, lr 1e-2 0.041, lr 1e-2 with
#: the uniform base 0.024; ``python main_density.py --M Torus --dataset 1wrapped --epochs 300 --dev cpu``).
NEW_MANIFOLD_MLE = dict(lr=1e-2, conc=0.0)


def _mle_presets(manifold: str) -> dict:
    if manifold in REFERENCE_SETTINGS:
        return MLE_SETTINGS
    extra = {k: v for k, v in NEW_MANIFOLD_MLE.items() if k != "conc" or MANIFOLDS[manifold].compact}
    return {**MLE_SETTINGS, **extra}


#: Per catalogue, where its validation split (split 0) asked for something else than the Earth preset
#: (docs/earth_ablation.md, "Each catalogue its own"): ``steps`` scales either budget (its steps and its
#: evaluation cadence), any other key replaces that entry of ``FM_SETTINGS["earth"]``; explicit flags win.
#: Validation NLL of split 0: volcano -6.568 at 60,000 steps (30,000: -6.270), fire -1.412 (-1.343 at
#: 36,000); flood overfits after 6,000 steps at every Fourier scale tried: 9,000 steps with scale 15 0.475
#: (30,000 with the preset's 30: 0.524); earthquake peaks at 18,000-21,000 of 30,000: scale 15 -0.235 (30: -0.203).
#: A key named after a budget holds that budget's own entries. Flood's and earthquake's long budget spend their
#: three times the steps on three fields of their default budget averaged (``--ensemble 3``: 9,000 and 30,000
#: steps), not on one field trained longer (both overfit; docs/earth_ablation.md, "Fields trained side by side"):
#: flood's validation NLL per split 0-4 0.457 / 0.492 / 0.460 / 0.450 / 0.517 against 0.467 / 0.496 / 0.478 /
#: 0.470 / 0.546 for 27,000 steps of one field; earthquake split 0 -0.281 and -0.284 (two seeds) against -0.259
#: for 90,000 steps of one field (its five splits: docs/earth_fm_kde_long.md).
EARTH_DATASETS = {
    "earthquake": dict(steps=0.5, fourier_scale=15.0, long=dict(steps=0.5 / 3, ensemble=3)),
    "flood": dict(steps=0.15, fourier_scale=15.0, long=dict(steps=0.05, ensemble=3)),
}

#: Per objective (:mod:`train.objectives`): its presets, from (Earth data?, manifold).
OBJECTIVE_PRESETS = {
    "mle": lambda earth, manifold: _mle_presets(manifold),
    # a manifold without its own line (the torus) takes the sphere's: compact, a bounded field
    "fm": lambda earth, manifold: FM_SETTINGS[
        "earth" if earth else manifold if manifold in FM_SETTINGS else "Sphere"
    ],
}
#: Flags that only mean something for maximum-likelihood training (the training ODE solve).
MLE_ONLY = (
    "solver",
    "step_size",
    "atol",
    "rtol",
    "adjoint",
    "reference_settings",
    "solver_guard",
    "kinetic",
    "jacobian",
    "guard_freq",
)

#: Flags that only mean something for the MCNF (its ODE, charts, field and base); a baseline
#: (``--model whc|prnvp|ncp``) refuses them when given explicitly.
MCNF_ONLY = (*MLE_ONLY, "charts", "chart_center", "divergence", "eval_tol", "max_speed", "fourier",
             "fourier_scale", "ensemble", "conc")  # fmt: skip
#: Flags of the baselines only.
BASELINE_ONLY = ("blocks", "components")

# flags that may change when a run is resumed; everything else comes from the checkpoint
RESUMABLE = {"epochs", "out", "dev", "quiet", "stop_after", "eval_freq", "save", "contsave", "save_freq",
             "samples", "res", "resume", "test_size", "data_dir", "overwrite", "compile", "guard_freq", "stack"}  # fmt: skip
#: ``--compile auto`` compiles the training ODE function for runs of at least this many epochs.
#: Measured on one CPU thread (docs/benchmark.md, 2026-12-03, the sphere at 3 charts x 1/3): the compilation
#: costs 20 s (sphere) / 29 s (hyperboloid) with an empty inductor cache and 3.5 / 3.0 s once the cache holds
#: it, and saves 0.022 / 0.027 s of a default training step (0.046 -> 0.024, 0.053 -> 0.026). So it pays for
#: itself after about 900 / 1100 epochs the first time on a machine, and after about 150 / 110 later.
COMPILE_MIN_EPOCHS = 1000
#: ... and for runs of at least this many once inductor's cache holds the same run's graph (a run with the
#: same key compiled before on this machine: train/compile_cache.py), with a margin over the 150 / 110.
COMPILE_MIN_EPOCHS_WARM = 200
#: (first time, warm cache) for a model whose eager ODE function is flows/fused.py's (the exact divergence on
#: the sphere or the hyperboloid, the defaults). Measured (docs/benchmark.md, 2026-12-04, one thread): a
#: default step 0.0130 / 0.0141 s eager (fused) against 0.0083 / 0.0097 s compiled (sphere / hyperboloid), the
#: compilation 13.9 / 14.2 s cold and 2.5 / 2.4 s warm: it pays after about 3000 / 3200 epochs the first time
#: on a machine and 530 / 550 later.
COMPILE_MIN_EPOCHS_FUSED = (4000, 700)
#: ... and never where that module runs its C++ kernel (flows/native.py, the CPU with a C++ compiler): there a
#: compiled step is no faster (measured 2026-12-04, one thread, 5 alternating rounds of 20 steps: sphere 9.43 ms
#: eager against 9.28 compiled, hyperboloid 12.04 against 11.65, before 14 s of compilation).
COMPILE_NATIVE = False
#: Upper bounds on sizes (beyond them a run would exhaust memory or never finish): one-line errors.
LIMITS = {
    "batch_size": 10**7,
    "test_size": 10**7,
    "samples": 10**7,
    "res": 10_000,
    "flow_hidden_size": 65_536,
    "n_hidden": 1000,
    "dim": 1000,
    "epochs": 10**9,
    "charts": 1000,  # each chart is a separate solve; the adaptive mode also stops at 1000 switches
    "blocks": 1000,
    "components": 1000,
    "fourier": 65_536,
    "save_freq": 10**9,
    "guard_freq": 10**9,
    "eval_freq": 10**9,
}
#: The finest fixed training step: finer ones exceed the solver's cap of function evaluations per solve
#: (``flows.SolverSettings.max_nfe`` = 20,000: rk4 at step 1/2048 makes 8,192).
MIN_STEP_SIZE = 1 / 2048
#: Files that mark a folder as holding a run (the ones a run writes first and reads on resume).
RUN_FILES = ("checkpoint.pt", "metrics.json", "history.jsonl")


def check_model(args):
    """``--model``: the baselines live on one manifold each, train by maximum likelihood, and take
    neither the MCNF's flags nor it theirs (UserError otherwise)."""
    from flows import BASELINE_MANIFOLD
    from utils import UserError

    kind = getattr(args, "model", "mcnf")
    if kind == "mcnf":
        bad = [k for k in BASELINE_ONLY if k in args.explicit]
        if bad:
            raise UserError(f"{', '.join('--' + k for k in bad)} set the baseline flows "
                            "(--model whc|prnvp|ncp), not the MCNF")  # fmt: skip
        return
    if args.M != BASELINE_MANIFOLD[kind]:
        other = [k for k, m in BASELINE_MANIFOLD.items() if m == args.M]
        raise UserError(f"--model {kind} is a flow on the {BASELINE_MANIFOLD[kind]}, not the {args.M}; "
                        f"on the {args.M}: --model {' or '.join(['mcnf', *other])}")  # fmt: skip
    if not get_objective(args.objective).solves_ode:
        raise UserError(f"--model {kind} trains by maximum likelihood only (--objective {args.objective} needs "
                        "the MCNF's vector field)")  # fmt: skip
    if kind != "ncp" and "components" in args.explicit:
        raise UserError("--components sets the mixtures of --model ncp")
    bad = [k for k in MCNF_ONLY if k in args.explicit]
    if bad:
        raise UserError(f"{', '.join('--' + k for k in bad)} only mean something for --model mcnf "
                        f"(--model {kind} is a discrete flow: no ODE, charts or vector field)")  # fmt: skip
    if getattr(args, "compile", "auto") == "on":
        raise UserError(f"--compile on: nothing to compile (--model {kind} solves no ODE)")


def fill_objective(args, earth: bool, resuming: bool = False):
    """Defaults of the training objective's flags (explicit flags win); bad combinations raise UserError.

    On resume the checkpoint's values stand; only flags it predates (still ``None``) are filled.
    """
    from utils import UserError

    objective = get_objective(args.objective)
    if not objective.solves_ode:
        bad = [k for k in MLE_ONLY if k in args.explicit]
        if bad:
            raise UserError(f"{', '.join('--' + k for k in bad)} only mean something for --objective mle "
                            f"({objective.why_no_solver})")  # fmt: skip
    if getattr(args, "amp", "off") != "off" and objective.solves_ode:
        raise UserError(f"--amp {args.amp} covers flow matching's training step; --objective {args.objective} "
                        "differentiates an ODE solve whose log-determinant bfloat16 would swamp")  # fmt: skip
    table = OBJECTIVE_PRESETS[objective.name](earth, args.M)
    budget = getattr(args, "budget", "default")
    own = EARTH_DATASETS.get(args.dataset, {}) if earth and not objective.solves_ode else {}
    own = {**{k: v for k, v in own.items() if k not in BUDGETS}, **own.get(budget, {})}
    table = {**table, **{k: v for k, v in own.items() if k != "steps"}}
    for k, v in table.items():
        if k not in args.explicit and (not resuming or getattr(args, k, None) is None):
            setattr(args, k, v)
    if "base" in args.explicit and "base_kappas" not in args.explicit and not resuming:
        args.base_kappas = None  # an explicit --base kde: its ladder is chosen on validation (the trainer)
    if budget != "default" and not (earth and not objective.solves_ode):
        raise UserError(f"--budget {budget} sets the steps of flow matching on Earth data (--objective fm "
                        "--dataset volcano|earthquake|flood|fire); elsewhere give --epochs")  # fmt: skip
    if earth and not objective.solves_ode and not resuming:
        scale = own.get("steps", 1.0)
        for k, v in BUDGETS[budget].items():
            if k not in args.explicit:
                setattr(args, k, round(v * scale))
    args.stack = resolve_stack(getattr(args, "stack", "auto"), earth, objective.solves_ode, budget)
    if args.lr_schedule == "cosine" and "num_drops" in args.explicit:
        raise UserError("--num_drops belongs to --lr_schedule drops, not cosine")
    if args.lr_schedule == "drops" and "warmup" in args.explicit and args.warmup:
        raise UserError("--warmup belongs to --lr_schedule cosine, not drops")
    if args.lr_schedule == "cosine" and args.warmup >= args.epochs:
        if "warmup" in args.explicit:
            raise UserError(f"--warmup {args.warmup} must be smaller than --epochs {args.epochs}")
        args.warmup = args.epochs // 10  # the preset's warm-up does not fit a short run
    if args.conc is None:  # the hyperboloid has no vMF base; the flag is the reference's and unused there
        args.conc = 1.0
    if args.conc == 0 and not MANIFOLDS[args.M].compact:
        compact = " and ".join(k for k, c in MANIFOLDS.items() if c.compact)
        raise UserError(
            f"--conc 0 (a uniform base) exists only on compact manifolds ({compact}), not the {args.M}"
        )
    if getattr(args, "base", "default") == "kde" and getattr(args, "model", "mcnf") != "mcnf":
        raise UserError(f"--base kde is the MCNF's base; --model {args.model} has its own")
    if "base_kappas" in args.explicit and getattr(args, "base", "default") != "kde":
        raise UserError("--kde_kappas gives the concentrations of --base kde; add --base kde")
    if getattr(args, "coupling", None) is None:
        paired = getattr(args, "base", "default") == "kde" and not objective.solves_ode
        args.coupling = "paired" if paired else "independent"
    elif "coupling" in args.explicit and objective.solves_ode:
        raise UserError(
            f"--coupling pairs flow matching's data and base points, not --objective {args.objective}'s"
        )
    if getattr(args, "target_kappa", 0) and objective.solves_ode:
        raise UserError(
            f"--target_kappa smooths flow matching's regression targets, not --objective {args.objective}'s"
        )
    if getattr(args, "target_kappa", 0) and (args.M != "Sphere" or args.dim != 2):
        raise UserError(
            f"--target_kappa draws von Mises-Fisher kernels on S^2, not on {args.M} of --dim {args.dim}"
        )
    if args.coupling == "paired" and getattr(args, "base", "default") != "kde":
        raise UserError("--coupling paired draws each base point at its data point: it needs --base kde")
    if args.contsave and args.dim != 2:
        raise UserError(f"--contsave draws density maps of 2-dimensional manifolds, not --dim {args.dim}; "
                        "--save draws the pairwise marginals of samples in any dimension")  # fmt: skip


def resolve_stack(mode: str, earth: bool, solves_ode: bool, budget: str) -> str:
    """``--stack``: ``on`` or ``off`` (``auto``: on for flow matching's long budget on Earth data, the budget
    that reports the best density this project reaches; train/stacking.py)."""
    from utils import UserError

    if mode == "on" and not earth:
        raise UserError("--stack on mixes the flow with KDEs of an Earth catalogue's training split "
                        "(--dataset volcano|earthquake|flood|fire), fitted on its validation split")  # fmt: skip
    if mode == "auto":
        return "on" if earth and not solves_ode and budget == "long" else "off"
    return mode


def fill_settings(args):
    """Solver/chart settings: explicit flags win, then --reference_settings, then the defaults.

    The baselines (``--model whc|prnvp|ncp``) have none: their settings stay None and the guard off.
    """
    if getattr(args, "model", "mcnf") != "mcnf":
        args.solver_guard = 0.0
        return
    if args.reference_settings and args.M not in REFERENCE_SETTINGS:
        from utils import UserError

        raise UserError(f"--reference_settings: the published code has no {args.M} (it has "
                        f"{' and '.join(REFERENCE_SETTINGS)})")  # fmt: skip
    table = REFERENCE_SETTINGS if args.reference_settings else DEFAULT_SETTINGS
    for k, v in table.get(args.M, GENERIC_SETTINGS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    from flows.solver import FIXED_STEP

    if args.solver in FIXED_STEP and args.step_size is None:
        args.step_size = 1 / 8
    if getattr(args, "solver_guard", 0) is None:  # default: on for maximum likelihood with a fixed step
        on = (
            get_objective(args.objective).solves_ode
            and args.solver in FIXED_STEP
            and not args.reference_settings
        )
        args.solver_guard = DEFAULT_SOLVER_GUARD if on else 0.0
    if getattr(args, "solver_guard", 0) and args.solver not in FIXED_STEP:
        from utils import UserError

        raise UserError(f"--solver_guard refines the step of fixed-step solvers ({', '.join(FIXED_STEP)}); "
                        f"--solver {args.solver} controls its error by --atol/--rtol")  # fmt: skip


def resolve_compile(
    args, remaining_epochs: int, device, warm: bool = False, fused: bool = False, native: bool = False
) -> bool:
    """Whether this run compiles its training ODE function (``--compile on|off|auto``).

    ``auto``: maximum likelihood with a closed-form divergence, (on the CPU) a C++ compiler on the PATH
    for inductor, and at least :data:`COMPILE_MIN_EPOCHS` epochs still to train, or at least
    :data:`COMPILE_MIN_EPOCHS_WARM` when ``warm`` (inductor's cache holds this run's graph:
    :func:`train.compile_cache.is_warm`). ``fused``: the eager ODE function is :mod:`flows.fused`'s (the
    model's ``dynamics.runs_fused()``), which leaves compilation less to save: the thresholds of
    :data:`COMPILE_MIN_EPOCHS_FUSED`. ``native``: it runs :mod:`flows.native`'s C++ kernel: auto compiles only
    if :data:`COMPILE_NATIVE`.
    """
    import shutil

    from utils import UserError

    mode = getattr(args, "compile", "off") or "off"
    if getattr(args, "model", "mcnf") != "mcnf":
        return False  # a discrete flow (check_model refuses --compile on)
    objective = get_objective(args.objective)
    eligible = objective.solves_ode and args.divergence in ("exact", "hutchinson")
    if mode == "on" and not eligible:
        why = (
            objective.why_no_solver.split(";")[0]
            if not objective.solves_ode
            else (f"--divergence {args.divergence} is not one of the closed forms (exact, hutchinson)")
        )
        raise UserError(f"--compile on: nothing to compile ({why})")
    if mode != "auto":
        return mode == "on"
    if native and not COMPILE_NATIVE:
        return False
    has_cxx = device.type != "cpu" or any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    cold_least, warm_least = (
        COMPILE_MIN_EPOCHS_FUSED if fused else (COMPILE_MIN_EPOCHS, COMPILE_MIN_EPOCHS_WARM)
    )
    least = warm_least if warm else cold_least
    return eligible and remaining_epochs >= least and has_cxx


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "on", False: "off", None: "none"}[v]
    if isinstance(v, float) and v and (abs(v) < 1e-2 or abs(v) >= 1e4):
        return f"{v:g}"
    if (
        isinstance(v, float)
        and 0 < v < 1
        and abs(1 / v - round(1 / v)) < 1e-12
        and round(1 / v) in (3, 4, 6, 8, 12, 16, 32)
    ):
        return f"1/{round(1 / v)}"
    return str(v)


#: What an unset flag means when no preset table covers it (``--help`` prints these).
SPECIAL_DEFAULTS = {
    "max_speed": "10 on the hyperboloid for softplus/silu, no limiter otherwise",
    "data_dir": "$MANIFOLD_ODE_EARTH_DATA if set, else the shipped data/events",
    "max_grad_norm": "no clipping",
    "out": "results/{dataset}_{M}, or the first free results/{dataset}_{M}_N",
    "resume": "a new run",
    "stop_after": "train to --epochs",
    "coupling": "paired with --base kde and --objective fm, else independent",
    "base_kappas": "--objective fm on Earth data without --base: 10 30 100 400 (kernels of 2000 to 320 km); "
    "else the ladder of four with the best validation NLL of the KDE alone",
    "base": "default; --objective fm on Earth data: kde",
}


def effective_default(dest: str, parser_default) -> str:
    """The default of flag ``dest`` as ``--help`` states it: per objective and manifold where the presets
    (:data:`DEFAULT_SETTINGS`, :data:`MLE_SETTINGS`, :data:`FM_SETTINGS`) make it differ."""
    if dest in SPECIAL_DEFAULTS:
        return SPECIAL_DEFAULTS[dest]
    if dest == "solver_guard":
        return f"{DEFAULT_SOLVER_GUARD:g} for mle with a fixed-step solver, else 0 (off)"
    if (
        dest in DEFAULT_SETTINGS["Sphere"]
    ):  # solver and charts: per manifold (mle; fm solves no ODE in training)
        per = {M: _fmt(t[dest]) for M, t in DEFAULT_SETTINGS.items()}
        text = (
            " / ".join(f"{v} ({M})" for M, v in per.items())
            if len(set(per.values())) > 1
            else next(iter(per.values()))
        )
        return (
            text + f"; --reference_settings: {' / '.join(_fmt(t[dest]) for t in REFERENCE_SETTINGS.values())}"
        )
    mle = MLE_SETTINGS.get(dest, parser_default)
    new = (f" ({', '.join(k for k in MANIFOLDS if k not in REFERENCE_SETTINGS and k != 'Euclidean')}: "
           f"{_fmt(NEW_MANIFOLD_MLE[dest])})" if dest in NEW_MANIFOLD_MLE else "")  # fmt: skip
    fm = {k: t[dest] for k, t in FM_SETTINGS.items() if dest in t}
    if not fm or all(v == mle for v in fm.values()):
        return _fmt(mle) + new
    names = {"earth": "Earth data", "Sphere": "sphere", "Hyperboloid": "hyperboloid"}
    vals = {_fmt(v) for v in fm.values()}
    fm_text = (
        next(iter(vals)) if len(vals) == 1 else ", ".join(f"{names[k]} {_fmt(v)}" for k, v in fm.items())
    )
    own = [f"{ds} {_fmt(t[dest])}" for ds, t in EARTH_DATASETS.items() if dest in t]
    if own:  # a catalogue's own value (chosen on its validation split)
        fm_text += f" ({', '.join(own)})"
    return f"{_fmt(mle)}{new}; --objective fm: {fm_text}"
