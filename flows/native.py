"""flows/fused_kernel.cpp, built on first use and called through ctypes (the CPU's fused evaluation).

:class:`flows.fused.ExactDivergence` calls :func:`evaluate` on the CPU when :func:`library` has a kernel for
the tensors' dtypes; otherwise (no C++ compiler, a build that failed, ``MCNF_NATIVE=0`` in the environment,
another dtype pairing) it runs its numpy kernel: the same numbers up to rounding (float32 sums in another
order, and the kernel's own vectorized float32 ``tanh``, within 2.2 ulp of the exact value).

The build: ``$CXX`` (default ``c++``) with ``-O3 -march=native`` (without ``-march=native`` if that fails),
5-10 s once per machine and source version (5.8 s measured here). The library is cached in ``$MCNF_CACHE_DIR`` or
``~/.cache/mcnf`` under a name that hashes the source, the flags, the compiler's version and the CPU's
feature flags (a home directory shared between machines of different CPUs gets one library per CPU), and is
written to a temporary file then renamed (two processes building at once do not see half a library). Loading
a shared library runs its code, so it is loaded only from a folder that belongs to this user and that no one
else can write to (else from ``mcnf-native-UID`` in the temporary directory under the same condition, else
it is built afresh in a new private temporary folder).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(__file__).with_name("fused_kernel.cpp")
_FLAGS = (["-O3", "-march=native"], ["-O3"])
_COMMON = ["-shared", "-fPIC", "-std=c++17", "-fno-trapping-math"]
#: (state dtype, network dtype) -> the kernel's entry point
_ENTRIES = {
    (torch.float32, torch.float32): "fused_f32_f32",
    (torch.float64, torch.float32): "fused_f64_f32",
    (torch.float64, torch.float64): "fused_f64_f64",
}
_KINDS = {"Hyperboloid": 0, "Sphere": 1}
#: the entry points compiled for n = 2 and hidden layers of width 32 (the default model), name suffix
_SPECIAL_SHAPE, _SPECIAL = (2, 32), "_2_32"
_state: dict = {}


def enabled() -> bool:
    return os.environ.get("MCNF_NATIVE", "1") != "0"


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _compiler_version(cxx: str) -> str:
    r = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    return r.stdout if r.returncode == 0 else ""


def _ours(st) -> bool:
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def _private_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of this user's that no one else can write to (made so if missing)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _ours(st) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _cache_folders():
    """Where a built library may be kept, in order: ``$MCNF_CACHE_DIR`` or ``~/.cache/mcnf``, then a folder of
    this user's in the temporary directory (as inductor keeps its cache)."""
    if os.environ.get("MCNF_CACHE_DIR"):
        yield Path(os.environ["MCNF_CACHE_DIR"])
    else:
        try:
            yield Path.home() / ".cache" / "mcnf"
        except RuntimeError:  # no home directory
            pass
    yield Path(tempfile.gettempdir()) / f"mcnf-native-{getattr(os, 'getuid', lambda: 'user')()}"


def _build(cxx: str, out: Path) -> bool:
    for flags in _FLAGS:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            r = subprocess.run(
                [cxx, *flags, *_COMMON, str(SOURCE), "-o", tmp], capture_output=True, timeout=600
            )
            if r.returncode == 0:
                os.replace(tmp, out)
                return True
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return False


