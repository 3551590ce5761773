"""The CUDA check (issue #27): marked ``cuda`` and skipped on a machine without a GPU.

Run it on a GPU box with ``python -m scripts.cuda_check`` (these tests, then the benchmark's GPU
table), or ``python -m pytest -m cuda -n 0 tests/test_cuda.py``. Nothing here runs on the CPU suite.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]
DEMO = ["--epochs", "30", "--dev", "cuda", "--lr", "1e-2", "--dataset", "5gaussians", "--M", "Hyperboloid",
        "--test_size", "2000", "--eval_freq", "30", "--quiet"]  # fmt: skip


def run(*args, launcher=()):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    cmd = [*(launcher or [sys.executable]), str(ROOT / "main_density.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.parametrize("compile_", ["off", "on"])
def test_readme_demo_on_cuda_eager_and_compiled(tmp_path, compile_):
    r = run(*DEMO, "--compile", compile_, "--save", "--res", 60, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["device"].startswith("cuda") and m["compiled"] is (compile_ == "on")
    assert abs(m["kl"]) < 1.0 and (tmp_path / "5gaussians_Hyperboloid.png").is_file()


def test_float64_geometry_on_the_gpu_matches_the_cpu():
    from manifolds import get_manifold

    for name in ("Hyperboloid", "Sphere"):
        M = get_manifold(name, 3)
        x = M.random(512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        z = M.random(512, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t = torch.rand(512, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        cpu = [M.logmap(x, z), M.dist(x, z), *M.interpolate(x, z, t)]
        gpu = [
            M.logmap(x.cuda(), z.cuda()),
            M.dist(x.cuda(), z.cuda()),
            *M.interpolate(x.cuda(), z.cuda(), t.cuda()),
        ]
        for a, b in zip(cpu, gpu, strict=True):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-10)


def test_fused_evaluation_on_the_gpu_equals_the_generic_path():
    # flows/fused.py runs its torch branch on a GPU (numpy on the CPU): values and gradients against the
    # generic autograd path on the same device, both manifolds
    from flows import divergence as div_mod
    from flows.fused import exact_divergence
    from flows.vector_field import VectorField
    from manifolds import get_manifold

    for name, dtype in (("Hyperboloid", torch.float64), ("Sphere", torch.float32)):
        M = get_manifold(name, 2)
        torch.manual_seed(0)
        field = VectorField(M).cuda()
        p = M.random(256, generator=torch.Generator().manual_seed(1), dtype=dtype).cuda()
        E = M.tangent_basis(p)
        v = 0.5 * torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=dtype).cuda()
        t = torch.tensor(0.3, dtype=dtype, device="cuda")
        res = []
        for fn in (div_mod.chart_divergence, exact_divergence):
            vv = v.clone().requires_grad_()
            g, d = fn(M, field, t, p, vv, E)[:2]
            grads = torch.autograd.grad(g.sum() + d.sum(), [vv, *field.parameters()])
            res.append([g, d, *grads])
        for a, b in zip(*res, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_checkpoint_saved_on_cuda_resumes_on_the_cpu_and_back(tmp_path):
    r = run(*DEMO, "--stop_after", 10, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("--resume", tmp_path / "checkpoint.pt", "--dev", "cpu", "--stop_after", 10, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("--resume", tmp_path / "checkpoint.pt", "--dev", "cuda", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["epochs"] == 30 and m["device"].startswith("cuda")
    from flows import load_model

    assert next(load_model(tmp_path / "checkpoint.pt").parameters()).device.type == "cpu"


def test_torchrun_with_nccl_on_one_gpu(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    r = run(*DEMO, "--out", tmp_path, launcher=launcher)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["ranks"] == 1 and m["device"].startswith("cuda")


def test_flow_matching_with_bf16_autocast_on_cuda(tmp_path):
    r = run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--amp", "bf16", "--epochs", 200,
            "--eval_freq", 200, "--dev", "cuda", "--quiet", "--out", tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["device"].startswith("cuda")
