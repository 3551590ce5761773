"""train/stacking.py and ``main_density.py --stack``: the best flow stacked with KDEs of the training split,
the weights fitted on validation; scripts.earth's scores, checks and page section of it."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from manifolds import Sphere, integrate
from manifolds.distributions import VonMisesFisher
from train.stacking import MAX_KAPPA, Stack, mixture_weights, stack_kappas


def test_the_ladder_runs_from_the_cap_down_by_the_ratio():
    ks = stack_kappas()
    assert ks[-1] == MAX_KAPPA and ks == sorted(ks) and ks[0] >= 10 and ks[0] / 2 < 10
    assert all(b / a == pytest.approx(2.0) for a, b in zip(ks, ks[1:], strict=False))
    assert stack_kappas(100.0, 10.0, 1.0) == pytest.approx([1.0, 10.0, 100.0])
    for bad in ((10.0, 2.0, 20.0), (100.0, 1.0, 1.0), (100.0, 2.0, 0.0)):
        with pytest.raises(ValueError):
            stack_kappas(*bad)


def test_em_recovers_the_weights_of_a_known_mixture_and_is_optimal():
    g = torch.Generator().manual_seed(0)
    n, w = 20_000, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    means = torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64)
    comp = torch.multinomial(w, n, replacement=True, generator=g)
    x = means[comp] + torch.randn(n, generator=g, dtype=torch.float64)
    L = -0.5 * (x[:, None] - means) ** 2 - 0.5 * math.log(2 * math.pi)
    got = mixture_weights(L)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-12) and (got >= 0).all()
    assert torch.allclose(got, w, atol=0.015), got

    def ll(v):
        return float((L + v.log()).logsumexp(1).mean())

    # the maximum: no vertex, no equal weights, no random point of the simplex does better
    others = [torch.eye(3, dtype=torch.float64)[i].clamp_min(1e-300) for i in range(3)]
    others += [torch.full((3,), 1 / 3, dtype=torch.float64)]
    others += [v / v.sum() for v in torch.rand(20, 3, generator=g, dtype=torch.float64)]
    assert all(ll(got) >= ll(v) - 1e-9 for v in others)
    # a part that no point needs goes to (nearly) zero
    L2 = torch.cat([L, L[:, :1] - 30.0], 1)
    assert float(mixture_weights(L2)[-1]) < 1e-6


def test_em_refuses_what_it_cannot_score():
    for bad in (torch.zeros(0, 2), torch.zeros(3), torch.tensor([[0.0, float("-inf")], [float("-inf")] * 2])):
        with pytest.raises(ValueError):
            mixture_weights(bad)


def _toy_stack(weights=None):
    g = torch.Generator().manual_seed(1)
    centers = Sphere(2).random(50, generator=g, dtype=torch.float64)
    kappas = [3.0, 30.0]
    w = [0.5, 0.2, 0.2, 0.1] if weights is None else weights
    flow = VonMisesFisher(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), 5.0)
    return Stack(centers, kappas, w), flow


def test_the_stack_is_a_normalized_density_and_samples_its_parts():
    stack, flow = _toy_stack()
    total = integrate(lambda x: stack.log_prob(flow.log_prob(x.double()), x.double()), Sphere(2),
                      n_radial=300, n_angular=600)  # fmt: skip
    assert total == pytest.approx(1.0, abs=2e-3)
    # the record round-trips to the same density
    again = Stack.from_record(stack.kde.centers, json.loads(json.dumps(stack.record())))
    x = Sphere(2).random(100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(again.log_prob(flow.log_prob(x), x), stack.log_prob(flow.log_prob(x), x))
    # draws: on the sphere, the flow's share from the flow
    marked = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    y = stack.sample(lambda k: marked.expand(k, 3), 4000, torch.Generator().manual_seed(3))
    assert torch.allclose(y.norm(dim=-1), torch.ones(len(y), dtype=torch.float64))
    share = float((y == marked).all(1).double().mean())
    assert share == pytest.approx(0.5, abs=0.03)
    only_flow, _ = _toy_stack([1.0, 0.0, 0.0, 0.0])
    assert (only_flow.sample(lambda k: marked.expand(k, 3), 50) == marked).all()


def test_bad_weights_are_refused():
    for w in ([0.5, 0.5], [0.5, 0.5, 0.5, -0.5], [0.1, 0.1, 0.1, 0.1], [float("nan"), 0.5, 0.5, 0.0]):
        with pytest.raises(ValueError):
            _toy_stack(w)
    good = _toy_stack()[0].record()
    for bad in (
        {},
        {**good, "weight_kernels": "x"},
        {**good, "kappas": [-1.0, 2.0]},
        {**good, "weight_flow": None},
    ):
        with pytest.raises(ValueError, match="stack"):
            Stack.from_record(torch.tensor([[0.0, 0.0, 1.0]]), bad)
    unfitted = Stack(torch.tensor([[0.0, 0.0, 1.0]]), [10.0])
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert unfitted.parts(torch.zeros(1), x).shape == (1, 3)
    with pytest.raises(ValueError, match="no weights"):
        unfitted.log_prob(torch.zeros(1), x)


def test_stack_on_needs_earth_data(tmp_path):
    from tests.test_earth import _run

    r = _run("--M", "Sphere", "--dataset", "4wrapped", "--epochs", 1, "--stack", "on", "--dev", "cpu",
             "--out", tmp_path / "o", "--quiet")  # fmt: skip
    assert r.returncode == 2 and "--stack on" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_a_stacked_run_end_to_end(tmp_path, capsys):
    """A tiny volcano run: off by default at the default budget; a finished run resumed with ``--stack on``
    gains the stack (checkpoint untouched, the flow's scores unchanged); the stack's validation NLL is at
    most the flow's; scripts.earth scores it again (the same test NLL), checks it (integral, tolerances, map)
    and writes its page section."""
    from scripts.earth import stack_lines, stacked
    from tests.test_earth import _run

    out = tmp_path / "volcano_split0"
    r = _run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--epochs", 4, "--eval_freq", 2,
             "--flow_hidden_size", "8", "--n_hidden", "2", "--fourier", "4", "--dev", "cpu", "--out", out,
             "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    before = json.loads((out / "metrics.json").read_text())
    assert "stack" not in before and "stacked with" not in r.stdout
    ckpt = (out / "checkpoint.pt").read_bytes()
    r = _run("--resume", out / "checkpoint.pt", "--stack", "on", "--dev", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert (out / "checkpoint.pt").read_bytes() == ckpt
    assert m["test_nll"] == pytest.approx(before["test_nll"], abs=1e-9)
    assert m["seconds_per_epoch"] == pytest.approx(before["seconds_per_epoch"])
    st = m["stack"]
    assert f"test NLL {st['test_nll']:.4f}" in r.stdout and "stacked with the KDEs" in r.stdout
    w = [st["weight_flow"], *st["weight_kernels"], st["weight_uniform"]]
    assert sum(w) == pytest.approx(1.0) and min(w) >= 0 and st["kappas"] == stack_kappas()
    assert st["val_nll"] <= st["flow_val_nll"] + 1e-9
    a = SimpleNamespace(seeds=[0], integral_seeds=None, figures=str(tmp_path / "figs"), res=12, res_of={},
                        integral_samples=2000, integral_centers=200, data_dir=None, objective="fm", extra=[])  # fmt: skip
    rec = stacked(out, "volcano", 0, a)
    assert rec["stack_test_nll_check"] == pytest.approx(st["test_nll"], abs=1e-6)
    assert abs(rec["stack_integral"] - 1) < 5 * rec["stack_integral_stderr"] + 0.05
    assert abs(rec["stack_test_nll_tol"] - rec["stack_test_nll_tight"]) < 0.01
    assert (tmp_path / "figs" / rec["stack_map_file"]).is_file() and rec["stack_map_err_test_drawn"] < 0.05
    assert 0 < rec["stack_novel_fraction"] <= 1
    # kept beside the run and read back
    assert stacked(out, "volcano", 0, a) == rec
    lines = "\n".join(stack_lines({"volcano": [{**m, **rec}]}, a, tmp_path / "page.md"))
    assert "## Stacked with KDEs of the training split" in lines and f"{st['test_nll']:.3f}" in lines
    assert f"figs/{rec['stack_map_file']}" in lines
    # python -m scripts.earth_stack: ladders judged on validation alone (cross-fitted), a table; bad flags: exit 2
    from scripts import earth_stack
    from utils import run_cli

    capsys.readouterr()
    assert (
        run_cli(earth_stack.main, "scripts.earth_stack", [str(out), "--ratios", "2", "8", "--halvings", "2"])
        == 0
    )
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| volcano |")]
    assert len(table) == 2 and all(math.isfinite(float(line.split("|")[5].split()[0])) for line in table)
    assert run_cli(earth_stack.main, "scripts.earth_stack", [str(out), "--ratios", "1"]) == 2
    assert run_cli(earth_stack.main, "scripts.earth_stack", [str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_a_doubling_ladder_takes_squares_and_matches_each_kernel_alone():
    """MultiscaleKDE.kernel_log_probs on a ladder of doubling concentrations (the stack's) squares one exponential
    instead of taking one per kernel: the same log-densities as each concentration's KDE alone, also far from
    every centre (no underflow: the nearest centre's term is 1)."""
    from manifolds.distributions import MultiscaleKDE

    g = torch.Generator().manual_seed(4)
    centers = Sphere(2).random(300, generator=g, dtype=torch.float64)
    kappas = stack_kappas()
    x = torch.cat([Sphere(2).random(200, generator=g, dtype=torch.float64), centers[:20], -centers[:5]])
    got = MultiscaleKDE(centers, kappas).kernel_log_probs(x)
    want = torch.cat([MultiscaleKDE(centers, [k]).kernel_log_probs(x) for k in kappas], 1)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-9)
