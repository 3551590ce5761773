"""Speed benchmark: this project's default configuration against the reference configuration.

    python -m benchmarks.benchmark [--dev cpu] [--reps 5] [--steps 5] [--ttq_epochs 300]

Measured side by side in one process (repetitions interleaved, medians reported):
seconds per training step at batch 200, NFE forward/backward per step, peak memory, for each
manifold and for the default configuration, the reference configuration reproduced with this code
(sphere: rk4 step 1/16, 4 charts, adjoint, per-dimension autograd divergence; hyperboloid: dopri5
atol=rtol=1e-3, one chart at the origin, adjoint), Hutchinson instead of exact divergence, and the
adjoint instead of direct backprop; seconds to evaluate a 500x500 figure grid; and time-to-quality
(wall seconds of training until the test KL first drops below 0.1 nats). Writes a JSON file and
the markdown table docs/benchmark.md (or docs/benchmark_{device}.md for accelerators).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from train.config import DEFAULT_SETTINGS, REFERENCE_SETTINGS

ROOT = Path(__file__).resolve().parents[1]

DATASET = {"Sphere": "4wrapped", "Hyperboloid": "5gaussians"}


def configs():
    out = {}
    for M in ("Sphere", "Hyperboloid"):
        d, r = DEFAULT_SETTINGS[M], REFERENCE_SETTINGS[M]
        out[f"{M}/default"] = (M, d)
        out[f"{M}/reference"] = (M, r)
        out[f"{M}/default+hutchinson"] = (M, {**d, "divergence": "hutchinson"})
        out[f"{M}/default+adjoint"] = (M, {**d, "adjoint": True})
    return out


def build(M, s, device, seed=0):
    from flows import MCNF

    torch.manual_seed(seed)
    m = MCNF(M, charts=s["charts"], chart_center=s["chart_center"], divergence=s["divergence"],
             train_solver=dict(method=s["solver"], step_size=s["step_size"], atol=s["atol"], rtol=s["rtol"],
                               adjoint=s["adjoint"]))  # fmt: skip
    return m.to(device).train()


def density(M):
    from data import get_density

    return get_density(M, DATASET[M], dtype=torch.float64)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(model, opt, x):
    loss = -model.log_prob(x).mean()
    nfe_f = model.dynamics.nfe
    opt.zero_grad()
    loss.backward()
    opt.step()
    return nfe_f, model.dynamics.nfe - nfe_f


def time_steps(reps, steps, device):
    runs = {}
    for name, (M, s) in configs().items():
        g = torch.Generator().manual_seed(1)
        batches = [density(M).sample(200, generator=g).to(device, torch.float32) for _ in range(steps)]
        runs[name] = (build(M, s, device), batches)
    return time_interleaved(runs, reps, device)


def time_interleaved(runs, reps, device):
    """``{name: (model, batches)}`` -> seconds per training step (median over ``reps`` passes over the
    batches, the runs interleaved so that every one sees the same machine conditions) and NFE."""
    state = {}
    for name, (model, batches) in runs.items():
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step(model, opt, batches[0])  # warm-up
        state[name] = (model, opt, batches, [], [])
    for _ in range(reps):
        for model, opt, batches, times, nfes in state.values():
            sync(device)
            t0 = time.perf_counter()
            for x in batches:
                nfes.append(step(model, opt, x))
            sync(device)
            times.append((time.perf_counter() - t0) / len(batches))
    return {name: dict(sec_per_step=statistics.median(times), sec_per_step_all=times,
                       nfe_forward=statistics.mean(n[0] for n in nfes), nfe_backward=statistics.mean(n[1] for n in nfes))
            for name, (_, _, _, times, nfes) in state.items()}  # fmt: skip


def peak_memory(name, device):
    """Peak memory of 3 training steps of one configuration, measured in a fresh process (MiB)."""
    cmd = [sys.executable, "-m", "benchmarks.benchmark", "--probe", name, "--dev", str(device)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def _probe(name, device):
    M, s = configs()[name]
    m = build(M, s, device)
    opt = torch.optim.Adam(m.parameters())
    xs = [density(M).sample(200).to(device, torch.float32) for _ in range(3)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for x in xs:
        step(m, opt, x)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB


def grid_seconds(device, res=500):
    from viz.figures import density_values

    out = {}
    for M in ("Sphere", "Hyperboloid"):
        from flows import figure_model

        m = figure_model(build(M, DEFAULT_SETTINGS[M], device))
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            density_values(lambda x: m.log_prob(x.to(device, torch.float32)), M, res)
        sync(device)
        out[M] = time.perf_counter() - t0
    return out


def exact_kl(model, den, x_test, device):
    """Exact test KL (and its stderr) of a copy of ``model`` in float64 with dopri5 at 1e-5 and the
    exact divergence, whatever the model trains with."""
    import copy

    from flows import SolverSettings, evaluate

    ev = copy.deepcopy(model).double().eval()
    if ev.dynamics.divergence == "hutchinson":
        ev.dynamics.divergence = "exact"
    ev.eval_solver = SolverSettings(atol=1e-5, rtol=1e-5)
    m = evaluate(ev, den.log_prob, x_test.to(device))
    return m["kl"], m["kl_stderr"]


def _until_kl(model, draw, train_step, den, device, max_epochs, threshold, eval_every):
    """Train with ``train_step(*draw())`` until the test KL (:func:`exact_kl`, 4000 points, every
    ``eval_every`` epochs) drops below ``threshold``; only the steps are timed."""
    x_test = den.sample(4000, generator=torch.Generator().manual_seed(123))
    wall = 0.0
    for epoch in range(1, max_epochs + 1):
        batch = draw()
        sync(device)
        t0 = time.perf_counter()
        train_step(*batch)
        sync(device)
        wall += time.perf_counter() - t0
        if epoch % eval_every == 0:
            kl, _ = exact_kl(model, den, x_test, device)
            if kl < threshold:
                return dict(seconds=wall, epochs=epoch, kl=kl, sec_per_step=wall / epoch)
    return dict(seconds=None, epochs=None, kl=kl, sec_per_step=wall / max_epochs,
                note=f"KL >= {threshold} after {max_epochs} epochs ({wall:.0f} s)")  # fmt: skip


def time_to_quality(M, s, device, max_epochs, threshold=0.1, eval_every=10, lr=1e-2):
    """Wall seconds of training (evaluation excluded) until the test KL first drops below threshold."""
    model = build(M, s, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    den = density(M)
    g = torch.Generator().manual_seed(0)
    draw = lambda: (den.sample(200, generator=g).to(device, torch.float32),)  # noqa: E731
    return _until_kl(
        model, draw, lambda x: step(model, opt, x), den, device, max_epochs, threshold, eval_every
    )


def time_to_quality_fm(M, device, max_epochs, threshold=0.1, eval_every=10):
    """As :func:`time_to_quality`, trained by flow matching with ``main_density.py``'s fm preset for
    the synthetic densities (field, batch, AdamW and its lr; constant lr, raw weights evaluated: the
    preset's cosine schedule and EMA act over its 5000 epochs, not over the first few hundred)."""
    from flows import MCNF, flow_matching_loss
    from train.config import FM_SETTINGS

    f = FM_SETTINGS[M]
    torch.manual_seed(0)
    s = DEFAULT_SETTINGS[M]
    model = MCNF(M, hidden=f["flow_hidden_size"], n_hidden=f["n_hidden"], activation=f["activation"],
                 charts=s["charts"], chart_center=s["chart_center"], conc=f.get("conc", 1.0)).to(device)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=f["lr"], weight_decay=f["weight_decay"])
    den = density(M)
    g = torch.Generator().manual_seed(0)
    bs = f["batch_size"]

    def draw():
        x = den.sample(bs, generator=g, dtype=torch.float32).to(device)
        z = model.sample_base(bs, g, torch.float64, torch.device("cpu")).to(device)
        return x, z, torch.rand(bs, generator=g, dtype=torch.float64).to(device)

    def train_step(x, z, t):
        loss = flow_matching_loss(model, x, z, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _until_kl(model, draw, train_step, den, device, max_epochs, threshold, eval_every)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", default="cpu")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--ttq_epochs", type=int, default=300, help="epoch cap for time-to-quality (0: skip)")
    p.add_argument("--ttq_steps_fm", type=int, default=3000,
                   help="step cap for flow matching's time-to-quality (evaluated every 50 steps)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    device = torch.device(a.dev)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.probe:
        print(_probe(a.probe, device))
        return 0
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    res = dict(
        device=name,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        platform=platform.platform(),
        command=shlex.join(
            ["python", "-m", "benchmarks.benchmark", *(sys.argv[1:] if argv is None else argv)]
        ),
    )
    print(f"timing training steps on {name} ...", flush=True)
    res["steps"] = time_steps(a.reps, a.steps, device)
    for k in res["steps"]:
        res["steps"][k]["peak_mib"] = peak_memory(k, device)
    print("grid evaluation ...", flush=True)
    res["grid_500_seconds"] = grid_seconds(device)
    res["time_to_kl_0.1"] = {}
    if a.ttq_epochs:
        for M in ("Sphere", "Hyperboloid"):
            for label, s in [("default", DEFAULT_SETTINGS[M]), ("reference", REFERENCE_SETTINGS[M])]:
                print(f"time to quality {M} {label} ...", flush=True)
                res["time_to_kl_0.1"][f"{M}/{label}"] = time_to_quality(M, s, device, a.ttq_epochs)
            print(f"time to quality {M} fm ...", flush=True)
            res["time_to_kl_0.1"][f"{M}/default fm"] = time_to_quality_fm(
                M, device, a.ttq_steps_fm, eval_every=50
            )
    tag = "" if device.type == "cpu" else "_" + device.type
    json_path = Path(a.json or ROOT / f"benchmarks/results{tag}.json")
    md_path = Path(a.md or ROOT / f"docs/benchmark{tag}.md")
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    md = render(res)
    md_path.parent.mkdir(exist_ok=True)
    old = md_path.read_text() if md_path.is_file() else ""
    md_path.write_text(md)
    keep_dimensions_section(old, md_path)
    print(md)
    return 0


def keep_dimensions_section(old_text, md_path):
    """Put back the section benchmarks.dimensions wrote into the page (this script rewrites the rest)."""
    from benchmarks.dimensions import BEGIN, END
    from scripts.pages import replace_block

    if BEGIN in old_text and END in old_text:
        block = old_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n").splitlines()
        replace_block(md_path, BEGIN, END, [*block, ""])


def render(res):
    s = res["steps"]
    lines = [f"# Benchmark on {res['device']}", "",
             f"Produced by `{res.get('command', 'python -m benchmarks.benchmark')}` (torch {res['torch']}, "
             f"{res['threads']} threads). "
             "Batch 200, float32; medians over interleaved repetitions. Peak memory: peak RSS of a fresh "
             "process that builds the model and runs 3 steps (CPU; includes Python and torch, about "
             "300 MiB before any step), or `torch.cuda.max_memory_allocated` (GPU).", "",
             "| configuration | s / step | NFE fwd | NFE bwd | peak MiB | speed-up vs reference |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for k, v in s.items():
        ref = s[k.split("/")[0] + "/reference"]["sec_per_step"]
        lines.append(f"| {k} | {v['sec_per_step']:.4f} | {v['nfe_forward']:.0f} | {v['nfe_backward']:.0f} | "
                     f"{v['peak_mib']:.0f} | {ref / v['sec_per_step']:.1f}x |")  # fmt: skip
    lines += ["", "500x500 density grid (`flows.FIGURE_SOLVER`, float32, random-init model):", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in res["grid_500_seconds"].items()]
    if res["time_to_kl_0.1"]:
        lines += ["", "Time to quality (training wall seconds until test KL < 0.1 nats, lr 1e-2 (fm rows: "
                  "`--objective fm`'s preset field, batch 1024 and AdamW lr 2e-3, constant, raw weights), evaluated every "
                  "10 epochs (fm rows: every 50 steps) on 4000 test points; evaluation time excluded; the last column is the mean training step over "
                  "the run, which includes the growth of adaptive solvers' NFE as the model sharpens):", "",
                  "| run | seconds | epochs | KL at stop | mean s / step |", "|---|---|---|---|---|"]  # fmt: skip
        for k, v in res["time_to_kl_0.1"].items():
            sec = f"{v['seconds']:.1f}" if v["seconds"] is not None else v.get("note", "not reached")
            lines.append(
                f"| {k} | {sec} | {v['epochs']} | {v['kl']:.3f} | {v.get('sec_per_step', float('nan')):.4f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
