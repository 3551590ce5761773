"""Training on several processes with torchrun + DistributedDataParallel (gloo on the CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
ARGS = ["--M", "Sphere", "--dataset", "4wrapped", "--dev", "cpu", "--eval_freq", "2", "--test_size", "200",
        "--quiet", "--dtype", "float64", "--seed", "5"]  # fmt: skip


#: torchrun failures that say nothing about this code: start-up (a port taken by another process), and
#: a rank aborting in Gloo's C++ threads at interpreter exit, a known upstream teardown race (seen once
#: in seven runs of this file on the 2-core machine: "terminate called without an active exception",
#: SIGABRT after the rank had finished; pytorch/pytorch PR 179291 describes the mechanism). Retried once.
TRANSIENT = ("Address already in use", "EADDRINUSE", "RendezvousConnectionError", "Connection refused",
             "terminate called without an active exception")  # fmt: skip


def run(out, epochs, nproc=None, extra=()):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc
        else [sys.executable]
    )
    cmd = [
        *launcher,
        str(ROOT / "main_density.py"),
        *ARGS,
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if r.returncode != 0 and nproc and any(s in r.stderr for s in TRANSIENT):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)  # once more
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def weights(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_two_ranks_match_one_process_and_stay_in_sync(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run(one, 1)
    r = run(two, 1, nproc=2)
    # one optimizer step on the same global batch: same parameters as one process
    a, b = weights(one), weights(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-12, rtol=1e-10)
    m = json.loads((two / "metrics.json").read_text())
    assert m["ranks"] == 2 and m["ranks_in_sync"] is True
    # only rank 0 wrote: one evaluation line, one final message
    assert len((two / "history.jsonl").read_text().splitlines()) == 1
    assert r.stdout.count("done:") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_resume_with_a_different_number_of_ranks(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(straight, 4)
    run(split, 4, nproc=2, extra=["--stop_after", "2"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(ROOT / "main_density.py"), "--resume", str(split / "checkpoint.pt"),
                        "--quiet"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    a, b = weights(straight), weights(split)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-10, rtol=1e-8)


def test_every_rank_validates_and_exits_2(tmp_path):
    """A refused --out: each rank reports it and exits 2 itself (no rank waits for another)."""
    out = tmp_path / "taken"
    run(out, 1)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "main_density.py"), *ARGS, "--epochs", "1", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode != 0
    assert r.stderr.count("holds another run") == 2, r.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
