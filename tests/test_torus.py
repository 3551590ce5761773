"""The flat torus T^n: the manifold added as one module plus registry lines (issue #25's proof of the seam).

The shared geometry properties run on it in tests/test_manifolds.py; here: its densities and base are
exactly normalized and sampled, an MCNF on it is a density, and the command line trains it with both
objectives and draws its figure.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.densities import datasets, get_density
from flows import MCNF
from manifolds import Torus, get_manifold, integrate
from manifolds.torus import VonMisesTorus, von_mises_angles
from viz import figures

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "main_density.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_densities_integrate_to_one_and_sample_what_they_score(dim):
    T = Torus(dim)
    names = datasets("Torus", dim)
    assert set(names) == ({"1wrapped", "4wrapped", "checkerboard"} if dim == 2 else {"1wrapped", "4wrapped"})
    for name in names:
        den = get_density("Torus", name, dim=dim)
        k = {1: 2000, 2: 400, 3: 80}[dim]
        assert integrate(den.log_prob, T, n_angular=k) == pytest.approx(1.0, abs=1e-6), name
        # the samples' mean -log p is the entropy (by quadrature) within 5 standard errors
        x, w = T.quadrature(n_angular=k)
        lp = den.log_prob(x)
        p = lp.exp()
        entropy = float(-(p * torch.where(p > 0, lp, torch.zeros_like(lp)) * w).sum())
        s = -den.log_prob(den.sample(20_000, generator=torch.Generator().manual_seed(dim)))
        assert torch.isfinite(s).all(), name  # samples lie in the support (the checkerboard's cells)
        assert abs(float(s.mean()) - entropy) < 5 * float(s.std()) / math.sqrt(len(s)) + 1e-9, name


def test_von_mises_base_is_normalized_and_sampled_exactly():
    T = Torus(2)
    for kappa in [0.0, 1.0, 8.0]:
        base = VonMisesTorus(T, torch.zeros(2, dtype=torch.float64), kappa)
        assert integrate(base.log_prob, T, n_angular=400) == pytest.approx(1.0, abs=1e-9)
    a = von_mises_angles(3.0, (200_000,), generator=torch.Generator().manual_seed(0))
    from scipy.special import i0, i1

    # E cos a = I1(k) / I0(k); the samples lie in (-pi, pi]
    assert float(a.cos().mean()) == pytest.approx(i1(3.0) / i0(3.0), abs=4e-3)
    assert float(a.abs().max()) <= math.pi and abs(float(a.sin().mean())) < 4e-3


def test_geometry_is_the_angles_modulo_two_pi():
    T = Torus(2)
    x = T.from_angles(torch.tensor([[3.0, -3.0]], dtype=torch.float64))
    y = T.from_angles(torch.tensor([[-3.0, 3.0]], dtype=torch.float64))
    # the shortest way from 3 to -3 crosses pi: an angle of 2 pi - 6, not -6
    torch.testing.assert_close(T.coords(x, T.logmap(x, y)), torch.tensor([[2 * math.pi - 6, 6 - 2 * math.pi]],
                                                                           dtype=torch.float64))  # fmt: skip
    assert float(T.dist(x, y)) == pytest.approx(math.sqrt(2) * (2 * math.pi - 6))
    torch.testing.assert_close(
        T.to_angles(T.from_angles(torch.tensor([0.5, -2.0]))), torch.tensor([0.5, -2.0])
    )
    assert T.volume == pytest.approx(4 * math.pi**2) and get_manifold("Torus", 3).ambient_dim == 6
    with pytest.raises(ValueError, match="not on the Torus"):
        T.check_point(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("conc", [0.0, 1.0])
def test_an_untrained_mcnf_on_the_torus_is_a_density(conc):
    """A random field of visible strength: the exact log-density integrates to 1 and inverts its samples."""
    torch.manual_seed(0)
    m = MCNF("Torus", hidden=32, conc=conc, eval_solver=dict(method="dopri5", atol=1e-8, rtol=1e-8)).double()
    with torch.no_grad():
        for p in m.field.parameters():
            p.mul_(2.0)
    m.eval()
    with torch.no_grad():
        assert integrate(m.log_prob, m.manifold, n_angular=100) == pytest.approx(1.0, abs=1e-6)
        x, lp = m.sample(200, generator=torch.Generator().manual_seed(1), return_log_prob=True)
        torch.testing.assert_close(m.log_prob(x), lp, atol=1e-5, rtol=1e-5)


def test_figure_is_the_periodic_square():
    den = get_density("Torus", "4wrapped")
    vals = figures.density_values(den.log_prob, "Torus", 40)
    assert vals.shape == (40, 40) and (vals > 0).all()
    # rows are the second angle, columns the first: the mode at (pi/2, 0) is right of centre
    i, j = np.unravel_index(vals.argmax(), vals.shape)
    peaks = {(20, 30), (20, 9), (30, 20), (9, 20)}
    assert min(abs(i - a) + abs(j - b) for a, b in peaks) <= 1
    pts = figures.to_plane(Torus.from_angles(torch.tensor([[1.0, -2.0]])), "Torus")
    np.testing.assert_allclose(pts, [[1.0, -2.0]], atol=1e-12)


@pytest.mark.parametrize("objective", ["mle", "fm"])
def test_cli_trains_the_torus_and_draws_it(tmp_path, objective):
    out = tmp_path / objective
    r = run("--M", "Torus", "--dataset", "1wrapped", "--objective", objective, "--epochs", 40, "--eval_freq", 40,
            "--test_size", 2000, "--res", 40, "--dev", "cpu", "--quiet", "--save", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["args"]["conc"] == (
        0.0 if objective == "mle" else 1.0
    )  # the uniform base for mle (no reference)
    assert math.isfinite(m["kl"]) and m["kl"] < 1.5
    assert (out / "1wrapped_Torus.png").stat().st_size > 5000


def test_cli_refuses_what_the_torus_does_not_have(tmp_path):
    r = run(
        "--M",
        "Torus",
        "--dataset",
        "1wrapped",
        "--reference_settings",
        "--epochs",
        2,
        "--out",
        tmp_path / "a",
    )
    assert r.returncode == 2 and "published code has no Torus" in r.stderr and "Traceback" not in r.stderr
    r = run("--M", "Torus", "--dataset", "bigcheckerboard", "--epochs", 2, "--out", tmp_path / "b")
    assert r.returncode == 2 and "checkerboard" in r.stderr and "Traceback" not in r.stderr
