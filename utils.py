"""Small helpers shared by the scripts: devices, seeding, atomic writes, user errors."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """A mistake in the user's input: reported as one line, exit status 2, no traceback."""


def run_cli(main, prog: str, argv=None) -> int:
    """``main(argv)`` as a command: a user's mistake (``UserError``, ``ValueError`` such as a bad
    checkpoint, a missing or unreadable file) is one line on stderr and exit status 2, no traceback."""
    try:
        return main(argv)
    except (UserError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"{prog}: error: {first}", file=sys.stderr)
        return 2


def positive_int(s) -> int:
    """argparse type: an integer >= 1 (main_density.py's flags and the scripts')."""
    import argparse

    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def resolve_device(name: str) -> torch.device:
    """Parse ``--dev``. Plain ``cuda`` falls back to the CPU with a warning when there is no GPU;
    an explicit device that does not exist (``cuda:7``) or an unknown string is a :class:`UserError`.
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if dev.index is None:
                print("warning: CUDA is not available; falling back to the CPU", file=sys.stderr)
                return torch.device("cpu")
            raise UserError(f"device {name!r} does not exist (no CUDA GPU is available)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device 'mps' is not available on this machine")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {name!r}; valid: cpu, cuda, cuda:N, mps")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global RNG states (torch CPU and CUDA, random); numpy draws always use explicit generators, for bit-exact resumes."""
    state = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(obj, path) -> None:
    """Write ``obj`` as JSON atomically; NaN/inf are refused (strict JSON), so sanitize first."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
            f.write("\n")

    _atomic(path, write)


def atomic_write_text(text: str, path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    _atomic(path, write)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


DTYPES = {"float32": torch.float32, "float64": torch.float64}
