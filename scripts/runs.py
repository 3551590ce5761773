"""Running a main_density.py configuration from a script: train, resume or reuse it, and cache what is
measured on the finished model. Shared by scripts.reproduce and scripts.baselines."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(out: Path, args: list[str], epochs: int, log, train: bool = True):
    """Train (or resume, or skip when finished); returns (metrics or None, command, error line)."""
    metrics = out / "metrics.json"
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    cmd = [sys.executable, "main_density.py", *args, "--epochs", str(epochs), "--out", str(rel), "--quiet"]
    if metrics.is_file() and json.loads(metrics.read_text())["epochs"] == epochs:
        return json.loads(metrics.read_text()), cmd, None
    failed = out / "failed.txt"
    if not train:
        return None, cmd, failed.read_text().strip() if failed.is_file() else "not run (--assemble)"
    run_cmd = cmd
    if (out / "checkpoint.pt").is_file():
        run_cmd = [sys.executable, "main_density.py", "--resume", str(out / "checkpoint.pt"), "--quiet"]
    print("$", shlex.join(run_cmd[1:]), flush=True)
    r = subprocess.run(run_cmd, cwd=ROOT, capture_output=True, text=True)
    log.write(f"$ {shlex.join(run_cmd)}\n{r.stdout}\n{r.stderr}\n")
    if r.returncode != 0:
        err = [line for line in r.stderr.splitlines() if "error" in line.lower()] or ["failed"]
        out.mkdir(parents=True, exist_ok=True)
        failed.write_text(err[-1] + "\n")
        return None, cmd, err[-1]
    failed.unlink(missing_ok=True)
    return json.loads(metrics.read_text()), cmd, None


def integral(out: Path) -> float:
    """Quadrature integral of the run's final model, cached in ``integral.json`` beside it."""
    from flows import SolverSettings, load_model, model_integral

    cache, ckpt = out / "integral.json", out / "checkpoint.pt"
    if cache.is_file() and cache.stat().st_mtime >= ckpt.stat().st_mtime:
        return json.loads(cache.read_text())["integral"]
    model = load_model(ckpt).double()
    if hasattr(model, "eval_solver"):  # the MCNF (the discrete baselines have no solver)
        model.eval_solver = SolverSettings(atol=1e-6, rtol=1e-6)
    grid = dict(n_radial=200, n_angular=400) if model.manifold.name == "Sphere" else dict(
        n_radial=240, n_angular=360, r_max=8.0)  # fmt: skip
    value = model_integral(model, **grid)
    cache.write_text(json.dumps({"integral": value}))
    return value
