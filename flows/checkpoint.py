"""Reading checkpoints safely: tensors and plain data only, and one-line errors.

Every checkpoint this project reads goes through :func:`read_checkpoint`, which calls
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which builds tensors, numbers,
strings and containers and refuses anything else, so a crafted file cannot run code while it is
loaded. Configurations are stored as plain dicts for that reason.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe, or not of the expected kind (one line)."""


def read_checkpoint(path, required=(), what: str = "checkpoint") -> dict:
    """Load ``path`` on the CPU with ``weights_only=True``; check that it is a dict with ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{what} {str(path)!r} holds objects other than tensors and plain data; refused to load it "
            "(unpickling such a file can run arbitrary code)"
        ) from None
    except Exception as e:  # truncated, not a torch file, a folder ...
        raise CheckpointError(
            f"{what} {str(path)!r} is not a readable checkpoint ({type(e).__name__})"
        ) from None
    missing = [k for k in required if not (isinstance(ckpt, dict) and k in ckpt)]
    if not isinstance(ckpt, dict) or missing:
        raise CheckpointError(
            f"{what} {str(path)!r} is not an MCNF checkpoint (missing: {', '.join(missing) or 'all'})"
        )
    return ckpt
