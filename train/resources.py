"""Resources a run needs, checked before it starts: a memory estimate, and out-of-memory recognized.

The estimate (:func:`estimate`) counts what dominates a training step and an evaluation chunk, with
constants measured on this project's CPU machine (peak resident memory of two-epoch runs, minus the
~0.4 GB of a run that trains nothing; tests/test_edges.py checks the estimate against such runs):

- per point and ODE function evaluation kept for backpropagation, ``8 n (n+1)`` numbers of the
  chart geometry (the tangent frames of the exact divergence, in the compute dtype: float64 on the
  hyperboloid) and ``4 k H L`` of the MLP's forward-mode directions (``k = n + 1`` for the exact
  divergence, 2 for Hutchinson's single direction), for ``H`` = ``--flow_hidden_size``, ``L`` =
  ``--n_hidden``; measured on H^n, batch 200, rk4 step 1/4 (16 evaluations): n = 2: 0.13 GB,
  n = 20: 0.13 GB, n = 60: 1.0 GB, 512 wide: 0.23 GB above the idle run; the formula gives 0.1, 0.2,
  1.0, 0.3 GB;
- evaluations retained: ``4 / step`` for rk4 (``charts`` at least), one for the adjoint, about 40 for
  an adaptive training solver; flow matching keeps one field evaluation without the frames;
- the parameters six times over (weights, gradients, Adam's two moments, EMA and evaluation copies).

The evaluation runs without graphs, one function evaluation at a time: its points are processed in
chunks (:func:`eval_chunk`) small enough for the memory, so only training has to fit whole.
"""

from __future__ import annotations

import math
import os

import torch

from manifolds import get_manifold
from utils import DTYPES

from .objectives import get_objective

#: The share of the available memory a run may plan to use (the rest: Python, torch, the data, figures).
BUDGET_SHARE = 0.8
#: The evaluation's chunks may use this share of the available memory.
EVAL_SHARE = 0.25
#: The largest evaluation chunk (points per model_log_prob call).
MAX_CHUNK = 5000


def is_out_of_memory(err) -> bool:
    """Whether ``err`` is an allocation failure (CPU or GPU), as opposed to a numerical one."""
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text
        for s in ("out of memory", "can't allocate memory", "Cannot allocate memory", "not enough memory")
    )


