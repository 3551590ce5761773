"""Gradients across chart switches, the float32 hyperboloid far out, fields that cannot escape,
and the singular corners of the charts (issue: "Correct everywhere")."""

import copy
import math

import pytest
import torch

from data import WrappedNormal
from flows import MCNF
from flows.vector_field import DEFAULT_MAX_SPEED, VectorField
from manifolds import Hyperboloid, Sphere, integrate

ACTIVATIONS = ["tanh", "softplus", "silu"]


def _scaled(model, scale):
    with torch.no_grad():
        for p in model.field.parameters():
            p.mul_(scale)
    return model


# -- 1. gradients: autograd against central finite differences ------------------------------------
def _fd_check(manifold, charts, adjoint, scale, chart_radius=None, n=8, eps=1e-4, seed=0):
    """(autograd, finite difference, charts used) of sum log p along a random unit direction."""
    torch.manual_seed(seed)
    s = dict(method="dopri5", atol=1e-10, rtol=1e-10, adjoint=adjoint, max_nfe=100_000)
    m = MCNF(manifold, hidden=16, n_hidden=2, charts=charts, chart_radius=chart_radius,
             train_solver=s, eval_solver=s)  # fmt: skip
    _scaled(m, scale).train()
    x = m.manifold.random(n)
    params = list(m.field.parameters())
    dirs = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((d * d).sum() for d in dirs))
    dirs = [d / norm for d in dirs]
    grads = torch.autograd.grad(m.log_prob(x).sum(), params)
    used = m.n_charts_used
    auto = float(sum((g * d).sum() for g, d in zip(grads, dirs, strict=True)))

    def shifted(sign):
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.add_(sign * eps * d)
            value = float(m.log_prob(x).sum())
            for p, d in zip(params, dirs, strict=True):
                p.sub_(sign * eps * d)
        return value

    return auto, (shifted(1) - shifted(-1)) / (2 * eps), used


@pytest.mark.parametrize("manifold", ["Sphere", "Hyperboloid"])
@pytest.mark.parametrize("charts", [1, 4, "adaptive"])
@pytest.mark.parametrize("adjoint", [False, True])
def test_parameter_gradients_match_finite_differences(manifold, charts, adjoint):
    # adaptive: a small chart radius and a strong field, so that the batch switches charts often
    radius = 0.4 if charts == "adaptive" else None
    auto, fd, used = _fd_check(manifold, charts, adjoint, scale=3.0, chart_radius=radius)
    if charts == "adaptive":
        assert used >= 4, f"only {used - 1} chart switches happened"
    # the defect this guards against gave relative errors of 4e-2 to 3 (wrong sign)
    assert abs(auto - fd) <= 2e-5 * abs(fd) + 1e-6, (auto, fd)


@pytest.mark.parametrize("manifold", ["Sphere", "Hyperboloid"])
def test_adaptive_gradient_equals_single_chart_gradient(manifold):
    """The flow map does not depend on where charts switch, so neither does its gradient."""
    auto_1, _, _ = _fd_check(manifold, 1, False, scale=3.0)
    auto_a, _, used = _fd_check(manifold, "adaptive", False, scale=3.0, chart_radius=0.3)
    assert used >= 5
    assert abs(auto_1 - auto_a) <= 1e-6 * abs(auto_1), (auto_1, auto_a)


