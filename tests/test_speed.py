"""The speed features: the compiled ODE function, the solver guard's defaults, the benchmark's
memory probe and its published-code option."""

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_cli import FAST, run

import flows.dynamics as dynamics_mod
from flows import MCNF
from train.config import (
    COMPILE_MIN_EPOCHS,
    COMPILE_MIN_EPOCHS_FUSED,
    COMPILE_MIN_EPOCHS_WARM,
    DEFAULT_SOLVER_GUARD,
    resolve_compile,
)
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]


def _loss_and_grads(model, x):
    model.zero_grad()
    loss = -model.log_prob(x).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _model(M, **kw):
    torch.manual_seed(0)
    charts = 2 if M == "Sphere" else 1
    return MCNF(M, charts=charts, train_solver=dict(method="rk4", step_size=0.25), **kw).train()


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++")), reason="inductor needs a C++ compiler")
def test_compiled_ode_function_matches_eager_in_value_and_gradient():
    # the sphere with 2 charts: the first chart's centre is data (no grad), the second's depends on the
    # parameters, and the first stage's v (zeros) needs no gradient either; all of it runs through one
    # compiled graph (a compilation each would triple the cost), and gradients flow through the switch
    from torch._dynamo.utils import counters

    eager, comp = _model("Sphere"), _model("Sphere").compile_ode()
    x = eager.manifold.random(64, generator=torch.Generator().manual_seed(1))
    l0, g0 = _loss_and_grads(eager, x)
    counters.clear()
    l1, g1 = _loss_and_grads(comp, x)
    assert comp.dynamics.compiled, "compilation fell back to eager"
    assert counters["stats"]["unique_graphs"] <= 1, dict(counters["stats"])  # 0: compiled by an earlier test
    assert torch.allclose(l0, l1, atol=1e-5, rtol=1e-5)
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # a second compiled model with other weights runs its own weights, not the first one's
    torch.manual_seed(1)
    other = MCNF("Sphere", charts=2, train_solver=dict(method="rk4", step_size=0.25)).train()
    other_c = copy.deepcopy(other).compile_ode()
    assert torch.allclose(_loss_and_grads(other, x)[0], _loss_and_grads(other_c, x)[0], atol=1e-5)
    assert not torch.allclose(_loss_and_grads(other_c, x)[0], l1, atol=1e-3)
    # evaluation stays eager (other batch sizes, float64) and is unaffected
    comp.eval()
    eager.eval()
    with torch.no_grad():
        assert torch.allclose(comp.log_prob(x[:7]), eager.log_prob(x[:7]), atol=1e-5)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(device_type="cpu"):
        def f(*a, **k):
            raise RuntimeError("no C++ compiler found\nlong details")

        return f

    monkeypatch.setattr(dynamics_mod, "_compiled_chart_divergence", broken)  # flows/dynamics.py
    eager, comp = _model("Hyperboloid"), _model("Hyperboloid").compile_ode()
    x = eager.manifold.random(32, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        l1, _ = _loss_and_grads(comp, x)
    assert any("torch.compile failed (no C++ compiler found)" in str(m.message) for m in w)
    assert not comp.dynamics.compiled
    l0, _ = _loss_and_grads(eager, x)
    assert torch.equal(l0, l1)


def test_compile_refuses_the_autograd_divergence():
    with pytest.raises(ValueError, match="closed-form divergences"):
        MCNF("Sphere", divergence="exact_autograd").compile_ode()


def _args(**kw):
    base = dict(compile="auto", objective="mle", divergence="exact")
    return argparse.Namespace(**{**base, **kw})


def test_compile_auto_rule():
    cpu = torch.device("cpu")
    has_cxx = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    assert resolve_compile(_args(), COMPILE_MIN_EPOCHS, cpu) == bool(has_cxx)
    assert not resolve_compile(_args(), COMPILE_MIN_EPOCHS - 1, cpu)  # the demo's 300 epochs stay eager...
    # ... unless inductor's cache holds the run's graph (train/compile_cache.py)
    assert resolve_compile(_args(), COMPILE_MIN_EPOCHS_WARM, cpu, warm=True) == bool(has_cxx)
    assert not resolve_compile(_args(), COMPILE_MIN_EPOCHS_WARM - 1, cpu, warm=True)
    # a model whose eager ODE function is flows/fused.py's has less to gain: its own thresholds
    cold, warm = COMPILE_MIN_EPOCHS_FUSED
    assert cold > COMPILE_MIN_EPOCHS and warm > COMPILE_MIN_EPOCHS_WARM
    assert resolve_compile(_args(), cold, cpu, fused=True) == bool(has_cxx)
    assert not resolve_compile(_args(), cold - 1, cpu, fused=True)
    assert resolve_compile(_args(), warm, cpu, warm=True, fused=True) == bool(has_cxx)
    assert not resolve_compile(_args(), warm - 1, cpu, warm=True, fused=True)
    # with the C++ kernel (flows/native.py) a compiled step is no faster: auto stays eager; on compiles
    assert not resolve_compile(_args(), 10**6, cpu, warm=True, fused=True, native=True)
    assert resolve_compile(_args(compile="on"), 1, cpu, fused=True, native=True)
    assert not resolve_compile(_args(compile="off"), 10**5, cpu, warm=True)
    assert not resolve_compile(_args(objective="fm"), 10**5, cpu)
    assert not resolve_compile(_args(divergence="exact_autograd"), 10**5, cpu)
    assert resolve_compile(_args(compile="on"), 1, cpu)
    assert not resolve_compile(_args(compile="off"), 10**5, cpu)
    with pytest.raises(UserError, match="nothing to compile"):
        resolve_compile(_args(compile="on", objective="fm"), 10, cpu)


def test_cli_compile_flag_refusal_and_record(tmp_path):
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 2, "--objective", "fm", "--compile", "on",
            "--dev", "cpu", "--out", tmp_path / "a", *FAST)  # fmt: skip
    assert (
        r.returncode == 2 and "--compile on: nothing to compile" in r.stderr and "Traceback" not in r.stderr
    )
    r = run(
        "--M",
        "Sphere",
        "--dataset",
        "1wrapped",
        "--epochs",
        2,
        "--dev",
        "cpu",
        "--out",
        tmp_path / "b",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["compiled"] is False and m["args"]["compile"] == "auto"  # 2 epochs: auto stays eager


@pytest.mark.parametrize(
    "extra, guard, step",
    [
        ([], DEFAULT_SOLVER_GUARD, 0.25),  # the default: rk4 step 1/4 under the guard
        (["--solver_guard", "0"], 0.0, 0.25),
        (["--reference_settings"], 0.0, None),  # the published configuration as it is (dopri5)
        (["--solver", "dopri5"], 0.0, 0.25),  # adaptive: no guard (the unused step keeps its default)
    ],
)
def test_solver_guard_defaults(tmp_path, extra, guard, step):
    r = run("--M", "Hyperboloid", "--dataset", "1wrapped", "--epochs", 2, "--dev", "cpu", "--out", tmp_path,
            *extra, *FAST)  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["args"]["solver_guard"] == guard
    assert m["args"]["step_size"] == step
    checks = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert all(("guard" in h) == bool(guard) for h in checks)


def test_benchmark_memory_probe_separates_the_baseline():
    r = subprocess.run([sys.executable, "-m", "benchmarks.benchmark", "--probe", "Sphere/default", "--dev", "cpu"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    peak, base = map(float, r.stdout.split())
    assert base > 50  # Python and torch
    assert peak >= base and peak - base < 500  # 3 steps of a 32x3 field at batch 200


def test_benchmark_published_option_refuses_a_folder_that_is_not_the_published_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.benchmark", "--published", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert r.returncode == 2 and "is not a clone of the published repository" in r.stderr


# -- kinetic-energy and Jacobian-Frobenius regularization (Finlay et al. 2020) ----------------------


def test_frobenius_integrand_equals_the_autograd_covariant_derivative():
    from flows import divergence as div_mod

    for M in ("Sphere", "Hyperboloid"):
        torch.manual_seed(0)
        m = MCNF(M)
        Mf, field = m.manifold, m.field.double()
        y = Mf.random(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        E = Mf.tangent_basis(y)
        v = torch.zeros(5, Mf.dim, dtype=torch.float64)
        t = torch.tensor(0.4, dtype=torch.float64)
        _, _, ke, jf = div_mod.chart_divergence(Mf, field, t, y, v, E, reg=True)
        f = field(t, y)
        assert torch.allclose(ke, Mf.inner(y, f, f))
        want = torch.zeros(5, dtype=torch.float64)
        for i in range(Mf.dim):
            _, d = torch.func.jvp(lambda yy: field(t, yy), (y,), (E[:, i],))
            cov = Mf.proju(y, d)
            want = want + Mf.inner(y, cov, cov)
        assert torch.allclose(jf, want, rtol=1e-10, atol=1e-12)


def test_kinetic_regularization_is_the_integral_of_the_speed_squared_along_the_trajectory():
    torch.manual_seed(0)
    m = MCNF("Hyperboloid", kinetic=1.0, train_solver=dict(method="rk4", step_size=1 / 64)).double().train()
    x = m.manifold.random(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = m.log_prob_and_regularization(x)[1].detach()
    # trapezoid rule on 129 points of the trajectory, each reached by an accurate solve from x
    m.eval()
    ts = torch.linspace(0, 1, 129, dtype=torch.float64)
    speed2 = []
    with torch.no_grad():
        for t in ts.tolist():
            y = x if t == 0 else m._flow(x, 0.0, t, with_div=False)[0]
            f = m.field(torch.tensor(t, dtype=torch.float64), y)
            speed2.append(m.manifold.inner(y, f, f))
    want = torch.trapezoid(torch.stack(speed2), ts, dim=0)
    assert torch.allclose(got, want, rtol=2e-4), (got, want)


def test_hutchinson_frobenius_is_unbiased():
    from flows import divergence as div_mod

    torch.manual_seed(0)
    m = MCNF("Sphere", dim=4)
    Mf, field = m.manifold, m.field.double()
    y = Mf.random(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64).expand(20000, -1)
    E, v = Mf.tangent_basis(y), torch.zeros(20000, Mf.dim, dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    noise = div_mod.sample_noise(
        v.shape, "rademacher", dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    )
    *_, exact = div_mod.chart_divergence(Mf, field, t, y, v, E, reg=True)
    *_, est = div_mod.chart_divergence(Mf, field, t, y, v, E, noise=noise, reg=True)
    se = est.std() / 20000**0.5
    assert abs(est.mean() - exact[0]) < 5 * se


def test_regularized_loss_through_the_cli_and_refusals(tmp_path):
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 3, "--kinetic", "0.01", "--jacobian", "0.01",
            "--dev", "cpu", "--out", tmp_path / "a", *FAST)  # fmt: skip
    assert r.returncode == 0, r.stderr
    from flows import load_model

    assert load_model(tmp_path / "a" / "checkpoint.pt").config["kinetic"] == 0.01
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 3, "--kinetic", "0.01",
            "--divergence", "exact_autograd", "--dev", "cpu", "--out", tmp_path / "b", *FAST)  # fmt: skip
    assert r.returncode == 2 and "closed-form divergence" in r.stderr
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 3, "--jacobian", "0.01", "--objective", "fm",
            "--dev", "cpu", "--out", tmp_path / "c", *FAST)  # fmt: skip
    assert r.returncode == 2 and "--jacobian" in r.stderr


def test_benchmark_page_keeps_the_sections_of_the_other_benchmark_scripts(tmp_path):
    from benchmarks import dimensions, regularization
    from benchmarks.benchmark import keep_other_sections

    old = f"# old\n\n{dimensions.BEGIN}\n## Dimensions\nrow d\n{dimensions.END}\n\n{regularization.BEGIN}\nrow r\n{regularization.END}\n"
    md = tmp_path / "b.md"
    md.write_text("# Benchmark\n\nnew table\n")
    keep_other_sections(old, md)
    text = md.read_text()
    assert text.startswith("# Benchmark\n\nnew table") and "row d" in text and "row r" in text
    assert text.index(dimensions.BEGIN) < text.index(regularization.BEGIN)


def test_solver_guard_checks_on_its_own_schedule_and_resumes(tmp_path):
    base = ("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 9, "--dev", "cpu", "--test_size", 300,
            "--quiet", "--eval_freq", 9, "--guard_freq", 3)  # fmt: skip
    r = run(*base, "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["guard_checks"] == 3 and m["guard_seconds"] > 0  # epochs 3, 6, 9
    # the same run in two pieces checks at the same epochs
    r = run(*base, "--out", tmp_path / "b", "--stop_after", 4)
    assert r.returncode == 0, r.stderr
    r = run("--resume", tmp_path / "b" / "checkpoint.pt", "--quiet")
    assert r.returncode == 0, r.stderr
    m2 = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m2["guard_checks"] == 3 and m2["kl"] == m["kl"]


@pytest.mark.parametrize("manifold,charts", [("Hyperboloid", 1), ("Sphere", 4)])
def test_fast_rk4_gives_torchdiffeqs_numbers(manifold, charts):
    """flows.solver.rk4_solve (the default training solve) against torchdiffeq's rk4 on the same model:
    identical log-densities and samples (same operations in the same order; the reverse solve included),
    gradients equal to float rounding (the chart centre's gradient is accumulated in another order)."""
    from data import get_density
    from flows import MCNF

    torch.manual_seed(0)
    m = MCNF(manifold, charts=charts, train_solver=dict(method="rk4", step_size=0.25)).train()
    x = get_density(manifold, "1wrapped").sample(64, generator=torch.Generator().manual_seed(1)).float()
    z = m.manifold.projx(x.flip(0))
    out = {}
    for fast in (False, True):
        m.fast_rk4 = fast
        m.zero_grad()
        lp = m.log_prob(x)
        lp.mean().backward()
        with torch.no_grad():
            inv = m.inverse(z)
        out[fast] = (lp.detach(), inv, torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.equal(out[False][0], out[True][0]) and torch.equal(out[False][1], out[True][1])
    torch.testing.assert_close(out[True][2], out[False][2], rtol=1e-5, atol=1e-6)


def test_cpu_training_flushes_subnormal_floats(tmp_path):
    """Late in long flow-matching runs Adam's moments decay into the subnormal range, where every CPU
    operation on them takes a microcode assist (the step time doubled); the trainer flushes them to zero."""
    code = (
        "import sys, torch; sys.argv = sys.argv[:1] + sys.argv[2:]; import main_density; "
        "before = (torch.tensor([1e-39]) * 1.0).item(); main_density.main(sys.argv[1:]); "
        "print('subnormal', before, (torch.tensor([1e-39]) * 1.0).item())"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", code, "-", "--M", "Sphere", "--dataset", "1wrapped", "--objective", "fm",
                        "--epochs", "2", "--dev", "cpu", "--out", str(tmp_path / "run"), *FAST],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("subnormal")][-1].split()
    if float(line[1]) == 0.0:
        pytest.skip("this CPU flushes subnormal floats already")
    assert float(line[1]) > 0 and float(line[2]) == 0.0, line


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="auto needs a C++ compiler"
)
def test_compile_auto_compiles_short_runs_once_the_cache_is_warm(tmp_path, monkeypatch):
    # a run that compiled leaves a marker beside inductor's cache; a later run with the same graph (same
    # configuration, dtype, batch) compiles from the warm threshold (here the fused kernel's: the hyperboloid
    # with the exact divergence, on its numpy kernel: MCNF_NATIVE=0), any other stays eager.
    # Inductor itself is replaced by the eager function here (its cost is docs/benchmark.md's business).
    import main_density
    from flows import divergence as div_mod
    from flows import fused
    from train import compile_cache

    monkeypatch.setattr(
        fused, "NATIVE", False
    )  # (with the C++ kernel auto never compiles: test_compile_auto_rule)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(
        dynamics_mod, "_compiled_chart_divergence", lambda device_type="cpu": div_mod.chart_divergence
    )
    common = ["--M", "Hyperboloid", "--dataset", "1wrapped", "--dev", "cpu", "--batch_size", "16",
              "--n_hidden", "1", "--flow_hidden_size", "8", *FAST]  # fmt: skip

    calls, compile_ode = [], MCNF.compile_ode
    monkeypatch.setattr(
        MCNF, "compile_ode", lambda self, enable=True: calls.append(enable) or compile_ode(self, enable)
    )

    def compiled(name, *args):
        calls.clear()
        assert main_density.main([*common, *map(str, args), "--out", str(tmp_path / name)]) == 0
        return calls == [True]

    markers = tmp_path / "inductor" / "mcnf_compiled"
    warm_least = COMPILE_MIN_EPOCHS_FUSED[1]
    warm = ("--epochs", warm_least, "--stop_after", 1)
    assert not compiled("cold", *warm) and not markers.exists()  # nothing compiled here before
    assert compiled("on", "--epochs", 2, "--compile", "on") and len(list(markers.iterdir())) == 1
    assert compiled("warm", *warm)
    from torch._inductor import config as inductor_config

    with monkeypatch.context() as m:  # inductor told not to read its cache: every compilation is cold
        m.setattr(inductor_config, "fx_graph_cache", False)
        assert not compiled("cache_off", *warm)
    assert not compiled("short", "--epochs", warm_least - 1, "--stop_after", 1)
    assert not compiled("other_batch", *warm, "--batch_size", 17)  # another graph: not in the cache
    assert not compiled("other_width", *warm, "--flow_hidden_size", 9)
    assert compile_cache.compile_key({"a": 1}, torch.float32, "cpu", 16, False) != compile_cache.compile_key(
        {"a": 1}, torch.float64, "cpu", 16, False
    )
