"""flows.pointwise_log_prob: each point solved on its own (its own steps, error and charts) is the same
function as the MCNF's batch solve, independent of its batch, and correct where the flow moves far."""

import pytest
import torch

from flows import MCNF, WHC, SolverError, pointwise_log_prob, solve_copy

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
        pointwise_log_prob(_model("Sphere", 6.0), x, max_steps=2)
