"""Measurements shared by the benchmarks: model builders, synchronized timers (interleaved repetitions,
medians), peak memory in a fresh process, the cost of one ODE-function evaluation, compile cost, figure
grid time, exact KL and time-to-quality. :mod:`benchmarks.benchmark` and :mod:`benchmarks.dimensions`
assemble their pages from these."""

from __future__ import annotations

import resource
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


def ode_evaluation(M, device, batch=200, v_grad=False):
    """The default model of manifold ``M`` and a closure running one evaluation of its ODE function with the
    exact divergence, forward and backward, at ``batch`` points inside a chart (``|v| ~ 0.4``; ``v_grad``:
    ``v`` carries a gradient, as at an rk4 step's later stages). Returns ``(model, ode, x, p, t)``."""
    m = build(M, DEFAULT_SETTINGS[M], device)
    dyn, Mf = m.dynamics, m.manifold
    x = density(M).sample(batch, generator=torch.Generator().manual_seed(3)).to(device, torch.float32)
    p = Mf.projx(x.to(Mf.compute_dtype(x)))
    E = Mf.tangent_basis(p)
    v = 0.25 * torch.randn(batch, Mf.dim, generator=torch.Generator().manual_seed(4), dtype=p.dtype).to(
        device
    )
    v.requires_grad_(v_grad)
    t = torch.tensor(0.3, dtype=p.dtype, device=device)
    from flows.dynamics import SolveContext

    ctx = SolveContext(basis=E)  # (flows.dynamics: what one solve tells the ODE function)
    zero = torch.zeros(batch, dtype=p.dtype, device=device)

    def ode():
        g, d, _ = dyn(t, (v, zero, p), ctx)
        (g.sum() + d.sum()).backward()

    return m, ode, x, p, t


def eval_cost(M, device, batch=200):
    """Milliseconds of one evaluation of the ODE function with its exact divergence, forward and
    backward, at ``batch`` points inside a chart (:func:`ode_evaluation`): eager, compiled, and the bare
    network (:meth:`flows.VectorField.ambient`, the 32x3 tanh MLP of ``[x, t]``) forward and backward
    on the same points; the network with its ``n`` directional derivatives (:meth:`flows.VectorField.ambient_jvp`
    along a tangent frame), forward and backward: the floor of any exact divergence through this network,
    the geometry excluded; and what compiling costs a training run (:func:`compile_cost`)."""
    m, ode, x, p, t = ode_evaluation(M, device, batch)
    Mf = m.manifold

    def bare():
        m.field.ambient(t.float(), x).sum().backward()

    Ey = Mf.tangent_basis(p)

    def network_jvps():  # the network and its n directional derivatives: what the exact divergence needs
        h, dh = m.field.ambient_jvp(t, p, Ey)
        (h.sum() + dh.sum()).backward()

    out = dict(eager_ms=_median_ms(ode, device), bare_ms=_median_ms(bare, device),
               jvp_ms=_median_ms(network_jvps, device))  # fmt: skip
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
