"""Train a Manifold Continuous Normalizing Flow on a density on the sphere or the hyperboloid.

The reference's command line works verbatim, e.g.::

    python main_density.py --epochs 300 --dev cuda --lr 1e-2 --dataset 5gaussians --M Hyperboloid --save

This file is the command line only (flags, validation of their types, exit statuses); the run layer
lives in ``train/`` (loop, tasks, presets, folder rules), the mathematics in ``manifolds/``,
``data/`` and ``flows/``, the figures in ``viz/``.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings

import utils
from data.densities import DENSITIES
from flows import BASELINES, interrupts
from flows.interrupts import interrupt
from train.config import effective_default
from train.loop import Trainer
from train.objectives import OBJECTIVES
from train.rundir import json_safe  # noqa: F401  (re-exported for scripts and tests)
from utils import UserError, positive_int


# Presets, resumable flags and size limits live in train/config.py; folder rules in train/rundir.py.
def nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def positive_float(s):
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def nonneg_float(s):
    v = float(s)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {s}")
    return v


def unit_interval(s):
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def charts_arg(s):
    if s == "adaptive":
        return s
    try:
        return positive_int(s)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'adaptive', got {s}") from None


class EffectiveDefaults(argparse.HelpFormatter):
    """``--help`` states what every flag means when it is not given, per objective and manifold where the
    presets differ (:func:`train.config.effective_default`), instead of argparse's "(default: None)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or action.dest == "help" or "%(default)" in text:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text
        return f"{text} (default: {effective_default(action.dest, action.default)})"