def _load():
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return None
    try:
        version = _compiler_version(cxx)
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256(
        b"\0".join(x.encode() for x in (SOURCE.read_text(), repr(_FLAGS), repr(_COMMON), version, _cpu_tag()))
    ).hexdigest()[:20]
    folder = next((f for f in _cache_folders() if _private_folder(f)), None)
    if folder is None:  # a fresh private folder: this process builds its own library
        folder = Path(tempfile.mkdtemp(prefix="mcnf-native-"))
    lib = folder / f"fused-{key}.so"
    if not (lib.is_file() and _ours(lib.stat())) and not _build(cxx, lib):
        return None
    try:
        cdll = ctypes.CDLL(str(lib))
    except OSError:
        return None
    args = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, *[ctypes.c_void_p] * 3, ctypes.c_int64,
            *[ctypes.c_void_p] * 4, ctypes.c_double, *[ctypes.c_void_p] * 12]  # fmt: skip
    for name in _ENTRIES.values():
        for entry in (name, name + _SPECIAL):
            fn = getattr(cdll, entry)
            fn.argtypes, fn.restype = args, ctypes.c_int
    cdll.fused_workspace.argtypes, cdll.fused_workspace.restype = (
        [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 2,
        None,
    )
    return cdll


def library():
    """The loaded kernel library, or ``None`` (disabled, no compiler, a failed build); built once a process."""
    if not enabled():
        return None
    if "lib" not in _state:
        _state["lib"] = _load()
    return _state["lib"]


def pairing(state_dtype, network_dtype) -> bool:
    """Whether the kernel is built for this pairing of the state's and the network's dtypes."""
    return (state_dtype, network_dtype) in _ENTRIES


#: The shapes the kernel runs: the manifold's dimension and the widest hidden layer. One point at a time, the
#: kernel wins where a point's rows are few and narrow and loses to the numpy kernel's batched matrix
#: products beyond (one evaluation forward and backward, batch 200, one thread, 2026-12-04, C++ / numpy, ms:
#: n = 2 width 32 0.31 / 0.71, width 16 0.43 / 0.62, width 64 1.65 / 1.04; n = 3 width 32 0.98 / 0.81;
#: n = 5 width 32 1.41 / 0.89; the same on both manifolds within 10%).
MAX_DIM, MAX_WIDTH = 2, 32


def shape_ok(n: int, widths) -> bool:
    """Whether the kernel runs for dimension ``n`` and hidden widths ``widths`` (:data:`MAX_DIM`)."""
    return n <= MAX_DIM and max(widths, default=0) <= MAX_WIDTH


def supports(v, p, E, params) -> bool:
    """Whether :func:`evaluate` takes these tensors (CPU, a dtype pairing the kernel was built for, a shape
    where it is the faster kernel, contiguous parameters: the kernel reads them through their data pointers;
    at least one point: an empty tensor's data pointer is null, which the kernel reads as "no such array")."""
    if v.device.type != "cpu" or not (v.dtype == p.dtype == E.dtype) or v.shape[0] == 0:
        return False
    if not all(x.is_contiguous() for x in params):
        return False
    nd = params[0].dtype
    if (v.dtype, nd) not in _ENTRIES or any(x.dtype != nd or x.device.type != "cpu" for x in params):
        return False
    if not shape_ok(v.shape[-1], [x.shape[0] for x in params[0:-2:2]]):
        return False
    return library() is not None


def _series(curvature: int, rows) -> np.ndarray:
    key = ("series", curvature)
    if key not in _state:
        _state[key] = np.ascontiguousarray(np.array(rows, dtype=np.float64).reshape(-1))
    return _state[key]


def _ptr(x):
    return None if x is None else x.data_ptr()


def _check(rc: int) -> None:
    """The kernel's return code: 0 done, 1 no memory for its scratch, 2 a reverse pass without the workspace."""
    if rc == 1:
        raise MemoryError("the fused kernel could not allocate its scratch memory")
    if rc:
        raise RuntimeError(f"the fused kernel refused its arguments (code {rc})")


def evaluate(kind, t, v, p, E, params, series, threshold, grads=None, keep=False, kept=None):
    """Forward: ``(g, div, kept)``, ``kept`` the workspace the reverse pass reads (two tensors) if ``keep``,
    else ``None``. Backward (``grads = (Gg, Gd, want_p, want_E)`` and the forward pass's ``kept``):
    ``(Gt, Gv, Gp, GE, [dW, db, ...])``. The tensors must be contiguous; ``series`` the (4, 6) Taylor rows,
    ``threshold`` the series' switch on ``r2``."""
    B, n = v.shape
    W, b = params[0::2], params[1::2]
    sizes = np.array([n + 1, *(x.shape[0] for x in W)], dtype=np.int64)
    name = _ENTRIES[(v.dtype, params[0].dtype)]
    if n == _SPECIAL_SHAPE[0] and len(W) > 1 and (sizes[1:-1] == _SPECIAL_SHAPE[1]).all():
        name += _SPECIAL
    lib = library()
    fn = getattr(lib, name)
    Wp = np.array([x.data_ptr() for x in W], dtype=np.int64)
    bp = np.array([x.data_ptr() for x in b], dtype=np.int64)
    common = (_KINDS[kind], B, n, float(t), v.data_ptr(), p.data_ptr(), E.data_ptr(), len(W),
              sizes.ctypes.data, Wp.ctypes.data, bp.ctypes.data, series.ctypes.data, float(threshold))  # fmt: skip
    if grads is None:
        g = torch.empty(B, n, dtype=v.dtype)
        div = torch.empty(B, dtype=v.dtype)
        if keep:
            ws = np.zeros(2, dtype=np.int64)  # (per call: the kernel runs without the GIL)
            lib.fused_workspace(n, len(W), sizes.ctypes.data, ws.ctypes.data)
            kept = (
                torch.empty(B * int(ws[0]), dtype=params[0].dtype),
                torch.empty(B * int(ws[1]), dtype=v.dtype),
            )
        rc = fn(*common, g.data_ptr(), div.data_ptr(), *[None] * 8, *map(_ptr, kept or (None, None)))
        _check(rc)
        return g, div, kept
    Gg, Gd, want_p, want_E = grads
    Gv = torch.empty_like(v)
    Gp = torch.empty_like(p) if want_p else None
    GE = torch.empty_like(E) if want_E else None
    gparams = [torch.empty_like(x) for x in params]
    gWp = np.array([x.data_ptr() for x in gparams[0::2]], dtype=np.int64)
    gbp = np.array([x.data_ptr() for x in gparams[1::2]], dtype=np.int64)
    Gt = ctypes.c_double()
    rc = fn(*common, None, None, Gg.data_ptr(), Gd.data_ptr(), Gv.data_ptr(), _ptr(Gp), _ptr(GE),
            gWp.ctypes.data, gbp.ctypes.data, ctypes.addressof(Gt), *map(_ptr, kept))  # fmt: skip
    _check(rc)
    return Gt.value, Gv, Gp, GE, gparams
