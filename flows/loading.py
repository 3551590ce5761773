"""Loading trained models from checkpoints: the MCNF, or the baseline a checkpoint names."""

from __future__ import annotations

import torch

from .baselines import BASELINES
from .checkpoint import CheckpointError, read_checkpoint
from .mcnf import MCNF


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint"):
    """Build the model described by ``ckpt["model_config"]`` (an :class:`MCNF`, or the baseline its
    ``"model"`` key names) and load ``ckpt["model"]`` into it.

    A configuration or state dict that does not fit raises :class:`flows.checkpoint.CheckpointError`.
    """
    config, state = ckpt.get("model_config"), ckpt.get("model")
    if not isinstance(config, dict) or not isinstance(state, dict) or not state:
        raise CheckpointError(f"{where}: model_config/model entries are missing or of the wrong type")
    try:
        kind = config.get("model", "mcnf")  # checkpoints written before the baselines have no "model" key
        if kind != "mcnf":
            if kind not in BASELINES:
                raise ValueError(f"unknown model kind {kind!r}")
            model = BASELINES[kind](**{k: v for k, v in config.items() if k != "model"})
        else:
            model = MCNF(**{k: v for k, v in config.items() if k != "model"})
        dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor)}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError("the weights are not all floating-point tensors of one dtype")
        model.to(dtypes.pop())
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: the model does not match its configuration ({first})") from None
    return model


def load_model(path, map_location="cpu"):
    """Load a trained model (eval mode) from a checkpoint of ``main_density.py``: an :class:`MCNF`, or
    with ``--model whc|prnvp|ncp`` the baseline (:mod:`flows.baselines`), which has the same interface.

    Loading is safe for files from others: ``torch.load(weights_only=True)`` (see
    :mod:`flows.checkpoint`); a file that is not such a checkpoint raises ``CheckpointError``.
    """
    ckpt = read_checkpoint(path, required=("model_config", "model"))
    return model_from_checkpoint(ckpt, str(path)).to(map_location).eval()