# -- 2. the hyperboloid in float32 far from the origin --------------------------------------------
def _circle(M, r, n=64, seed=1):
    """float32 points at geodesic radius r (all directions), and their float64 projection."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, M.dim, generator=g, dtype=torch.float64)
    v = torch.cat([torch.zeros(n, 1, dtype=torch.float64), r * theta / theta.norm(dim=-1, keepdim=True)], -1)
    x32 = M.expmap(M.origin(dtype=torch.float64), v).float()
    return x32, M.projx(x32.double())


def _pair(dim, solver, seed=0):
    torch.manual_seed(seed)
    m32 = MCNF("Hyperboloid", dim=dim, charts=1, train_solver=solver, eval_solver=solver).float().eval()
    with torch.no_grad():  # a field that moves mass by about 2 (a trained model's scale)
        m32.field.layers[-1].weight.mul_(4)
    return m32, copy.deepcopy(m32).double()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(
    "solver", [dict(method="rk4", step_size=1 / 8), dict(method="dopri5", atol=1e-6, rtol=1e-6)]
)
def test_float32_hyperboloid_log_prob_far_out(dim, solver):
    m32, m64 = _pair(dim, solver)
    M = m32.manifold
    for r in (1, 5, 8, 10, 12):
        x32, x64 = _circle(M, r)
        with torch.no_grad():
            lp32, lp64 = m32.log_prob(x32), m64.log_prob(x64)
        assert lp32.dtype == torch.float32 and torch.isfinite(lp32).all()
        rel = ((lp32.double() - lp64).abs() / lp64.abs()).max()
        assert rel <= 1e-3, (r, float(rel))
        if solver["method"] == "dopri5":  # no extra work far out (it was 10,000+ evaluations)
            assert m32.nfe_forward <= 2 * m64.nfe_forward + 10, (r, m32.nfe_forward, m64.nfe_forward)


def test_float32_hyperboloid_inverse_and_sample_far_out():
    m32, m64 = _pair(2, dict(method="rk4", step_size=1 / 8))
    M = m32.manifold
    z32, z64 = _circle(M, 12)
    with torch.no_grad():
        x32, d32 = m32.inverse(z32, return_delta=True)
        x64, d64 = m64.inverse(z64, return_delta=True)
    assert x32.dtype == torch.float32 and torch.isfinite(x32).all() and torch.isfinite(d32).all()
    # same points up to float32 resolution (coordinates ~1e5 here: an ulp is ~1e-2 in absolute terms)
    rel = ((x32.double() - x64).norm(dim=-1) / x64.norm(dim=-1)).max()
    assert rel < 1e-5, float(rel)
    assert ((d32.double() - d64).abs() <= 1e-3 * d64.abs() + 1e-4).all()
    with torch.no_grad():
        s, lp = m32.sample(200, generator=torch.Generator().manual_seed(0), return_log_prob=True)
        lp_direct = m32.log_prob(s)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    assert ((lp.double() - lp_direct.double()).abs() <= 1e-3 * lp_direct.double().abs() + 1e-3).all()


def test_float32_hyperboloid_figure_far_out():
    from flows import figure_model

    m32, m64 = _pair(2, dict(method="rk4", step_size=1 / 8))
    fig = figure_model(m32)
    ref = copy.deepcopy(m64)
    ref.eval_solver = copy.deepcopy(fig.eval_solver)
    x32, x64 = _circle(fig.manifold, 12)
    with torch.no_grad():
        a, b = fig.log_prob(x32).double(), ref.log_prob(x64)
    assert ((a - b).abs() <= 1e-3 * b.abs()).all()


# -- 3. fields that cannot escape -----------------------------------------------------------------
def _speed(H, y, f):
    """``|f|_L`` at far points, computed at the origin after transport (no cancellation)."""
    return H.transp(y, H.origin(dtype=y.dtype), f)[..., 1:].norm(dim=-1)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hyperboloid_fields_are_bounded(activation):
    H = Hyperboloid(2)
    torch.manual_seed(0)
    field = VectorField(H, 32, 3, activation)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(3)
        last = field.layers[-1]
        # tanh: |h| <= ||W_out||_2 sqrt(hidden) + |b_out|; unbounded activations: the limiter's bound
        bound = float(torch.linalg.matrix_norm(last.weight, 2) * math.sqrt(32) + last.bias.norm())
    if activation != "tanh":
        bound = DEFAULT_MAX_SPEED
    speeds = []
    for r in (1.0, 5.0, 10.0, 15.0):
        _, y = _circle(H, r, n=256)
        with torch.no_grad():
            speed = _speed(H, y, field(0.5, y))
        assert torch.isfinite(speed).all() and speed.max() <= bound, (r, float(speed.max()), bound)
        speeds.append(float(speed.max()))
    if activation != "tanh":  # without the limiter this field's speed grows without bound
        free = copy.deepcopy(field)
        free.max_speed = None
        _, y = _circle(H, 15.0, n=256)
        with torch.no_grad():
            assert _speed(H, y, free(0.5, y)).max() > 100 * bound


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hyperboloid_trajectories_from_r5_stay_finite(activation):
    torch.manual_seed(0)
    s = dict(method="dopri5", atol=1e-6, rtol=1e-6, max_nfe=20_000)
    m = MCNF("Hyperboloid", activation=activation, train_solver=s, eval_solver=s).eval()
    M = m.manifold
    _, x = _circle(M, 5.0, n=128)
    with torch.no_grad():
        z, delta = m(x)
        back = m.inverse(z)
    moved = M.dist(x, z)
    assert torch.isfinite(z).all() and torch.isfinite(delta).all()
    if activation != "tanh":
        assert moved.max() <= DEFAULT_MAX_SPEED
    assert M.dist(back, x).max() < 1e-2  # dopri5 at 1e-6 over trajectories of length up to ~6


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hyperboloid_bounded_field_keeps_its_mass(activation):
    """A random model with scaled weights (mass moves far) integrates to 1 for every activation."""
    torch.manual_seed(0)
    s = dict(method="dopri5", atol=1e-6, rtol=1e-6, max_nfe=20_000)
    # max_speed 2 keeps every trajectory of the quadrature grid (r <= 11) inside r <= 13, where
    # float64 resolves the geometry to the solver's tolerance
    m = _scaled(MCNF("Hyperboloid", activation=activation, max_speed=2.0, train_solver=s, eval_solver=s), 3.0)
    m.eval()
    M = m.manifold
    x = M.random(256)
    with torch.no_grad():
        z, _ = m(x)
        total = integrate(m.log_prob, M, n_radial=200, n_angular=180, r_max=11.0)
    assert 0.5 < M.dist(x, z).mean() and M.dist(x, z).max() <= 2.0
    assert abs(total - 1) < 5e-3, total


def test_max_speed_limits_and_is_validated():
    H = Hyperboloid(2)
    field = VectorField(H, 16, 2, "silu", max_speed=0.5)
    x, _ = _circle(H, 3.0, n=64)
    with torch.no_grad():
        field.layers[-1].bias.fill_(100.0)
    assert H.norm(x.double(), field(0.0, x.double())).max() <= 0.5
    assert VectorField(H, 16, 2, "tanh").max_speed is None  # tanh is bounded already: unchanged
    assert VectorField(Sphere(2), 16, 2, "silu").max_speed is None  # compact: no bound needed
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="max_speed"):
            VectorField(H, 16, 2, "silu", max_speed=bad)


def test_speed_limiter_jvp_matches_autograd():
    H = Hyperboloid(2)
    torch.manual_seed(0)
    field = VectorField(H, 8, 2, "softplus", max_speed=0.7)
    y, _ = _circle(H, 2.0, n=5)
    y = y.double()
    dirs = H.tangent_basis(y)
    h, dh = field.ambient_jvp(0.3, y, dirs)
    for i in range(2):
        _, ref = torch.func.jvp(lambda yy: field.ambient(0.3, yy), (y,), (dirs[:, i],))
        torch.testing.assert_close(dh[:, i], ref, atol=1e-12, rtol=1e-10)


# -- 4. singular corners --------------------------------------------------------------------------
def _rotation_model(charts, omega=2.6, eps=0.05):
    """An MCNF whose field is nearly the rigid rotation ``x -> A x`` about the z axis (rate omega)."""
    s = dict(method="dopri5", atol=1e-8, rtol=1e-8)
    m = MCNF("Sphere", hidden=3, n_hidden=1, charts=charts, train_solver=s, eval_solver=s).eval()
    with torch.no_grad():  # tanh(eps x) / eps ~ x
        m.field.layers[0].weight.zero_()
        m.field.layers[0].weight[:, :3] = eps * torch.eye(3)
        m.field.layers[0].bias.zero_()
        m.field.layers[1].weight.copy_(torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 0]]) * omega / eps)
        m.field.layers[1].bias.zero_()
    return m


def test_sphere_fixed_chart_recentres_near_the_cut_locus():
    """A fixed chart whose trajectories pass 3 pi / 4 is re-centred: same density as adaptive."""
    fixed, adaptive = _rotation_model(1), _rotation_model("adaptive")
    x = fixed.manifold.random(256)
    with torch.no_grad():
        z, _ = fixed(x)
        lp_fixed = fixed.log_prob(x)
        lp_adaptive = adaptive.log_prob(x)
    assert fixed.manifold.dist(x, z).max() > 0.75 * math.pi, "the test flow must go past the guard"
    assert fixed.n_recentred == 1 and fixed.n_charts_used >= 2
    assert torch.isfinite(lp_fixed).all()
    torch.testing.assert_close(lp_fixed, lp_adaptive, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        total = integrate(fixed.log_prob, fixed.manifold, n_radial=90, n_angular=180)
    assert abs(total - 1) < 1e-3, total
    # the guard is what keeps |v| inside the chart: it trips on this flow and not on a slow one
    slow = _rotation_model(1, omega=1.0)
    with torch.no_grad():
        slow.log_prob(x)
    assert slow.n_recentred == 0


def test_sphere_origin_chart_is_refused():
    with pytest.raises(ValueError, match="chart_center='origin'.*antipode"):
        MCNF("Sphere", charts=1, chart_center="origin")
    MCNF("Hyperboloid", charts=1, chart_center="origin")  # the hyperboloid's chart is global


def test_cli_refuses_sphere_origin_chart(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "main_density.py", "--M", "Sphere", "--chart_center", "origin", "--epochs", "1",
         "--dev", "cpu", "--out", str(out), "--quiet"],
        capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "antipode" in r.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrapped_normal_at_the_sphere_origin_antipode(dtype):
    S = Sphere(2)
    loc = -S.origin(dtype=dtype)
    d = WrappedNormal(S, loc, 0.3)
    x = d.sample(2000, generator=torch.Generator().manual_seed(0))
    lp = d.log_prob(x)
    assert torch.isfinite(x).all() and torch.isfinite(lp).all()
    # isotropic: log p = log N_2(dist; 0.3) - log(sin r / r), a function of the distance only
    r = S.dist(loc, x).double()
    ref = -0.5 * (r / 0.3) ** 2 - math.log(2 * math.pi * 0.09) - torch.log(torch.sin(r) / r)
    torch.testing.assert_close(lp.double(), ref, atol=2e-4 if dtype == torch.float32 else 1e-9, rtol=1e-4)
    total = integrate(
        lambda y: WrappedNormal(S, -S.origin(), 0.3).log_prob(y), S, n_radial=200, n_angular=200
    )
    assert abs(total - 1) < 2e-3
