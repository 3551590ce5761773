"""The experiment runner shared by scripts/ and benchmarks/: run a main_density.py configuration (train it,
resume it, or reuse it when finished), and cache what is measured on a finished model beside it.

A page block is then written with :func:`scripts.pages.replace_block` (or a whole page with
:func:`scripts.pages.write_page`, which never replaces a page by a poorer one).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rel(path: Path) -> Path:
    """``path`` relative to the repository (commands run there), so that pages hold no machine paths."""
    path = Path(path)
    return path.relative_to(ROOT) if path.is_absolute() and path.is_relative_to(ROOT) else path


def finished(out: Path, epochs: int | None = None) -> dict | None:
    """The metrics of the finished run in ``out`` (of ``epochs`` epochs, when given), else None."""
    metrics = Path(out) / "metrics.json"
    if not metrics.is_file():
        return None
    m = json.loads(metrics.read_text())
    return m if epochs is None or m.get("epochs") == epochs else None


def run_one(out: Path, args: list[str], epochs: int | None = None, log=None, train: bool = True,
            threads: int | None = None):  # fmt: skip
    """Train the configuration ``args`` (main_density.py flags) into ``out``, or resume it, or reuse it
    when finished; returns ``(metrics or None, command, error line or None)``.

    ``epochs``: given to the command (``None``: the presets', or those in ``args``). ``log``: a file that receives the command
    and its output (``None``: a failure's last lines go to stderr). ``train=False`` runs nothing (the
    table of what is finished). ``threads``: ``OMP_NUM_THREADS`` of the training. The wall seconds of a
    training are kept in ``wall.json`` beside it; a failure's error line in ``failed.txt``.
    """
    out = Path(out)
    cmd = [sys.executable, "main_density.py", *map(str, args)] + (["--epochs", str(epochs)] if epochs else [])
    if "--out" not in args:  # (a caller that places --out itself keeps its commands as its pages show them)
        cmd += ["--out", str(rel(out)), "--quiet"]
    m = finished(out, epochs)
    if m is not None:
        return m, cmd, None
    failed = out / "failed.txt"
    if not train:
        return None, cmd, failed.read_text().strip() if failed.is_file() else "not run (--assemble)"
    run_cmd = cmd
    if (out / "checkpoint.pt").is_file():  # an unfinished run: continue it
        run_cmd = [sys.executable, "main_density.py", "--resume", str(rel(out / "checkpoint.pt")), "--quiet"]
    print("$ python", shlex.join(run_cmd[1:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    t0 = time.perf_counter()
    r = subprocess.run(run_cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if log is not None:
        log.write(f"$ {shlex.join(run_cmd)}\n{r.stdout}\n{r.stderr}\n")
    if r.returncode != 0:
        if log is None:
            print(r.stderr[-2000:], file=sys.stderr)
        err = [line for line in r.stderr.splitlines() if "error" in line.lower()] or [
            f"exit status {r.returncode}"
        ]
        out.mkdir(parents=True, exist_ok=True)
        failed.write_text(err[-1] + "\n")
        return None, cmd, err[-1]
    failed.unlink(missing_ok=True)
    (out / "wall.json").write_text(json.dumps({"wall_seconds": wall}))
    return finished(out), cmd, None


#: Entries of a run's saved arguments that say nothing about what it computes (where it writes, what the
#: user typed, what the trainer fills in from the data).
NOT_SETTINGS = ("explicit", "base_n", "out", "quiet", "resume", "overwrite", "stop_after", "save", "contsave",
                "save_freq", "stack")  # fmt: skip


def run_settings(saved_args: dict) -> dict:
    """What a run computes with: its saved arguments (metrics.json's ``args``) as JSON values, less
    :data:`NOT_SETTINGS`."""
    return {k: v for k, v in json.loads(json.dumps(saved_args)).items() if k not in NOT_SETTINGS}


def resolved_settings(args: list[str]) -> dict:
    """The settings ``main_density.py ARGS`` would train with today (its presets applied, nothing run),
    in the form of :func:`run_settings`; a command whose flags are refused raises ``UserError``."""
    import main_density
    from train.loop import complete_args

    a = main_density.parse_args([str(x) for x in args])
    complete_args(a)
    return run_settings(main_density.json_safe({k: v for k, v in vars(a).items() if k != "explicit"}))


def cached(out: Path, name: str, compute) -> dict:
    """``compute()`` (a dict of numbers measured on the run's final checkpoint), cached in ``out/name`` and
    recomputed when checkpoint.pt is newer than the cache."""
    cache, ckpt = Path(out) / name, Path(out) / "checkpoint.pt"
    if cache.is_file() and cache.stat().st_mtime >= ckpt.stat().st_mtime:
        return json.loads(cache.read_text())
    value = compute()
    cache.write_text(json.dumps(value))
    return value


def integral(out: Path) -> float:
    """Quadrature integral of the run's final model, cached in ``integral.json`` beside it."""

    def compute():
        from flows import SolverSettings, load_model, model_integral

        model = load_model(Path(out) / "checkpoint.pt").double()
        if hasattr(model, "eval_solver"):  # the MCNF (the discrete baselines have no solver)
            model.eval_solver = SolverSettings(atol=1e-6, rtol=1e-6)
        grid = dict(n_radial=200, n_angular=400) if model.manifold.name == "Sphere" else dict(
            n_radial=240, n_angular=360, r_max=8.0)  # fmt: skip
        return {"integral": model_integral(model, **grid)}

    return cached(out, "integral.json", compute)["integral"]
