"""The CUDA check in one command (issue #27): the ``cuda`` tests, then the benchmark's GPU table.

    python -m scripts.cuda_check [--out results/cuda_check]

On a machine with a CUDA GPU it runs ``tests/test_cuda.py`` (the README demo on CUDA eager and
compiled, float64 geometry on the GPU against the CPU, a checkpoint saved on CUDA resumed on the CPU
and back, torchrun with NCCL on one GPU, flow matching with bf16 autocast), then
``python -m benchmarks.benchmark --dev cuda`` without the time-to-quality runs (seconds per step and
peak memory per configuration), writing ``OUT/benchmark_cuda.json`` and ``OUT/benchmark_cuda.md``.
Planned to fit in 8 minutes on one GPU. Without a GPU it says so and exits 0 (nothing to check).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/cuda_check", help="folder for the benchmark's table")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to check (tests/test_cuda.py skips)")
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"CUDA check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-n", "0", "-q", "tests/test_cuda.py"],
                           cwd=ROOT, timeout=330)  # fmt: skip
    print(f"tests: exit {tests.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    bench = subprocess.run([sys.executable, "-m", "benchmarks.benchmark", "--dev", "cuda", "--ttq_epochs", "0",
                            "--reps", "3", "--steps", "5", "--json", str(out / "benchmark_cuda.json"),
                            "--md", str(out / "benchmark_cuda.md")], cwd=ROOT, timeout=150)  # fmt: skip
    print(
        f"benchmark: exit {bench.returncode} in {time.perf_counter() - t1:.0f} s; table in {out}", flush=True
    )
    return 0 if tests.returncode == 0 and bench.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m scripts.cuda_check"))
