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
    if step != 1 / 8:  # the next coarser step would not have met the tolerance
        lp_coarse, _ = solver_gap(m, x, dict(solver=SolverSettings(method="rk4", step_size=2 * step), dtype=torch.float32),
                                  lp_reference=lp_ref)  # fmt: skip
        assert float((lp_coarse - lp_ref).abs().mean()) > tol
    # held-out points: the calibrated step is about as accurate there
    y = m.manifold.random(300, generator=gen, dtype=torch.float64)
    lp_map, lp_ref = solver_gap(m, y, dict(solver=copy.eval_solver, dtype=torch.float32))
    assert float((lp_map - lp_ref).abs().mean()) < 3 * tol
