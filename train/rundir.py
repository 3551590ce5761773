"""Output folders and their safety rules: which folder a run writes, and what it may replace.

The rules (README, "Output folders"): a run never writes into a folder holding another run unless
asked (``--overwrite``) or resuming that run; without ``--out`` it picks a fresh numbered folder;
nothing is written before every argument is validated; leftover temporary files of an interrupted
atomic write are removed; ``metrics.json`` is strict JSON.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from utils import UserError

from .config import LIMITS, MIN_STEP_SIZE, RUN_FILES


def check_limits(args):
    for k, limit in LIMITS.items():
        v = getattr(args, k, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > limit:
            raise UserError(f"--{k} {v} is too large (at most {limit:,})")
    step = getattr(args, "step_size", None)
    if isinstance(step, (int, float)) and step < MIN_STEP_SIZE:
        raise UserError(f"--step_size {step:g} is too small (at least 1/{round(1 / MIN_STEP_SIZE)} = {MIN_STEP_SIZE:g}; "
                        "finer steps exceed the solver's 20,000 function evaluations per solve)")  # fmt: skip
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be in [0, 2^63), got {args.seed}")
    for k in ("atol", "rtol", "eval_tol"):
        v = getattr(args, k, None)
        if v is not None and not 1e-14 <= v <= 1.0:
            raise UserError(f"--{k} {v:g} is outside [1e-14, 1] (float64 cannot resolve tighter tolerances)")


def holds_run(folder: Path) -> bool:
    return any((folder / f).exists() for f in RUN_FILES)


def choose_out(args, resume_path) -> Path:
    """The output folder, by the overwrite/resume rules (README, "Output folders"); writes nothing.

    - no ``--out``: ``results/{dataset}_{M}`` (``results/{dataset}_{M}_{model}`` for a baseline), or the first ``results/{dataset}_{M}_N`` (N = 2, 3, ...)
      that does not hold a run;
    - a folder holding a run is refused unless it is the folder of the checkpoint being resumed or
      ``--overwrite`` is given.
    """
    if args.out is None and resume_path is None:
        kind = getattr(args, "model", "mcnf")
        base = Path(f"results/{args.dataset}_{args.M}" + ("" if kind == "mcnf" else f"_{kind}"))
        out, n = base, 2
        while holds_run(out):
            out, n = Path(f"{base}_{n}"), n + 1
        return out
    out = Path(args.out) if args.out is not None else resume_path.parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a folder")
    own = resume_path is not None and out.resolve() == resume_path.parent.resolve()
    if holds_run(out) and not own and not args.overwrite:
        what = (
            "continue it with --resume {}, ".format(out / "checkpoint.pt")
            if (out / "checkpoint.pt").exists()
            else ""
        )
        raise UserError(f"--out {str(out)!r} holds another run; {what}pass --overwrite to replace it, "
                        "or choose another --out")  # fmt: skip
    return out


def check_writable(out: Path):
    """Whether ``out`` can be created and written, without creating anything."""
    p = out
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"output folder {str(out)!r} cannot be written ({str(p)!r} is not a writable folder)")


def clean_temp_files(out: Path):
    """Remove temporary files an interrupted atomic write of this program left in ``out``."""
    for name in ("checkpoint.pt", "best.pt", "metrics.json", "history.jsonl"):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def json_safe(obj):
    """Replace NaN/inf floats by None, so that metrics.json is valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
