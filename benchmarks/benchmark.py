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

from benchmarks import sections
from train.config import DEFAULT_SETTINGS, REFERENCE_SETTINGS
from utils import positive_int, resolve_device, run_cli

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
        out[f"{M}/default+compile"] = (M, {**d, "compile": True})
    return out


def build(M, s, device, seed=0):
    from flows import MCNF

    torch.manual_seed(seed)
    m = MCNF(M, charts=s["charts"], chart_center=s["chart_center"], divergence=s["divergence"],
             train_solver=dict(method=s["solver"], step_size=s["step_size"], atol=s["atol"], rtol=s["rtol"],
                               adjoint=s["adjoint"]))  # fmt: skip
    return m.to(device).train().compile_ode(s.get("compile", False))


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
        peak, base = map(float, r.stdout.strip().splitlines()[-1].split())
        return peak, base
    except (ValueError, IndexError):
        return float("nan"), float("nan")


def _status_mib(field):
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process, MiB (Linux), or
    the peak from ``getrusage`` where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss():
    """Reset the kernel's resident high-water mark of this process (Linux: ``5 > clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _probe(name, device):
    """``"peak baseline"``: the peak memory of 3 training steps, and what the process held before them.

    CPU: the resident memory with torch imported, the model built and the batches drawn (Python,
    torch and its libraries: the baseline), and the high-water mark of the resident memory during the
    steps (reset just before them). The model's own peak is the difference: memory the steps took
    beyond what the process held, a lower bound where the allocator reuses freed pages.
    A compiled configuration is warmed up (compiled) before the baseline is read, so the compiler's
    memory counts as baseline. GPU: ``max_memory_allocated`` of the steps, baseline 0.
    """
    M, s = configs()[name]
    m = build(M, s, device)
    opt = torch.optim.Adam(m.parameters())
    xs = [density(M).sample(200).to(device, torch.float32) for _ in range(3)]
    if s.get("compile"):
        step(m, opt, xs[0])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    base = 0.0 if device.type == "cuda" else _status_mib("VmRSS")
    for x in xs:
        step(m, opt, x)
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**20} {base}"
    return f"{_status_mib('VmHWM')} {base}"


def _median_ms(fn, device, n=200, reps=5):
    for _ in range(10):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(times)


def eval_cost(M, device, batch=200):
    """Milliseconds of one evaluation of the ODE function with its exact divergence, forward and
    backward, at ``batch`` points inside a chart (``|v| ~ 0.4``): eager, compiled, and the bare
    network (:meth:`flows.VectorField.ambient`, the 32x3 tanh MLP of ``[x, t]``) forward and backward
    on the same points; and what compiling costs a training run (:func:`compile_cost`)."""
    m = build(M, DEFAULT_SETTINGS[M], device)
    dyn, Mf = m.dynamics, m.manifold
    x = density(M).sample(batch, generator=torch.Generator().manual_seed(3)).to(device, torch.float32)
    p = Mf.projx(x.to(Mf.compute_dtype(x)))
    E = Mf.tangent_basis(p)
    v = 0.25 * torch.randn(batch, Mf.dim, generator=torch.Generator().manual_seed(4), dtype=p.dtype).to(
        device
    )
    t = torch.tensor(0.3, dtype=p.dtype, device=device)
    dyn.basis, dyn.max_nfe = E, None
    zero = torch.zeros(batch, dtype=p.dtype, device=device)

    def ode():
        g, d, _ = dyn(t, (v, zero, p))
        (g.sum() + d.sum()).backward()

    def bare():
        m.field.ambient(t.float(), x).sum().backward()

    out = dict(eager_ms=_median_ms(ode, device), bare_ms=_median_ms(bare, device))
    m.compile_ode()
    ode()  # (compiled here with whatever is cached; compile_cost measures the compilation itself)
    out["compiled_ms"] = _median_ms(ode, device)
    out.update(compile_cost(M, device))
    return out


def compile_cost(M, device):
    """The compilation a training run pays: first training step minus second, each in a fresh process
    with one inductor cache folder, empty for the first process ("cold", the first run on a machine)
    and filled by it for the second ("warm", every later run)."""
    import os
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tmp}
        cmd = [sys.executable, "-m", "benchmarks.benchmark", "--probe_compile", M, "--dev", str(device),
               "--threads", str(torch.get_num_threads())]  # fmt: skip
        for kind in ("cold", "warm"):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
            try:
                first, second = map(float, r.stdout.strip().splitlines()[-1].split())
                out[f"compile_seconds_{kind}"] = first - second
            except (ValueError, IndexError):
                out[f"compile_seconds_{kind}"] = float("nan")
    return out


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


#: The side-by-side runs against the published code: (manifold, dataset, epochs), the issue's budgets.
PUBLISHED_RUNS = [("Hyperboloid", "5gaussians", 300), ("Sphere", "4wrapped", 100)]


def train_run(M, epochs, device, compile_ode=False, lr=1e-2):
    """``epochs`` training steps of the default configuration as ``main_density.py`` takes them (Adam
    lr 1e-2 with weight decay 1e-5, x0.1 drops at 1/3 and 2/3, a fresh batch of 200 per step); every
    step timed. ``total_s`` includes the compilation, which happens in the first step."""
    if compile_ode:
        torch._dynamo.reset()  # this run pays its compilation (with inductor's disk cache warm)
    model = build(M, {**DEFAULT_SETTINGS[M], "compile": compile_ode}, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs // 3, 2 * epochs // 3], gamma=0.1)
    den, g = density(M), torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        x = den.sample(200, generator=g).to(device, torch.float32)
        sync(device)
        t0 = time.perf_counter()
        step(model, opt, x)
        sched.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return dict(epochs=epochs, total_s=sum(times), mean_step_s=statistics.fmean(times),
                steady_step_s=statistics.median(times[1:]), first_step_s=times[0])  # fmt: skip


def published(checkout, device, threads, ttq_epochs):
    """The published code timed from ``checkout`` (a clone of github.com/CUAI/Neural-Manifold-Ordinary-
    Differential-Equations) by ``benchmarks/published.py`` in its own process, one run per row of
    :data:`PUBLISHED_RUNS` plus its time to KL < 0.1 on S^2 4wrapped; this project's default
    configuration over the same epochs (eager and compiled) beside each."""
    import tempfile

    if device.type != "cpu":
        raise SystemExit("--published times the published code on the CPU (run the benchmark with --dev cpu)")
    script = ROOT / "benchmarks" / "published.py"
    base = [sys.executable, str(script), "--checkout", str(checkout), "--threads", str(threads or 1)]

    import os

    env = {**os.environ, "PYTHONPATH": str(checkout)}  # its packages, not this project's (same names)

    def run(*args):
        r = subprocess.run([*base, *map(str, args)], capture_output=True, text=True, timeout=3600, env=env)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"--published: the published code failed ({tail})")
        return json.loads(r.stdout[r.stdout.index("{") :])

    out = {"rows": {}}
    for M, dataset, epochs in PUBLISHED_RUNS:
        print(f"published code vs default: {M} {dataset} {epochs} epochs ...", flush=True)
        out["rows"][f"{M}/{dataset}"] = dict(
            published=run("--M", M, "--dataset", dataset, "--epochs", epochs),
            default=train_run(M, epochs, device),
            compiled=train_run(M, epochs, device, compile_ode=True),
        )
    if ttq_epochs:
        print("published code: time to KL < 0.1 on Sphere 4wrapped ...", flush=True)
        den = density("Sphere")
        x = den.sample(4000, generator=torch.Generator().manual_seed(123))  # the same points as _until_kl
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "test.pt"
            torch.save({"x": x, "log_p": den.log_prob(x)}, path)
            out["ttq_sphere"] = run("--M", "Sphere", "--dataset", "4wrapped", "--epochs", ttq_epochs,
                                    "--test", path, "--eval_every", 10, "--kl_below", 0.1)  # fmt: skip
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", default="cpu")
    p.add_argument("--reps", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--ttq_epochs", type=int, default=300, help="epoch cap for time-to-quality (0: skip)")
    p.add_argument("--ttq_steps_fm", type=int, default=3000,
                   help="step cap for flow matching's time-to-quality (evaluated every 50 steps)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument(
        "--published",
        default=None,
        metavar="PATH",
        help="also time the published code from this clone of its repository (CPU)",
    )
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe_compile", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.published and not (Path(a.published) / "flows" / "mcnf.py").is_file():
        p.error(f"--published: {a.published!r} is not a clone of the published repository (no flows/mcnf.py)")
    device = resolve_device(a.dev)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.probe:
        print(_probe(a.probe, device))
        return 0
    if a.probe_compile:
        r = train_run(a.probe_compile, 2, device, compile_ode=True)  # first and second step
        print(r["first_step_s"], r["steady_step_s"])
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
        res["steps"][k]["peak_mib"], res["steps"][k]["baseline_mib"] = peak_memory(k, device)
    print("cost of one evaluation ...", flush=True)
    res["eval_cost"] = {M: eval_cost(M, device) for M in ("Sphere", "Hyperboloid")}
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
    if a.published:
        res["published"] = published(Path(a.published).resolve(), device, a.threads, a.ttq_epochs)
    tag = "" if device.type == "cpu" else "_" + device.type
    json_path = Path(a.json or ROOT / f"benchmarks/results{tag}.json")
    md_path = Path(a.md or ROOT / f"docs/benchmark{tag}.md")
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    md = render(res)
    md_path.parent.mkdir(exist_ok=True)
    old = md_path.read_text() if md_path.is_file() else ""
    md_path.write_text(md)
    keep_other_sections(old, md_path)
    print(md)
    return 0


def keep_other_sections(old_text, md_path):
    """Put back the sections other benchmark scripts wrote into the page (this script rewrites the rest):
    benchmarks.dimensions' and benchmarks.regularization's."""
    from scripts.pages import replace_block

    for begin, end in (sections.DIMENSIONS, sections.REGULARIZATION):
        if begin in old_text and end in old_text:
            block = old_text.split(begin, 1)[1].split(end, 1)[0].strip("\n").splitlines()
            replace_block(md_path, begin, end, [*block, ""])


def published_lines(pub, ttq, cost):
    lines = ["", "## Against the published code", "",
             "The published code itself (a clone of github.com/CUAI/Neural-Manifold-Ordinary-Differential-"
             "Equations at the path given to `--published`), driven by `benchmarks/published.py` in its own "
             "process with the loop of its `main_density.py` (lr 1e-2, batch 200, its solvers: dopri5 at "
             "1e-3 with the adjoint on H^2, rk4 step 1/16 x 4 charts with the adjoint on S^2), one thread; "
             "this project's default configuration over the same epochs in this process, eager and with "
             "`--compile on`. Mean seconds per training step over the whole run (the published "
             "hyperboloid's adaptive solver takes more steps as the model sharpens); for the compiled "
             "runs the median step, and the mean step with the compilation of a fresh process added "
             "(the table above: warm inductor cache / cold cache, the first run on a machine). Figures "
             "and evaluation are not timed.", "",
             "| run | epochs | published s / step | default s / step | speed-up | compiled s / step | speed-up | "
             "with the compilation, warm / cold | speed-up, warm / cold |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for k, r in pub["rows"].items():
        P, d, c, n = (
            r["published"]["mean_step_s"],
            r["default"]["mean_step_s"],
            r["compiled"],
            r["default"]["epochs"],
        )
        st = c["steady_step_s"]
        cc = cost.get(k.split("/")[0], {})
        w, co = (
            (st + cc.get("compile_seconds_warm", float("nan")) / n),
            (st + cc.get("compile_seconds_cold", float("nan")) / n),
        )
        lines.append(f"| {k} | {n} | {P:.4f} | {d:.4f} | {P / d:.1f}x | {st:.4f} | {P / st:.1f}x | "
                     f"{w:.4f} / {co:.4f} | {P / w:.1f}x / {P / co:.1f}x |")  # fmt: skip
    t = pub.get("ttq_sphere")
    if t:
        last = t["evals"][-1] if t["evals"] else {}
        reached = last and last["kl"] < 0.1
        ours = ttq.get("Sphere/default", {})
        sec = (
            f"{last['seconds']:.1f} s ({last['epoch']} epochs, KL {last['kl']:.3f})"
            if reached
            else (f"not reached in {t['epochs_run']} epochs ({t['train_seconds']:.0f} s)")
        )
        lines += ["", f"Time to test KL < 0.1 on S^2 4wrapped (same 4000 test points and evaluation cadence as "
                  f"the time-to-quality table; the published model scored with its own solver): published "
                  f"code {sec}"]  # fmt: skip
        if reached and ours.get("seconds"):
            lines[-1] += (
                f"; this project's default {ours['seconds']:.1f} s ({ours['epochs']} epochs): "
                f"{last['seconds'] / ours['seconds']:.0f}x shorter."
            )
        else:
            lines[-1] += "."
    return lines


def render(res):
    s = res["steps"]
    lines = [f"# Benchmark on {res['device']}", "",
             f"Produced by `{res.get('command', 'python -m benchmarks.benchmark')}` (torch {res['torch']}, "
             f"{res['threads']} threads). "
             "Batch 200, float32; medians over interleaved repetitions. Memory (CPU): a fresh process builds "
             "the model, draws the batches (and compiles, for the compiled rows) and runs 3 steps; baseline "
             "is its peak RSS before the steps (Python, torch and its libraries), model peak the growth of "
             "the peak RSS during the steps. GPU: `torch.cuda.max_memory_allocated` of the steps.", "",
             "| configuration | s / step | NFE fwd | NFE bwd | baseline MiB | model peak MiB | speed-up vs reference |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for k, v in s.items():
        ref = s[k.split("/")[0] + "/reference"]["sec_per_step"]
        own = v["peak_mib"] - v.get("baseline_mib", 0.0)
        lines.append(f"| {k} | {v['sec_per_step']:.4f} | {v['nfe_forward']:.0f} | {v['nfe_backward']:.0f} | "
                     f"{v.get('baseline_mib', float('nan')):.0f} | {own:.1f} | {ref / v['sec_per_step']:.1f}x |")  # fmt: skip
    if "eval_cost" in res:
        lines += ["", "Cost of one evaluation of the ODE function with its exact divergence, forward and backward, "
                  "batch 200 (milliseconds, median), against the bare network (the 32x3 tanh MLP of [x, t], "
                  "`VectorField.ambient`) forward and backward on the same points; `--compile` compiles the "
                  "first (`MCNF.compile_ode`):", "",
                  "| manifold | bare network | eager | eager / network | compiled | compiled / network | "
                  "compile s, cold cache | compile s, warm cache |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for M, c in res["eval_cost"].items():
            lines.append(f"| {M} | {c['bare_ms']:.3f} | {c['eager_ms']:.3f} | {c['eager_ms'] / c['bare_ms']:.1f}x | "
                         f"{c['compiled_ms']:.3f} | {c['compiled_ms'] / c['bare_ms']:.1f}x | "
                         f"{c['compile_seconds_cold']:.1f} | {c['compile_seconds_warm']:.1f} |")  # fmt: skip
        lines += ["", "Compile s: what compiling costs a training run of the default configuration, the first "
                  "training step minus the second in a fresh process; cold: an empty inductor cache "
                  "(`TORCHINDUCTOR_CACHE_DIR`), the first run on a machine; warm: the cache the cold process "
                  "filled, as for every later run. (The sphere's 4 charts compile two graphs, for a chart "
                  "centred at data and at points that depend on the weights, with their backward passes.)"]  # fmt: skip
    if "published" in res:
        lines += published_lines(res["published"], res.get("time_to_kl_0.1", {}), res.get("eval_cost", {}))
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
    sys.exit(run_cli(main, "python -m benchmarks.benchmark"))
