"""Flow matching's training step on Earth data: steps per second with and without bfloat16 autocast.

    python -m benchmarks.fm_throughput [--dataset volcano] [--steps 100] [--reps 5] [--threads 1]

One process, one thread (default): the Earth preset (train/config.py FM_SETTINGS["earth"]: batch 512,
256x4 silu MLP, 64 Fourier features) trained by ``--amp off`` and ``--amp bf16`` steps in alternation
(``reps`` rounds of ``steps`` steps each, the median round reported), so both see the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from data.earth import EarthData
from flows import MCNF
from flows.matching import flow_matching_loss
from train.config import FM_SETTINGS
from utils import positive_int, run_cli


def make_step(dataset: str, amp: bool, seed: int = 0):
    p = FM_SETTINGS["earth"]
    torch.manual_seed(seed)
    data = EarthData(dataset).train
    model = MCNF("Sphere", hidden=p["flow_hidden_size"], n_hidden=p["n_hidden"], activation=p["activation"],
                 conc=p["conc"], fourier=p["fourier"], fourier_scale=p["fourier_scale"])  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    gen = torch.Generator().manual_seed(seed)

    def step():
        x = data[torch.randint(0, len(data), (p["batch_size"],), generator=gen)].float()
        z = model.sample_base(len(x), gen, torch.float64, torch.device("cpu"))
        t = torch.rand(len(x), generator=gen, dtype=torch.float64)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = flow_matching_loss(model, x, z, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="volcano")
    p.add_argument("--steps", type=positive_int, default=100)
    p.add_argument("--reps", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = {"off": make_step(a.dataset, False), "bf16": make_step(a.dataset, True)}
    times = {k: [] for k in steps}
    for f in steps.values():  # warm-up
        for _ in range(10):
            f()
    for _ in range(a.reps):
        for k, f in steps.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                f()
            times[k].append((time.perf_counter() - t0) / a.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    try:
        cpu = "avx512_bf16" if "avx512_bf16" in open("/proc/cpuinfo").read() else "no avx512_bf16"
    except OSError:
        cpu = "CPU flags unknown"
    print(f"{a.dataset}, {a.threads} thread(s), {cpu}, torch {torch.__version__}")
    for k, v in med.items():
        print(f"--amp {k}: {v * 1e3:.2f} ms per step, {1 / v:.1f} steps per second")
    print(f"speed-up: {med['off'] / med['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.fm_throughput"))
