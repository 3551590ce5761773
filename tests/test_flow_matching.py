"""Riemannian flow matching: the conditional paths, the loss, training, and its command line."""

import json
import math

import pytest
import torch
from test_run_safety import one_line_error, run

from flows import MCNF, conditional_path, flow_matching_loss, load_model, model_integral, read_checkpoint
from manifolds import get_manifold

CASES = [(m, n) for m in ("Sphere", "Hyperboloid") for n in (2, 3, 5)]


def _pairs(M, n_pairs, near_antipodal=False):
    g = torch.Generator().manual_seed(1)
    x = M.random(n_pairs, generator=g, dtype=torch.float64)
    z = M.random(n_pairs, generator=g, dtype=torch.float64)
    if near_antipodal:  # 1 + <x, z> between 1e-5 and 1e-3: |log_x z| close to pi
        eps = 10 ** (-3 - 2 * torch.rand(n_pairs, 1, generator=g, dtype=torch.float64))
        w = M.proju(x, z)
        z = M.projx(-x + (2 * eps).sqrt() * w / w.norm(dim=-1, keepdim=True))
    return x, z


@pytest.mark.parametrize("manifold,n", CASES)
@pytest.mark.parametrize("near_antipodal", [False, True])
def test_conditional_velocity_is_the_derivative_of_the_path(manifold, n, near_antipodal):
    if near_antipodal and manifold == "Hyperboloid":
        pytest.skip("the hyperboloid has no antipodes")
    M = get_manifold(manifold, n)
    x, z = _pairs(M, 200, near_antipodal)
    t = torch.rand(200, dtype=torch.float64)
    xt, ut, keep = conditional_path(M, x, z, t)
    h = 1e-6
    xp, _, _ = conditional_path(M, x, z, t + h)
    xm, _, _ = conditional_path(M, x, z, t - h)
    fd = (xp - xm) / (2 * h)
    scale = 1 + M.dist(x, z)[:, None]  # |u_t| = d(x, z)
    assert keep.all()
    assert ((fd - ut).abs() / scale).max() < 1e-6
    # the path starts at the data point, ends at the base point, stays on M, and u_t is tangent
    x0, _, _ = conditional_path(M, x, z, torch.zeros(200, dtype=torch.float64))
    x1, _, _ = conditional_path(M, x, z, torch.ones(200, dtype=torch.float64))
    torch.testing.assert_close(x0, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(x1, z, atol=1e-6 if near_antipodal else 1e-9, rtol=0)
    torch.testing.assert_close(M.inner(xt, xt, xt), torch.full((200,), 1.0 if manifold == "Sphere" else -1.0))
    assert M.inner(xt, xt, ut).abs().max() < 1e-9 * scale.max() ** 2
    torch.testing.assert_close(M.norm(xt, ut), M.dist(x, z), atol=1e-7, rtol=1e-7)


def test_exactly_antipodal_pairs_are_dropped_not_nan():
    M = get_manifold("Sphere", 2)
    x = M.random(8, dtype=torch.float64)
    z = torch.cat([-x[:4], M.random(4, dtype=torch.float64)])
    _, ut, keep = conditional_path(M, x, z, torch.full((8,), 0.5, dtype=torch.float64))
    assert keep.tolist() == [False] * 4 + [True] * 4
    model = MCNF("Sphere", hidden=8).double()
    loss = flow_matching_loss(model, x, z, torch.full((8,), 0.5, dtype=torch.float64))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("r", [2.0, 5.0, 7.0])
def test_float32_data_far_out_on_the_hyperboloid_gives_the_float64_targets(r):
    """Training batches are float32: a point at r = 7 has x_0 ~ 550 and float32 rounding puts it off
    the sheet by ~0.04 in <x, x>_L; without re-projection log_x z was wrong by 10x and more. (The
    paper's densities reach r ~ 7; beyond r ~ 10 the ambient closed forms lose every digit even in
    float64, docs/math.md.)"""
    M = get_manifold("Hyperboloid", 2)
    g = torch.Generator().manual_seed(0)
    a = 2 * torch.pi * torch.rand(256, generator=g, dtype=torch.float64)
    o = M.origin(dtype=torch.float64)
    x64 = M.expmap(o, r * torch.stack([torch.zeros_like(a), a.cos(), a.sin()], -1))
    z = M.random(256, generator=g, dtype=torch.float64)
    t = torch.rand(256, generator=g, dtype=torch.float64)
    xt64, ut64, _ = conditional_path(M, x64, z, t)
    xt32, ut32, _ = conditional_path(M, x64.float(), z, t)
    # the float32 point differs from the float64 one by its rounding (relative 6e-8 of x_0 ~ e^r / 2),
    # so the target may differ by that much times the distance, never by O(1)
    tol = 1e-6 * r * torch.cosh(torch.tensor(r)).item()
    assert (M.norm(xt32, ut32) - M.dist(x64, z)).abs().max() < tol
    assert (M.norm(xt64, ut64) - M.dist(x64, z)).abs().max() < tol


def test_per_sample_times_match_scalar_times():
    model = MCNF("Hyperboloid", dim=3, hidden=16, activation="silu").double()
    x = model.manifold.random(5, dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    each = torch.stack([model.field(float(t[i]), x[i : i + 1])[0] for i in range(5)])
    torch.testing.assert_close(model.field(t, x), each, atol=1e-12, rtol=0)
    torch.testing.assert_close(model.field(t[:, None], x), each, atol=1e-12, rtol=0)


@pytest.mark.parametrize("manifold,dataset", [("Sphere", "1wrapped"), ("Hyperboloid", "1wrapped")])
def test_flow_matching_lowers_the_exact_test_nll_and_stays_normalized(manifold, dataset):
    from data import get_density

    torch.manual_seed(0)
    den = get_density(manifold, dataset)
    act = "silu" if manifold == "Sphere" else "tanh"  # as the fm presets (train/config.py)
    model = MCNF(manifold, hidden=64, activation=act, eval_solver=dict(atol=1e-6, rtol=1e-6)).double()
    x_test = den.sample(300, generator=torch.Generator().manual_seed(5))
    nll = lambda: -model.eval().log_prob(x_test).mean().item()  # noqa: E731
    before = nll()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(300):
        x = den.sample(256, generator=g)
        z = model.sample_base(256, g)
        loss = flow_matching_loss(model, x, z, torch.rand(256, generator=g, dtype=torch.float64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = nll()
    entropy = -den.log_prob(x_test).mean().item()
    assert after < before - 0.3 and after > entropy - 0.05, (before, after, entropy)
    grid = dict(n_radial=60, n_angular=120) if manifold == "Sphere" else dict(n_radial=120, n_angular=120)
    assert abs(model_integral(model.eval(), **grid) - 1) < 5e-3


FM = ["--objective", "fm", "--dev", "cpu", "--quiet", "--test_size", "200", "--flow_hidden_size", "16",
      "--batch_size", "64", "--eval_tol", "1e-4"]  # fmt: skip


def test_fm_run_saves_ema_weights_that_load_model_uses_and_resumes_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [
        *FM,
        "--M",
        "Sphere",
        "--dataset",
        "1wrapped",
        "--ema",
        "0.9",
        "--epochs",
        40,
        "--eval_freq",
        20,
    ]
    r = run(*common, "--out", a)
    assert r.returncode == 0, r.stderr
    assert "train FM loss" in r.stdout
    ckpt = read_checkpoint(a / "checkpoint.pt", required=("model", "raw_model"))
    model = load_model(a / "checkpoint.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    assert any(not torch.equal(ckpt["model"][k], ckpt["raw_model"][k]) for k in ckpt["model"])
    assert ckpt["args"]["objective"] == "fm" and ckpt["args"]["optimizer"] == "adamw"
    # stopped and resumed: the same run, to the bit
    assert run(*common, "--out", b, "--stop_after", 25).returncode == 0
    r = run("--resume", b / "checkpoint.pt", "--quiet")
    assert r.returncode == 0, r.stderr
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["test_nll"] == mb["test_nll"]


@pytest.mark.parametrize("base", ["preset", "default"])
def test_fm_on_earth_data_uses_a_broad_kde_base_and_reports_the_test_split(tmp_path, base):
    data = tmp_path / "earth"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    lat = 30 + 5 * torch.randn(200, generator=g)
    lon = -100 + 5 * torch.randn(200, generator=g)
    (data / "volerup.csv").write_text(
        "".join(f"{a:.4f},{b:.4f}\n" for a, b in zip(lat.tolist(), lon.tolist(), strict=True))
    )
    flags = [] if base == "preset" else ["--base", "default"]
    r = run(*FM, "--M", "Sphere", "--dataset", "volcano", "--data_dir", data, "--epochs", 30, "--eval_freq", 15,
            *flags, "--out", tmp_path / "o")  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (
        m["args"]["conc"] == 0.0 and m["args"]["lr_schedule"] == "cosine" and m["best_epoch"] in (0, 15, 30)
    )
    if base == "preset":  # the Earth preset: a KDE of broad kernels, paired coupling, 256 Fourier features
        a = m["args"]
        assert (
            a["base"] == "kde"
            and a["base_kappas"] == [10.0, 30.0, 100.0, 400.0]
            and a["coupling"] == "paired"
        )
        assert a["fourier"] == 256 and a["base_n"] == 160  # the training split of 200 events
    else:
        assert m["args"]["base"] == "default" and m["args"]["coupling"] == "independent"
    assert m["test_nll"] < 2.531  # below the uniform density's log-area 2.531: it learned something


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--solver", "rk4"], "--solver"),
        (["--adjoint"], "--adjoint"),
        (["--step_size", "0.1"], "--step_size"),
        (["--reference_settings"], "--reference_settings"),
        (["--num_drops", "3"], "--num_drops"),
        (["--warmup", "50", "--epochs", "50"], "--warmup"),
        (["--M", "Hyperboloid", "--dataset", "1wrapped", "--conc", "0"], "--conc 0"),
        (["--ema", "1"], "--ema"),
    ],
)
def test_bad_fm_combinations_are_one_line_errors(tmp_path, args, needle):
    base = [*FM, "--epochs", 5]
    if "--M" not in args:
        base += ["--M", "Sphere", "--dataset", "1wrapped"]
    one_line_error(run(*base, *args, "--out", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("manifold", ["Sphere", "Hyperboloid"])
def test_fourier_feature_field_has_exact_jvp_and_divergence(manifold):
    """The written-out forward-mode JVP through sin/cos(Bx) equals autograd, so the closed-form
    divergence of a Fourier-feature field equals the autograd one."""
    torch.manual_seed(0)
    model = MCNF(manifold, hidden=24, activation="tanh", fourier=8, fourier_scale=5.0).double()
    x = model.manifold.random(6, dtype=torch.float64, scale=0.5) if manifold == "Hyperboloid" else (
        model.manifold.random(6, dtype=torch.float64))  # fmt: skip
    dirs = torch.randn(6, 2, 3, dtype=torch.float64)
    _, dh = model.field.ambient_jvp(0.3, x, dirs)
    J = torch.autograd.functional.jacobian(lambda xx: model.field.ambient(0.3, xx).sum(0), x)
    torch.testing.assert_close(dh, torch.einsum("obi,bki->bko", J, dirs), atol=1e-12, rtol=1e-10)
    other = MCNF(
        manifold, hidden=24, activation="tanh", fourier=8, fourier_scale=5.0, divergence="exact_autograd"
    )
    other = other.double()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.eval().log_prob(x), other.eval().log_prob(x), atol=1e-9, rtol=1e-9)
    assert model.config["fourier"] == 8 and "field.freqs" in model.state_dict()
    assert "fourier" not in MCNF(manifold).config  # configs without features are as before


def test_accurate_figure_model_keeps_the_evaluation_solver():
    from flows import figure_model

    model = MCNF("Sphere", hidden=16, activation="silu", eval_solver=dict(atol=1e-6, rtol=1e-6)).float()
    fig = figure_model(model, accurate=True)
    assert next(fig.parameters()).dtype == torch.float64 and fig.eval_solver == model.eval_solver
    assert figure_model(model).eval_solver.method == "rk4"  # the default: a fixed-step figure solver
    x = model.manifold.random(20, dtype=torch.float64)
    torch.testing.assert_close(fig.log_prob(x), model.double().eval().log_prob(x), atol=1e-12, rtol=0)


def test_amp_bf16_trains_flow_matching_and_is_refused_for_mle(tmp_path):
    import main_density

    out = tmp_path / "r"
    code = main_density.main(["--M", "Sphere", "--dataset", "1wrapped", "--objective", "fm", "--amp", "bf16",
                              "--epochs", "20", "--eval_freq", "20", "--flow_hidden_size", "16", "--test_size", "300",
                              "--dev", "cpu", "--quiet", "--out", str(out)])  # fmt: skip
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["args"]["amp"] == "bf16" and math.isfinite(m["kl"])
    code = main_density.main(["--M", "Sphere", "--dataset", "1wrapped", "--amp", "bf16", "--epochs", "2", "--dev", "cpu",
                              "--quiet", "--out", str(tmp_path / "mle")])  # fmt: skip
    assert code == 2 and not (tmp_path / "mle").exists()


@pytest.mark.parametrize("manifold", ["Sphere", "Hyperboloid"])
def test_field_average_is_one_field_with_an_exact_divergence(manifold):
    """MCNF(ensemble=K): the field is the mean of K members, its JVPs the mean of theirs, so the closed-form
    divergence (and the log-density) equals autograd's; flow matching regresses member k on rows k::K."""
    from flows import FieldAverage

    torch.manual_seed(0)
    model = MCNF(manifold, hidden=12, activation="tanh", fourier=4, fourier_scale=3.0, ensemble=3).double()
    assert isinstance(model.field, FieldAverage) and model.config["ensemble"] == 3
    x = model.manifold.random(6, dtype=torch.float64, scale=0.5) if manifold == "Hyperboloid" else (
        model.manifold.random(6, dtype=torch.float64))  # fmt: skip
    members = model.field.members
    mean = sum(f(0.3, x) for f in members) / 3
    torch.testing.assert_close(model.field(0.3, x), mean, atol=1e-14, rtol=0)
    assert not torch.allclose(members[0](0.3, x), members[1](0.3, x))  # members start apart
    dirs = torch.randn(6, 2, 3, dtype=torch.float64)
    _, dh = model.field.ambient_jvp(0.3, x, dirs)
    J = torch.autograd.functional.jacobian(lambda xx: model.field.ambient(0.3, xx).sum(0), x)
    torch.testing.assert_close(dh, torch.einsum("obi,bki->bko", J, dirs), atol=1e-12, rtol=1e-10)
    other = MCNF(manifold, hidden=12, activation="tanh", fourier=4, fourier_scale=3.0, ensemble=3,
                 divergence="exact_autograd").double()  # fmt: skip
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.eval().log_prob(x), other.eval().log_prob(x), atol=1e-9, rtol=1e-9)
    t = torch.rand(6, dtype=torch.float64)
    split = model.field.split(t, x)
    for k in range(3):
        torch.testing.assert_close(split[k::3], members[k](t[k::3], x[k::3]), atol=0, rtol=0)
    # one field is the model as before: no members, no config key, the same seeded weights
    torch.manual_seed(0)
    one = MCNF(manifold, hidden=12, fourier=4, fourier_scale=3.0)
    torch.manual_seed(0)
    again = MCNF(manifold, hidden=12, fourier=4, fourier_scale=3.0, ensemble=1)
    assert "ensemble" not in one.config and "field.layers.0.weight" in one.state_dict()
    sd1, sd2 = one.state_dict(), again.state_dict()
    assert list(sd1) == list(sd2) and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    with pytest.raises(ValueError, match="ensemble"):
        MCNF(manifold, ensemble=0)


def test_ensemble_command_line(tmp_path):
    """--ensemble K trains K fields side by side, each on its own batch of --batch_size (the loss's batch is
    K times as large), saves and loads as one model; a baseline refuses the flag in one line."""
    from train.objectives import get_objective

    out = tmp_path / "e2"
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--objective", "fm", "--epochs", 6, "--eval_freq", 3,
            "--batch_size", 64, "--ensemble", 2, "--flow_hidden_size", 16, "--dev", "cpu", "--out", out, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    model = load_model(out / "checkpoint.pt")
    assert model.config["ensemble"] == 2 and len(model.field.members) == 2
    assert json.loads((out / "metrics.json").read_text())["args"]["ensemble"] == 2
    m0, m1 = (dict(f.named_parameters()) for f in model.field.members)
    assert not torch.equal(m0["layers.0.weight"], m1["layers.0.weight"])

    class Task:
        def random_batch(self, n, generator, dtype):
            return model.manifold.random(n, generator=generator, dtype=dtype)

    (x, z, t), = get_objective("fm").epoch_batches(Task(), model, 64, torch.Generator().manual_seed(0),
                                                   torch.float32)  # fmt: skip
    assert len(x) == len(z) == len(t) == 128
    one_line_error(run("--M", "Sphere", "--dataset", "1wrapped", "--model", "ncp", "--ensemble", 2, "--epochs", 2,
                       "--dev", "cpu", "--out", tmp_path / "ncp"), "--ensemble")  # fmt: skip


def test_target_kappa_smooths_the_targets_and_keeps_the_other_draws():
    """--target_kappa K: the regression targets are vMF(K) draws at the data points (mean cosine to their
    event A_3(K) = coth K - 1/K), while the base points, times and the events drawn are those of an
    unsmoothed run with the same generator (the jitter is drawn last)."""
    from train.objectives import get_objective

    model = MCNF("Sphere", hidden=8)
    events = model.manifold.random(4000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    class Task:  # the events in order: a batch of n is the first n of them
        def random_batch(self, n, generator, dtype):
            torch.rand(1, generator=generator)  # a draw of the generator, as a real split's sampling makes
            return events[:n].to(dtype)

    fm = get_objective("fm")
    (x0, z0, t0), = fm.epoch_batches(Task(), model, 4000, torch.Generator().manual_seed(0), torch.float64)  # fmt: skip
    (x1, z1, t1), = fm.epoch_batches(Task(), model, 4000, torch.Generator().manual_seed(0), torch.float64,
                                     smooth=400.0)  # fmt: skip
    assert torch.equal(x0, events) and torch.equal(z0, z1) and torch.equal(t0, t1)
    assert torch.allclose(x1.norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    cos = (x1 * events).sum(-1)
    assert abs(cos.mean().item() - (1 / math.tanh(400) - 1 / 400)) < 5e-4  # 0.9975, stderr ~4e-5
    assert (cos < 1).all()  # every target moved


@pytest.mark.parametrize(
    "args, needle",
    [(["--M", "Hyperboloid", "--dataset", "1wrapped", "--objective", "fm"], "S^2"),
     (["--M", "Sphere", "--dataset", "1wrapped"], "flow matching")],
)  # fmt: skip
def test_target_kappa_is_refused_where_it_has_no_meaning(tmp_path, args, needle):
    one_line_error(
        run(*args, "--target_kappa", 100, "--epochs", 2, "--dev", "cpu", "--out", tmp_path / "r"), needle
    )