def available_bytes(device) -> int:
    """Memory the run can use: free GPU memory on CUDA, ``MemAvailable`` of /proc/meminfo on the CPU
    (the physical memory when that file is absent)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def _sizes(args):
    n = int(args.dim)
    H, L = int(args.flow_hidden_size), int(args.n_hidden)
    F = int(getattr(args, "fourier", 0) or 0)
    pbytes = 8 if getattr(args, "dtype", "float32") == "float64" else 4
    # the geometry's dtype: float64 on the hyperboloid whatever the weights' (Manifold.compute_dtype)
    gbytes = get_manifold(args.M, 1).compute_dtype(torch.zeros(0, dtype=DTYPES[args.dtype])).itemsize
    return n, H, L, F, pbytes, gbytes


def parameters(args) -> int:
    """Parameters of the model the flags describe (the MLP; a baseline's conditioners, times blocks)."""
    n, H, L, F, _, _ = _sizes(args)
    mlp = (n + 2 + 2 * F) * H + (L - 1) * (H * H + H) + H * (n + 1) + n + 1
    if getattr(args, "model", "mcnf") != "mcnf":
        return int(args.blocks) * (
            (n + 1) * H + (L - 1) * (H * H + H) + H * 3 * (n + 1) * int(args.components or 1)
        )
    return mlp * _members(args)


def _members(args) -> int:
    """Fields of the MCNF (``--ensemble``): parameters and per-point work grow with them."""
    return int(getattr(args, "ensemble", 1) or 1)


def per_point_eval_bytes(args, training: bool) -> int:
    """Bytes one point costs in one function evaluation (see the module docstring)."""
    n, H, L, F, pbytes, gbytes = _sizes(args)
    if getattr(args, "model", "mcnf") != "mcnf":
        return 8 * int(args.blocks) * (H * L + 4 * (n + 1)) * pbytes
    E = _members(args)
    if training and not get_objective(args.objective).solves_ode:
        return 8 * (H * L + 2 * F + n + 1) * pbytes * E
    k = 2 if (training and args.divergence == "hutchinson") else n + 1
    return 8 * n * (n + 1) * gbytes + 4 * k * (H * L + 2 * F) * pbytes * E


def retained_evaluations(args) -> int:
    """Function evaluations whose graphs one training step keeps."""
    if getattr(args, "model", "mcnf") != "mcnf" or not get_objective(args.objective).solves_ode:
        return 1
    if args.adjoint:
        return 1
    charts = args.charts if isinstance(args.charts, int) else 8
    if args.step_size and args.solver in ("rk4", "midpoint", "euler"):
        stages = {"rk4": 4, "midpoint": 2, "euler": 1}[args.solver]
        return stages * max(math.ceil(1 / args.step_size), charts)
    return 40 * max(charts // 4, 1)


def estimate(args) -> dict:
    """Bytes of one training step and of the parameters' copies, by term."""
    _, _, _, _, pbytes, _ = _sizes(args)
    step = args.batch_size * retained_evaluations(args) * per_point_eval_bytes(args, training=True)
    return {"training": step, "parameters": 6 * parameters(args) * pbytes}


def eval_chunk(args, device) -> int:
    """Points per evaluation chunk, so that one chunk's evaluation fits :data:`EVAL_SHARE` of the memory."""
    per = per_point_eval_bytes(args, training=False) * 2  # an adaptive step holds a few evaluations' outputs
    return int(max(1, min(MAX_CHUNK, EVAL_SHARE * available_bytes(device) // max(per, 1))))


#: Flags that the estimate grows with, and what the refusal suggests.
_KNOBS = (
    "dim",
    "batch_size",
    "flow_hidden_size",
    "n_hidden",
    "fourier",
    "ensemble",
    "blocks",
    "components",
    "charts",
    "step_size",
)


def check_memory(args, device, world: int = 1):
    """Refuse, in one line naming the flag that costs most, a run whose estimate exceeds the memory."""
    from utils import UserError

    avail = available_bytes(device)
    if getattr(device, "type", "cpu") == "cpu":
        avail //= max(world, 1)  # torchrun's ranks share the machine's memory
    need = sum(estimate(args).values())
    if need <= BUDGET_SHARE * avail:
        return
    # the flag whose default would save the most
    from argparse import Namespace

    from .config import DEFAULT_SETTINGS, GENERIC_SETTINGS

    # the run's manifold's own solver defaults
    solver = DEFAULT_SETTINGS.get(getattr(args, "M", None), GENERIC_SETTINGS)
    defaults = dict(dim=2, batch_size=200, flow_hidden_size=32, n_hidden=3, fourier=0, ensemble=1, blocks=8, components=8,
                    charts=solver["charts"], step_size=solver["step_size"])  # fmt: skip
    best, saved = None, 0
    for k in _KNOBS:
        v = getattr(args, k, None)
        if v is None or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k == "step_size" and v >= defaults[k] or k != "step_size" and v <= defaults[k]:
            continue
        trial = Namespace(**{**vars(args), k: defaults[k]})
        gain = need - sum(estimate(trial).values())
        if gain > saved:
            best, saved = k, gain
    hint = f"lower --{best} (it costs about {saved / 2**30:.1f} GB)" if best else "use smaller sizes"
    if best == "step_size":
        hint = f"raise --step_size or use --adjoint (the step costs about {saved / 2**30:.1f} GB)"
    raise UserError(f"this run needs about {need / 2**30:.1f} GB of memory (estimate) and the "
                    f"{'GPU' if getattr(device, 'type', 'cpu') == 'cuda' else 'machine'} has "
                    f"{avail / 2**30:.1f} GB available: {hint}")  # fmt: skip
