"""The solver gap (one function for the guard, the scripts and the maps) and the calibrated map solver."""

import pytest
import torch

from flows import MCNF, SolverSettings, calibrated_map_model, model_log_prob, solve_copy, solver_gap


def _sharp_model():
    torch.manual_seed(0)
    m = MCNF("Sphere", hidden=32, n_hidden=2, activation="silu", fourier=16, fourier_scale=8.0)
    with torch.no_grad():  # a field strong enough that coarse fixed steps are visibly wrong
        m.field.layers[-1].weight.mul_(30.0)
    return m


def test_solver_gap_compares_two_solves_of_the_same_weights():
    m = _sharp_model()
    x = m.manifold.random(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coarse = dict(solver=SolverSettings(method="rk4", step_size=0.5), dtype=torch.float32)
    lp_c, lp_ref = solver_gap(m, x, coarse)
    torch.testing.assert_close(lp_ref, model_log_prob(solve_copy(m), x))
    torch.testing.assert_close(lp_c, model_log_prob(solve_copy(m, **coarse), x))
    assert float((lp_c - lp_ref).abs().mean()) > 0.05  # the coarse step is really worse
    again, same = solver_gap(m, x, coarse, lp_reference=lp_ref)  # a known reference is reused
    assert same is lp_ref and torch.equal(again, lp_c)
    # the training solve: the model's fixed training step, as the guard scores it
    lp_t, _ = solver_gap(m, x, dict(train=True))
    torch.testing.assert_close(lp_t, model_log_prob(solve_copy(m, solver=m.train_solver), x))


@pytest.mark.parametrize("tol", [0.05, 0.002])
def test_calibrated_map_model_meets_its_tolerance_with_the_coarsest_step(tol):
    m = _sharp_model()
    gen = torch.Generator().manual_seed(2)
    x = m.manifold.random(300, generator=gen, dtype=torch.float64)
    copy, step, err = calibrated_map_model(m, x, tol=tol)
    assert err <= tol and copy.eval_solver.step_size == step and copy.eval_solver.method == "rk4"
    lp_map, lp_ref = solver_gap(m, x, dict(solver=copy.eval_solver, dtype=torch.float32))
    assert float((lp_map - lp_ref).abs().mean()) == pytest.approx(err, rel=1e-6)
    if step != 1 / 8:  # the next coarser step would not have met the tolerance, on either time grid
        for w in (1.0, 2.0):
            coarse = SolverSettings(method="rk4", step_size=2 * step, time_warp=w)
            lp_coarse, _ = solver_gap(m, x, dict(solver=coarse, dtype=torch.float32), lp_reference=lp_ref)
            assert float((lp_coarse - lp_ref).abs().mean()) > tol
    # held-out points: the calibrated step is about as accurate there
    y = m.manifold.random(300, generator=gen, dtype=torch.float64)
    lp_map, lp_ref = solver_gap(m, y, dict(solver=copy.eval_solver, dtype=torch.float32))
    assert float((lp_map - lp_ref).abs().mean()) < 3 * tol


def test_time_grid_uniform_is_torchdiffeqs_and_warped_is_dense_at_the_data():
    from flows.solver import rk4_grid, time_grid

    like = torch.zeros(1, dtype=torch.float64)
    for t0, t1 in [(0.0, 1.0), (1.0, 0.0), (0.25, 0.5)]:
        assert torch.equal(time_grid(t0, t1, 0.1, like), rk4_grid(t0, t1, 0.1, like))
    g = time_grid(0.0, 1.0, 1 / 8, like, warp=2.0)
    assert len(g) == 9 and g[0] == 0 and g[-1] == 1
    torch.testing.assert_close(g, (torch.arange(9, dtype=torch.float64) / 8) ** 2)
    # a segment of a multi-chart solve keeps the global grid's points, and runs either way
    seg = time_grid(0.25, 0.5, 1 / 8, like, warp=2.0)
    assert seg[0] == 0.25 and seg[-1] == 0.5 and ((seg.sqrt().diff()) <= 1 / 8 + 1e-12).all()
    torch.testing.assert_close(time_grid(0.5, 0.25, 1 / 8, like, warp=2.0), seg.flip(0))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        time_grid(0.0, 2.0, 0.1, like, warp=2.0)
    with pytest.raises(ValueError, match="time_warp"):
        SolverSettings(method="dopri5", time_warp=2.0)
    with pytest.raises(ValueError, match="time_warp"):
        SolverSettings(method="rk4", step_size=0.1, time_warp=0.5)


def test_warped_rk4_is_torchdiffeqs_on_the_same_grid_and_beats_the_uniform_one():
    m = _sharp_model()
    x = m.manifold.random(100, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    warped = SolverSettings(method="rk4", step_size=1 / 8, time_warp=2.0)
    fast = model_log_prob(solve_copy(m, warped), x)
    slow_model = solve_copy(m, warped)
    slow_model.fast_rk4 = False  # torchdiffeq's rk4 with the same grid (its grid_constructor)
    torch.testing.assert_close(model_log_prob(slow_model, x), fast, rtol=1e-10, atol=1e-10)
    ref = model_log_prob(solve_copy(m), x)
    uniform = model_log_prob(solve_copy(m, SolverSettings(method="rk4", step_size=1 / 8)), x)
    assert (fast - ref).abs().mean() < (uniform - ref).abs().mean()
