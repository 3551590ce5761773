"""Reading checkpoints safely: tensors and plain data only, and one-line errors.

Every checkpoint this project reads goes through :func:`read_checkpoint`, which calls
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which builds tensors, numbers,
strings and containers and refuses anything else, so a crafted file cannot run code while it is
loaded. Configurations are stored as plain dicts for that reason.

Integrity: :func:`with_digest` adds a SHA-256 digest of every tensor's bytes and every value (key
``"sha256"``); :func:`read_checkpoint` recomputes it and refuses a file whose contents no longer
match, so a flipped byte in the optimizer state or the weights is an error, not a silent resume.
Files without the key (written before it existed, or by others) are read as before.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe, or not of the expected kind (one line)."""


DIGEST_KEY = "sha256"


def _feed(h, o):
    if isinstance(o, torch.Tensor):
        t = o.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(o, dict):
        h.update(b"{")
        for k in sorted(o, key=repr):
            _feed(h, k)
            _feed(h, o[k])
        h.update(b"}")
    elif isinstance(o, (list, tuple)):  # a tuple may come back as a list: both hash alike
        h.update(b"[")
        for x in o:
            _feed(h, x)
        h.update(b"]")
    else:
        h.update(f"{type(o).__name__}:{o!r};".encode())


def digest(obj) -> str:
    """SHA-256 of a checkpoint's contents (tensors by dtype, shape and bytes; plain data by value)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k != DIGEST_KEY})
    return h.hexdigest()


def with_digest(obj: dict) -> dict:
    """``obj`` plus its :func:`digest` under :data:`DIGEST_KEY` (what :func:`read_checkpoint` verifies)."""
    return {**obj, DIGEST_KEY: digest(obj)}


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
    if isinstance(ckpt, dict) and DIGEST_KEY in ckpt:
        try:
            ok = ckpt[DIGEST_KEY] == digest(ckpt)
        except Exception:  # contents of kinds no checkpoint of this project holds
            ok = False
        if not ok:
            raise CheckpointError(
                f"{what} {str(path)!r} is corrupted: its contents do not match the checksum stored in it"
            )
    missing = [k for k in required if not (isinstance(ckpt, dict) and k in ckpt)]
    if not isinstance(ckpt, dict) or missing:
        raise CheckpointError(
            f"{what} {str(path)!r} is not an MCNF checkpoint (missing: {', '.join(missing) or 'all'})"
        )
    return ckpt
