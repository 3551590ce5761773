"""The paper's baselines (flows.baselines): exact densities, invertibility, and the CLI's --model."""

import json
import math

import pytest
import torch

from flows import NCP, PRNVP, WHC, load_model
from manifolds import integrate
from tests.test_cli import FAST, run

CASES = [(WHC, "Hyperboloid", 2), (WHC, "Hyperboloid", 3), (PRNVP, "Hyperboloid", 2), (PRNVP, "Hyperboloid", 3),
         (NCP, "Sphere", 2)]  # fmt: skip
IDS = [f"{c.__name__}-{M}{n}" for c, M, n in CASES]


def random_model(cls, M, dim, std=0.1, seed=3):
    """A float64 model whose layers are all far from the identity (random conditioner weights)."""
    m = cls(M, dim=dim).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return m


@pytest.mark.parametrize("cls,M,dim", CASES, ids=IDS)
def test_density_integrates_to_one(cls, M, dim):
    m = random_model(cls, M, dim)
    if M == "Sphere":
        grid = dict(n_radial=300, n_angular=300)
    elif dim == 2:
        grid = dict(n_radial=240, n_angular=360, r_max=10.0)
    else:
        grid = dict(n_radial=120, n_angular=60, r_max=9.0)
    with torch.no_grad():
        total = integrate(m.log_prob, m.manifold, **grid)
        base = integrate(m.base(torch.float64, "cpu").log_prob, m.manifold, **grid)  # the grid's own error
    assert abs(total - 1) < 3e-3 and abs(total - base) < 3e-3, (total, base)
    # and the model is not its base: the check would be empty for identity layers
    x = m.manifold.random(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        gap = (m.log_prob(x) - m.base(torch.float64, "cpu").log_prob(x)).abs().max()
    assert gap > 0.05


def chart_logdet(m, x):
    """``log |det|`` of the data -> base map in exponential charts at ``x`` and at its image (autograd)."""
    M = m.manifold
    z = m(x[None])[0][0].detach()

    def f(v):
        return M.chart_inverse(z, m(M.chart(x, v)[None])[0][0])

    J = torch.autograd.functional.jacobian(f, torch.zeros(M.dim, dtype=x.dtype))
    return torch.linalg.slogdet(J)[1]


@pytest.mark.parametrize("cls,M,dim", CASES, ids=IDS)
def test_logdet_matches_autograd_jacobian(cls, M, dim):
    """``log p(x) = log p_base(z) + delta``: delta equals log|det| of the map's Jacobian in orthonormal
    tangent coordinates (exponential charts are isometric at their centres)."""
    m = random_model(cls, M, dim)
    x = m.sample(6, generator=torch.Generator().manual_seed(1))
    _, delta = m(x)
    for i in range(len(x)):
        torch.testing.assert_close(delta[i], chart_logdet(m, x[i]), atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("cls,M,dim", CASES, ids=IDS)
def test_inverse_of_forward_and_sampling(cls, M, dim):
    m = random_model(cls, M, dim)
    x = m.sample(500, generator=torch.Generator().manual_seed(2))
    z, delta = m(x)
    x_back, delta_back = m.inverse(z, return_delta=True)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(delta_back, delta, atol=1e-8, rtol=0)
    # samples carry their own log-density, equal to log_prob at the sample
    xs, lp = m.sample(300, generator=torch.Generator().manual_seed(4), return_log_prob=True)
    with torch.no_grad():
        torch.testing.assert_close(lp, m.log_prob(xs), atol=1e-8, rtol=0)


def test_whc_closed_form_of_one_dimensional_blocks_equals_the_general_layer():
    """On H^2 every WHC block is one-dimensional; its closed form (translation by asinh t) must equal
    exp/transport/log on H^1 computed by the general path."""
    m = random_model(WHC, "Hyperboloid", 2)
    x = m.sample(200, generator=torch.Generator().manual_seed(5))
    z1, d1 = m(x)
    for layer in m.layers:
        layer.fast = False
    z2, d2 = m(x)
    torch.testing.assert_close(z1, z2, atol=1e-10, rtol=0)
    torch.testing.assert_close(d1, d2, atol=1e-10, rtol=0)


def test_untrained_baseline_is_its_base():
    for cls, M in [(WHC, "Hyperboloid"), (PRNVP, "Hyperboloid"), (NCP, "Sphere")]:
        m = cls(M).double()
        x = m.sample(100, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(
            m.log_prob(x), m.base(torch.float64, "cpu").log_prob(x), atol=1e-10, rtol=0
        )


def test_wrong_manifold_or_settings_raise():
    with pytest.raises(ValueError, match="hyperboloid"):
        WHC("Sphere")
    with pytest.raises(ValueError, match="sphere"):
        NCP("Hyperboloid")
    with pytest.raises(ValueError, match="2-sphere"):
        NCP("Sphere", dim=3)
    with pytest.raises(ValueError, match="dim >= 2"):
        PRNVP("Hyperboloid", dim=1)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "whc", "--M", "Sphere"], "--model whc is a flow on the Hyperboloid, not the Sphere"),
        (["--model", "ncp", "--M", "Hyperboloid"], "--model ncp is a flow on the Sphere"),
        (["--model", "prnvp", "--charts", "4"], "--charts only mean something for --model mcnf"),
        (["--model", "whc", "--solver", "rk4"], "--solver only mean something for --model mcnf"),
        (["--model", "ncp", "--M", "Sphere", "--objective", "fm"], "maximum likelihood only"),
        (["--model", "ncp", "--M", "Sphere", "--dim", "3"], "2-sphere"),
        (["--model", "whc", "--compile", "on"], "nothing to compile"),
        (["--blocks", "4"], "--blocks set the baseline flows"),
        (["--model", "whc", "--components", "3"], "--components sets the mixtures of --model ncp"),
        (["--model", "realnvp"], "invalid choice"),
    ],
)
def test_cli_refuses_bad_model_settings(tmp_path, capsys, args, message):
    """Exit 2 with one line, nothing written (in-process; one refusal runs as a subprocess below)."""
    import main_density

    try:
        code = main_density.main(
            [*args, "--epochs", "2", "--dev", "cpu", "--out", str(tmp_path / "o"), *FAST]
        )
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_trains_saves_loads_and_resumes_a_baseline(tmp_path):
    out = tmp_path / "ncp"
    common = [
        "--M",
        "Sphere",
        "--dataset",
        "4wrapped",
        "--model",
        "ncp",
        "--dev",
        "cpu",
        "--lr",
        "1e-2",
        *FAST,
    ]
    r = run(*common, "--epochs", 4, "--stop_after", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    r = run("--resume", out / "checkpoint.pt", "--save", "--res", 30, "--samples", 50, "--quiet")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "ncp" and m["epochs"] == 4 and m["nfe_forward"] == 0 and not m["compiled"]
    assert m["parameters"] > 0 and abs(m["kl"] - (m["test_nll"] - m["entropy"])) < 1e-9
    assert (out / "4wrapped_Sphere.png").is_file() and (out / "samples.png").is_file()
    model = load_model(out / "checkpoint.pt")
    assert isinstance(model, NCP) and not model.training
    # the loaded model scores the run's test points as the run did
    from data import get_density
    from train.tasks import TEST_SEED

    x = get_density("Sphere", "4wrapped").sample(300, generator=torch.Generator().manual_seed(TEST_SEED))
    with torch.no_grad():
        nll = -model.log_prob(x.float()).double().mean().item()
    assert abs(nll - m["test_nll"]) < 1e-4
    # a second run without --out gets its own folder named after the model
    r = run(*common, "--epochs", 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "results" / "4wrapped_Sphere_ncp" / "metrics.json").is_file()
    # a model on the wrong manifold, as a user's shell sees it
    r = run("--model", "ncp", "--M", "Hyperboloid", "--epochs", 1, "--out", tmp_path / "bad", *FAST)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()


def test_sample_efficiency_arithmetic():
    """scripts.baselines: the baseline's best KL, where the MCNF reaches it, the ratios and the sentence."""
    from types import SimpleNamespace

    from scripts.baselines import efficiency, statement

    a = SimpleNamespace(budgets=[10, 100, 1000, 10000], mcnf_max=1000)

    def m(kl, se=0.001):
        return ({"kl": kl, "kl_stderr": se}, None, None)

    results = {
        ("S", "d", "mcnf", 10): m(1.0),
        ("S", "d", "mcnf", 100): m(0.1),
        ("S", "d", "mcnf", 1000): m(0.01),
    }
    results.update(
        {("S", "d", "ncp", e): m(k) for e, k in [(10, 2.0), (100, 1.0), (1000, 0.5), (10000, 0.1)]}
    )
    r = efficiency(results, "S", "d", "ncp", a)
    assert r["best_kl"] == 0.1 and r["best_n"] == 10000 * 200 and r["mcnf_n"] == 100 * 200
    assert r["ratio"] == 100 and abs(r["ratio_interp"] - 100) < 1e-9  # the crossing is exactly on the grid
    assert r["mcnf_at_max"] == 0.01 and r["base_at_max"] == 0.5 and r["resolved"]
    # a best KL between two MCNF budgets: log-log interpolation, 0.3 between 1.0 (10) and 0.1 (100)
    results[("S", "d", "ncp", 10000)] = m(0.3)
    r = efficiency(results, "S", "d", "ncp", a)
    assert r["best_kl"] == 0.3 and r["mcnf_n"] == 100 * 200
    crossing = 10 * 10 ** (-math.log10(0.3))  # KL falls one decade per decade of samples from 1.0 at 10
    assert abs(r["ratio_interp"] - 10000 / crossing) < 1e-6
    text = statement([("S", "d", "ncp", r)], a)[0]
    assert "at least 8x fewer samples in 1" in text and "lower in 1 of 1" in text
    # within noise: not ranked
    results[("S", "d", "ncp", 10000)] = m(0.3, se=0.2)
    text = statement([("S", "d", "ncp", efficiency(results, "S", "d", "ncp", a))], a)[0]
    assert "Not ranked" in text


def test_one_mlp_for_every_model_and_old_conditioner_checkpoints_load():
    """The vector field and the conditioners are the same module (flows.mlp.MLP); a conditioner saved as the
    nn.Sequential of earlier releases (Linear i at entry 2 i) loads into it with the same outputs."""
    from torch import nn

    from flows import MCNF, WHC
    from flows.mlp import MLP

    assert isinstance(MCNF("Sphere").field, MLP)
    whc = WHC("Hyperboloid", dim=2, hidden=8, n_hidden=2)
    nets = [m for m in whc.modules() if isinstance(m, MLP)]
    assert nets and all(len(n.layers) == 3 for n in nets)
    torch.manual_seed(0)
    old = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
    new = MLP(3, 4, 8, 2, "tanh")
    new.load_state_dict(old.state_dict())
    z = torch.randn(5, 3)
    torch.testing.assert_close(new(z), old(z), rtol=0, atol=0)
