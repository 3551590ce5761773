"""Whether inductor's disk cache already holds this run's compiled ODE function (``--compile auto``).

Compiling the training ODE function costs 20-29 s the first time on a machine and 3.0-3.5 s once
inductor's disk cache holds the graph (one CPU thread, docs/benchmark.md), and saves about half of every
maximum-likelihood step. So it pays for itself after about 1000 epochs the first time and after about 150
later. Inductor cannot say beforehand whether a graph is in its cache (the key is the traced graph), so a
run that compiled writes a marker beside that cache (``<inductor cache>/mcnf_compiled/<key>``), keyed by
everything that shapes the graph: the torch version, the device type, the model's configuration, its
dtype, the batch size, the regularizers, and the source of the modules the graph is traced from. A later
run with the same key finds the cache warm; one with any difference (or after the cache folder was
emptied, which removes the markers with it) does not, and ``--compile auto`` then keeps to the
first-time rule. A wrong "warm" costs one cold compilation, never a wrong number.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

#: the modules a compiled evaluation is traced from (flows/divergence.py's chart_divergence and what it
#: calls) and the one that compiles it (flows/dynamics.py: inductor's options); a change to any of them may
#: change the graph or its cache entry, so it changes the key
TRACED = ("flows/divergence.py", "flows/vector_field.py", "flows/mlp.py", "flows/dynamics.py", "manifolds")
ROOT = Path(__file__).resolve().parents[1]


def _sources_digest() -> str:
    h = hashlib.sha256()
    for name in TRACED:
        path = ROOT / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def compile_key(config: dict, dtype, device, batch_size: int, regularized: bool) -> str:
    """A digest of everything that decides the compiled graph of a training run."""
    material = dict(torch=torch.__version__, device=torch.device(device).type, config=config, dtype=str(dtype),
                    batch_size=int(batch_size), regularized=bool(regularized), sources=_sources_digest())  # fmt: skip
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _marker(key: str) -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir  # honours TORCHINDUCTOR_CACHE_DIR

    return Path(cache_dir()) / "mcnf_compiled" / key


def _cache_on() -> bool:
    """Whether inductor reads and writes its disk cache (``TORCHINDUCTOR_FX_GRAPH_CACHE=0`` or
    ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` make every compilation a cold one)."""
    from torch._inductor import config

    return bool(config.fx_graph_cache) and not config.force_disable_caches


def is_warm(key: str) -> bool:
    """Whether a run with this key compiled before on this machine (its marker is there) and inductor
    reads its disk cache."""
    try:
        return _cache_on() and _marker(key).is_file()
    except Exception:  # no inductor (a build without it) or an unreadable cache folder: not warm
        return False


def mark_warm(key: str) -> None:
    """Record that a run with this key compiled (after its first compiled step); best effort."""
    try:
        if not _cache_on():  # nothing was cached: no marker
            return
        path = _marker(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except Exception:  # a read-only cache folder: the next run compiles by the first-time rule
        pass
