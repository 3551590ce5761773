"""flows.pointwise_log_prob: each point solved on its own (its own steps, error and charts) is the same
function as the MCNF's batch solve, independent of its batch, and correct where the flow moves far."""

import pytest
import torch

from flows import MCNF, WHC, SolverError, SolverSettings, pointwise_log_prob, solve_copy

TIGHT = dict(atol=1e-9, rtol=1e-9)


def _model(manifold, scale, seed=0, **kw):
    torch.manual_seed(seed)
    m = MCNF(manifold, hidden=16, n_hidden=2, activation="silu", eval_solver=TIGHT, **kw).double()
    with torch.no_grad():  # a field that carries points far, through several charts
        m.field.layers[-1].weight.mul_(scale)
        m.field.layers[-1].bias.mul_(scale)
    return m.eval()


@pytest.mark.parametrize(
    "manifold,scale,charts", [("Sphere", 6.0, 4), ("Sphere", 6.0, "adaptive"), ("Hyperboloid", 12.0, 1)]
)
def test_pointwise_equals_the_batch_solve(manifold, scale, charts):
    m = _model(manifold, scale, charts=charts)
    x = m.manifold.random(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref = m.log_prob(x)
        z, _ = m(x)
    assert float(m.manifold.dist(x, z).max()) > m.chart_radius  # some points travel beyond one chart's radius
    stats = {}
    lp = pointwise_log_prob(m, x, atol=1e-8, rtol=1e-8, stats=stats)
    assert lp.dtype == torch.float64 and lp.shape == (64,)
    assert float((lp - ref).abs().max()) < 1e-5
    assert stats["recentred"] > 0 and stats["nfe"].shape == (64,) and int(stats["nfe"].min()) >= 7
    # a point alone gets its own steps and charts: the value it has in the batch, to the tolerance
    alone = torch.cat([pointwise_log_prob(m, x[i : i + 1], atol=1e-8, rtol=1e-8) for i in range(4)])
    assert float((alone - lp[:4]).abs().max()) < 1e-6
    # chunks are independent solves of the same function
    torch.testing.assert_close(
        pointwise_log_prob(m, x, atol=1e-8, rtol=1e-8, chunk=10), lp, atol=1e-6, rtol=0
    )


def test_pointwise_controls_each_points_error():
    """A loose tolerance is loose for every point alike: the per-point max norm keeps each one within a
    multiple of it, where one batch step size for all is set by a norm over the batch."""
    m = _model("Sphere", 10.0, charts=4)
    x = m.manifold.random(128, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ref = m.log_prob(x)
    stats = {}
    lp = pointwise_log_prob(m, x, atol=1e-5, rtol=1e-5, stats=stats)
    assert float((lp - ref).abs().max()) < 1e-3
    assert int(stats["nfe"].max()) > int(stats["nfe"].min())  # points get their own numbers of steps


def test_pointwise_defaults_and_errors():
    m = _model("Sphere", 1.0)
    m.eval_solver = solve_copy(m).eval_solver  # the model's scoring tolerance is the default
    x = m.manifold.random(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pointwise_log_prob(m, x), m.log_prob(x), atol=1e-6, rtol=0)
    assert pointwise_log_prob(m, x[:0]).shape == (0,)
    with pytest.raises(ValueError):
        pointwise_log_prob(WHC(), torch.randn(4, 3))
    with pytest.raises(ValueError):  # a point off the manifold cannot be scored
        pointwise_log_prob(m, torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(SolverError):
        pointwise_log_prob(_model("Sphere", 6.0), x, max_nfe=20)


def test_pointwise_is_a_solver_setting_both_ways_and_for_fixed_steps():
    """``SolverSettings(pointwise=True)``: the model's own log_prob, inverse and samples solved point by point;
    with rk4, the fixed grid with per-point charts, which converges to the same function."""
    m = _model("Sphere", 6.0, charts=4)
    x = m.manifold.random(24, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        ref = m.log_prob(x)
        z_ref = m(x)[0]
    pw = solve_copy(m, SolverSettings(method="dopri5", atol=1e-8, rtol=1e-8, pointwise=True))
    with torch.no_grad():
        torch.testing.assert_close(pw.log_prob(x), pointwise_log_prob(m, x, atol=1e-8, rtol=1e-8))
        assert float((pw.log_prob(x) - ref).abs().max()) < 1e-5
        z = pw(x)[0]
        assert float(m.manifold.dist(z, z_ref).max()) < 1e-6
        back = pw.inverse(z)  # from the base to the data: time runs backwards
        assert float(m.manifold.dist(back, x).max()) < 1e-5
    errs = []
    for h in (1 / 8, 1 / 32):
        fixed = solve_copy(m, SolverSettings(method="rk4", step_size=h, pointwise=True))
        with torch.no_grad():
            lp = fixed.log_prob(x)
            torch.testing.assert_close(fixed.log_prob(x[:3]), lp[:3], atol=1e-10, rtol=0)  # not the batch's
        errs.append(float((lp - ref).abs().max()))
    assert errs[1] < errs[0] / 20 and errs[1] < 1e-3  # fourth order
    assert "pointwise" not in m.config["eval_solver"]  # configs as before unless it is used
    pw.train_solver = pw.eval_solver
    with pytest.raises(ValueError):  # no gradients through it: not a training solver
        pw.train().log_prob(x)
    with pytest.raises(ValueError):
        SolverSettings(method="bosh3", pointwise=True)