class OneLineErrorParser(argparse.ArgumentParser):
    """Report a bad flag in one line (no usage dump) with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="main_density.py",
        description="Neural Manifold ODEs (Lou et al., NeurIPS 2020): density estimation on S^n and H^n.",
        formatter_class=EffectiveDefaults,
    )
    ref = p.add_argument_group("reference flags (same names, meanings and defaults as the published code)")
    ref.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    ref.add_argument("--weight_decay", type=nonneg_float, default=1e-5, help="Adam weight decay")
    ref.add_argument("--dataset", default="1wrapped", help="target density (see --help of data.get_density)")
    ref.add_argument("--epochs", type=positive_int, default=10, help="training steps, one fresh batch each")
    ref.add_argument("--batch_size", type=positive_int, default=200)
    ref.add_argument(
        "--num_drops", type=nonneg_int, default=2, help="learning-rate drops by 0.1, evenly spaced"
    )
    ref.add_argument(
        "--flow_hidden_size", type=positive_int, default=32, help="width of the vector field MLP"
    )
    ref.add_argument("--save", action="store_true", help="write the density figure {dataset}_{M}.png")
    ref.add_argument("--conc", type=nonneg_float, default=None,
                     help="concentration of the base at the origin (sphere: vMF; torus: von Mises in each angle); 0: uniform base")  # fmt: skip
    ref.add_argument("--dev", default="cuda", help="device; plain 'cuda' falls back to the CPU")
    ref.add_argument("--M", default="Hyperboloid", choices=list(DENSITIES), help="manifold")
    ref.add_argument("--contsave", action="store_true", help="save a density frame every --save_freq epochs")
    ref.add_argument("--save_freq", type=positive_int, default=5)

    base = p.add_argument_group("the paper's baselines (docs/baselines.md)")
    base.add_argument("--model", choices=["mcnf", *BASELINES], default="mcnf",
                      help="mcnf: the Manifold Continuous Normalizing Flow; whc: Wrapped Hyperboloid Coupling and "
                           "prnvp: projected RealNVP (Hyperboloid; Bose et al. 2020); ncp: recursive flow with "
                           "non-compact projections (Sphere; Rezende et al. 2020). The baselines use "
                           "--flow_hidden_size, --n_hidden and --activation for their conditioner networks")  # fmt: skip
    base.add_argument("--blocks", type=positive_int, default=8,
                      help="coupling layers of a baseline (ncp: alternating circle and interval layers)")  # fmt: skip
    base.add_argument("--components", type=positive_int, default=8,
                      help="mixture components of each ncp layer")  # fmt: skip

    mod = p.add_argument_group("model and solver (defaults: fastest measured; see README)")
    mod.add_argument("--dim", type=positive_int, default=2, help="intrinsic dimension n of S^n / H^n")
    mod.add_argument("--n_hidden", type=positive_int, default=3, help="hidden layers of the MLP")
    mod.add_argument("--activation", choices=["tanh", "softplus", "silu"], default="tanh",
                     help="hidden activation of the MLP (reference: tanh)")  # fmt: skip
    mod.add_argument("--max_speed", type=positive_float, default=None,
                     help="bound of the field's speed (tanh fields are bounded already)")  # fmt: skip
    mod.add_argument("--fourier", type=nonneg_int, default=None,
                     help="random Fourier features sin/cos(Bx) of the field's input (0: none, the reference)")  # fmt: skip
    mod.add_argument("--fourier_scale", type=positive_float, default=None,
                     help="standard deviation of the Fourier frequencies B")  # fmt: skip
    mod.add_argument("--ensemble", type=positive_int, default=1,
                     help="K fields trained side by side (flow matching: each on its own batch of --batch_size); "
                          "the model's field is their average (docs/earth_ablation.md); --budget long of flood and earthquake: 3")  # fmt: skip
    mod.add_argument("--charts", type=charts_arg, default=None, help="time segments (charts), or 'adaptive'")
    mod.add_argument(
        "--chart_center",
        choices=["point", "origin"],
        default=None,
        help="centre of each chart: the segment's start point, or the origin (the reference's H^2)",
    )
    mod.add_argument("--solver", default=None, help="torchdiffeq method: dopri5, rk4, midpoint, euler, ...")
    mod.add_argument("--step_size", type=positive_float, default=None, help="step of fixed-step solvers")
    mod.add_argument("--solver_guard", type=nonneg_float, default=None,
                     help="fixed-step solvers: at every evaluation compare the training solver's NLL of a fixed "
                          "batch of training points with an accurate solve (dopri5 at --eval_tol, float64) and "
                          "halve --step_size while they differ by more than this many nats (0: off)")  # fmt: skip
    mod.add_argument(
        "--guard_freq",
        type=positive_int,
        default=100,
        help="epochs between the solver guard's checks (also at every evaluation)",
    )
    mod.add_argument("--atol", type=positive_float, default=None, help="training atol (adaptive solvers)")
    mod.add_argument("--rtol", type=positive_float, default=None, help="training rtol (adaptive solvers)")
    mod.add_argument("--eval_tol", type=positive_float, default=1e-5,
                     help="atol = rtol of evaluation (dopri5, float64)")  # fmt: skip
    mod.add_argument(
        "--divergence",
        choices=["exact", "hutchinson", "exact_autograd"],
        default=None,
        help="divergence of the training solve (evaluation is always exact)",
    )
    mod.add_argument("--adjoint", action=argparse.BooleanOptionalAction, default=None,
                     help="adjoint method for gradients (off: direct backprop)")  # fmt: skip
    mod.add_argument(
        "--dtype",
        choices=list(utils.DTYPES),
        default="float32",
        help="dtype of the weights and training (evaluation runs in float64)",
    )
    mod.add_argument(
        "--kinetic",
        type=nonneg_float,
        default=0.0,
        help="weight of the kinetic-energy regularizer int |f|^2 dt (Finlay et al. 2020; 0: off)",
    )
    mod.add_argument("--jacobian", type=nonneg_float, default=0.0,
                     help="weight of the Jacobian Frobenius regularizer int |grad f|_F^2 dt (0: off); with either, "
                          "the logged training loss includes the penalty")  # fmt: skip
    mod.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                     help="torch.compile the training ODE function (auto: maximum likelihood runs of at least "
                          "1000 epochs, where the compilation pays off even the first time, or of at least 200 once "
                          "inductor's cache holds the run's graph from an earlier compiled run; 4000 and 700 for the "
                          "exact divergence on the sphere and the hyperboloid, whose eager function is "
                          "flows/fused.py's; see docs/benchmark.md)")  # fmt: skip
    mod.add_argument("--reference_settings", action="store_true",
                     help="the published code's exact solver/chart/divergence configuration")  # fmt: skip

    obj = p.add_argument_group("training objective (defaults of --objective fm: train/config.py FM_SETTINGS)")
    obj.add_argument("--objective", choices=list(OBJECTIVES), default="mle",
                     help="mle: maximum likelihood through the ODE (the paper); fm: Riemannian flow matching "
                          "(no ODE solve in training; one epoch = one batch); both are scored by the exact "
                          "likelihood")  # fmt: skip
    obj.add_argument("--optimizer", choices=["adam", "adamw"], default=None, help="optimizer")
    obj.add_argument("--lr_schedule", choices=["drops", "cosine"], default=None,
                     help="drops: x0.1 --num_drops times; cosine: linear warm-up then cosine decay to 0")  # fmt: skip
    obj.add_argument("--warmup", type=nonneg_int, default=None, help="warm-up epochs of the cosine schedule")
    obj.add_argument("--ema", type=unit_interval, default=None,
                     help="decay of the exponential moving average of the weights used for evaluation, "
                          "figures and the saved model (0: none; bias-corrected)")  # fmt: skip
    obj.add_argument("--amp", choices=["off", "bf16"], default="off",
                     help="flow matching: the field's matrix products in bfloat16 during training (autocast; "
                          "2.2x the steps per second on a CPU with AVX512-BF16, docs/earth_fm.md); weights, "
                          "geometry and evaluation stay float32/float64")  # fmt: skip

    earth = p.add_argument_group("Earth event data (--M Sphere --dataset volcano|earthquake|flood|fire)")
    earth.add_argument("--data_dir", default=None,
                       help="folder with volerup.csv, quakes_all.csv, flood.csv, fire.csv")  # fmt: skip
    earth.add_argument("--split_seed", type=int, default=0, help="seed of the random 80/10/10 split")
    earth.add_argument("--budget", choices=["default", "long"], default="default",
                       help="flow matching on Earth data: default 60,000 steps (at most 10 CPU-minutes per "
                            "split on one thread), long 180,000; catalogues that overfit sooner take a fraction, "
                            "chosen on their validation split (earthquake 0.5, flood 0.15; their long budget: "
                            "three fields of their default steps averaged, --ensemble 3; train/config.py "
                            "EARTH_DATASETS); --epochs overrides")  # fmt: skip
    earth.add_argument("--base", choices=["default", "kde"], default="default",
                       help="the flow's base distribution: the manifold's own (--conc), or kde: a multiscale "
                            "von Mises-Fisher kernel density estimate of the training split with 1%% uniform, "
                            "its four concentrations chosen on the validation split or given by --kde_kappas; "
                            "the flow starts at the identity, so the untrained model is that KDE")  # fmt: skip
    earth.add_argument("--stack", choices=["auto", "on", "off"], default="auto",
                       help="after training on Earth data, also report the best flow stacked with von Mises-"
                            "Fisher KDEs of the training split (kernels of 19 km and broader) and the uniform law, "
                            "the mixture weights fitted on the validation split (train/stacking.py; metrics.json's "
                            "stack); auto: on for --objective fm --budget long")  # fmt: skip
    earth.add_argument("--coupling", choices=["independent", "paired"], default=None,
                       help="flow matching's pairs of data and base points: independent, or paired (a kernel "
                            "draw at each data point; needs --base kde)")  # fmt: skip
    earth.add_argument("--target_kappa", type=nonneg_float, default=0.0, metavar="KAPPA",
                       help="flow matching on S^2: regress onto each data point jittered by a von Mises-Fisher "
                            "kernel of this concentration, i.e. onto the training split smoothed by that kernel "
                            "(a regularizer against memorizing the events; 0: the events themselves)")  # fmt: skip
    earth.add_argument("--kde_kappas", dest="base_kappas", type=positive_float, nargs="+", default=None,
                       metavar="KAPPA", help="--base kde: these concentrations instead of the ladder chosen on "
                       "validation (a kernel of concentration k has an angular scale 1/sqrt(k); 400 is about "
                       "320 km on the Earth)")  # fmt: skip
    p.set_defaults(base_n=None)  # resolved by the trainer (--base kde), kept in checkpoints

    run = p.add_argument_group("run, evaluation and output")
    run.add_argument("--seed", type=int, default=0, help="training seed (the test set has its own)")
    run.add_argument(
        "--max_grad_norm",
        type=positive_float,
        default=None,
        help="clip the gradient to this global norm before each step",
    )
    run.add_argument(
        "--out",
        default=None,
        help="output folder; a folder holding another run is refused unless --overwrite",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="let this run replace the files of the run already in --out (other files are kept)",
    )
    run.add_argument(
        "--test_size", type=positive_int, default=20000, help="held-out samples of the true density"
    )
    run.add_argument(
        "--eval_freq", type=positive_int, default=100, help="evaluate every N epochs (and at the end)"
    )
    run.add_argument("--resume", default=None, help="continue from this checkpoint.pt")
    run.add_argument("--stop_after", type=positive_int, default=None,
                     help="train at most N epochs in this invocation, checkpoint, and exit (resume later)")  # fmt: skip
    run.add_argument("--samples", type=nonneg_int, default=0, help="draw N samples from the trained model")
    run.add_argument("--res", type=positive_int, default=500, help="figure grid resolution (res x res)")
    run.add_argument("--quiet", action="store_true", help="no progress bar; one log line per evaluation")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # which flags did the user give explicitly? (parse again with every default suppressed)
    quiet_parser = build_parser()
    for a in quiet_parser._actions:
        a.default = argparse.SUPPRESS
    quiet_parser._defaults.clear()  # (set_defaults: values no flag sets, e.g. base_n)
    args.explicit = set(vars(quiet_parser.parse_args(argv)))
    return args


def value_checker(parser: argparse.ArgumentParser):
    """``check(name, value, where)``: the parser's own checks (type, choices) applied to a value that did
    not come from the command line (a resumed checkpoint's saved flags); raises UserError."""
    actions = {a.dest: a for a in parser._actions}

    def check(name, value, where):
        a = actions.get(name)
        if a is None or value is None:
            return
        if isinstance(
            a, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
        ):
            ok = isinstance(value, bool)
        elif a.choices is not None and not isinstance(value, (str, int)):
            ok = False
        elif a.choices is not None:
            ok = value in a.choices
        elif a.nargs in ("+", "*") and a.type is not None:  # a list flag (--kde_kappas): each element
            try:
                ok = isinstance(value, list) and all(
                    not isinstance(v, (bool, list, dict)) and a.type(str(v)) == v for v in value
                )
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                ok = False
        elif a.type is not None and a.type is not str:
            try:
                ok = not isinstance(value, (bool, list, dict)) and a.type(str(value)) == value
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                ok = False
        else:
            ok = isinstance(value, str)
        if not ok:
            raise UserError(f"{where} is {value!r}, which the command line would refuse")

    return check


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (SIGINT)."""


def _on_sigterm(signum, frame):
    interrupt(Terminated())


def _on_sigint(signum, frame):
    interrupt(KeyboardInterrupt())


def _unraisable(default):
    """``sys.unraisablehook`` that stays quiet about an interrupt a callback swallowed: it was recorded and
    is raised at the next training step (flows/interrupts.py), so its "Exception ignored" traceback would
    only alarm the user."""

    def hook(unraisable):
        if not (unraisable.exc_type and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            default(unraisable)

    return hook


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("default")
    import signal

    interrupts.clear()
    hook = sys.unraisablehook
    if threading_main():  # both wait for a compiled call to return (flows/interrupts.py)
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _unraisable(hook)
    try:
        trainer = Trainer(args, check_value=value_checker(build_parser()))
        trainer.setup()
        return trainer.train()
    except UserError as e:
        print(f"main_density.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        interrupts.clear()
        kind = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"main_density.py: {kind}; the last checkpoint is kept", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except MemoryError:
        print("main_density.py: error: out of memory; use smaller sizes (--batch_size, --test_size, --res, --samples)",
              file=sys.stderr)  # fmt: skip
        return 2
    except OSError as e:  # a full disk, a folder removed underneath the run ...
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"main_density.py: error: cannot write{where}: {e.strerror or e}; the last checkpoint is kept",
              file=sys.stderr)  # fmt: skip
        return 2
    finally:
        sys.unraisablehook = hook
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
