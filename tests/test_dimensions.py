"""S^n and H^n beyond n = 2: the test densities in any dimension, and the command line with --dim."""

import copy
import json
import math

import pytest
import torch

from data import get_density
from data.densities import datasets
from manifolds import get_manifold
from manifolds.distributions import Mixture, VonMisesFisher, WrappedNormal
from manifolds.quadrature import integrate
from tests.test_cli import FAST, run

GENERAL = [("Hyperboloid", "1wrapped"), ("Hyperboloid", "5gaussians"), ("Hyperboloid", "mult_wrapped"),
           ("Sphere", "1wrapped"), ("Sphere", "4wrapped"), ("Sphere", "antipodal")]  # fmt: skip


@pytest.mark.parametrize("M,ds", GENERAL)
def test_normalized_at_n3_by_quadrature(M, ds):
    d = get_density(M, ds, dim=3)
    total = integrate(d.log_prob, get_manifold(M, 3), n_radial=150, n_angular=120, r_max=10.0)
    assert abs(total - 1) < 3e-3, total


def _widened(density, factor):
    """A copy of ``density`` with every scale multiplied by ``factor`` (vMF: concentration / factor^2)."""

    def widen(dist):
        if isinstance(dist, Mixture):
            return Mixture([widen(c) for c in dist.components])
        if isinstance(dist, VonMisesFisher):
            return VonMisesFisher(dist.loc, dist.concentration / factor**2)
        assert isinstance(dist, WrappedNormal)
        out = copy.copy(dist)
        out.scale = dist.scale * factor
        return out

    out = copy.copy(density)
    if hasattr(density, "dist"):
        out.dist = widen(density.dist)
    else:  # the Gaussians in the tangent space at the origin
        out.std = density.std * factor
    return out


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("M,ds", GENERAL)
def test_normalization_and_sampler_by_importance_weights(M, ds, n):
    """With q a widened copy of p: E_q[p/q] = int p = 1 (normalization), and with q' a narrowed
    copy: E_p[q'/p] = int q' = 1 (samples come from p, not only somewhere p is positive). The weights
    are bounded by factor^n, so 20,000 draws give a standard error of about 1%; the check is at 5 of
    them. At n = 10 this relies on the family's own normalization, which the n = 3 quadrature checks."""
    p = get_density(M, ds, dim=n)
    g = torch.Generator().manual_seed(n)
    for q, draw_from in ((_widened(p, 1.2), "q"), (_widened(p, 1 / 1.2), "p")):
        if draw_from == "q":
            x = q.sample(20000, generator=g)
            w = (p.log_prob(x) - q.log_prob(x)).exp()
        else:
            x = p.sample(20000, generator=g)
            w = (q.log_prob(x) - p.log_prob(x)).exp()
        assert x.shape == (20000, n + 1)
        mean, se = float(w.mean()), float(w.std() / math.sqrt(len(w)))
        assert abs(mean - 1) < 5 * se + 1e-3, (draw_from, mean, se)


def test_which_densities_exist_in_which_dimension():
    assert datasets("Sphere", 2) == ("1wrapped", "4wrapped", "bigcheckerboard", "antipodal")
    assert datasets("Sphere", 5) == ("1wrapped", "4wrapped", "antipodal")
    assert datasets("Hyperboloid", 5) == ("1wrapped", "5gaussians", "mult_wrapped")
    assert datasets("Hyperboloid", 1) == ("1wrapped", "5gaussians")
    with pytest.raises(
        ValueError, match=r"checkerboards are 2-dimensional only\); valid: 1wrapped, 4wrapped"
    ):
        get_density("Sphere", "bigcheckerboard", dim=3)
    with pytest.raises(ValueError, match="needs n >= 2"):
        get_density("Hyperboloid", "mult_wrapped", dim=1)
    # n = 2 keeps the paper's parameters
    paper = 3.0 * torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], dtype=torch.float64)
    assert torch.equal(get_density("Hyperboloid", "5gaussians").centers, paper)
    means = torch.stack([c.loc for c in get_density("Sphere", "4wrapped").dist.components])
    paper = torch.tensor([[1.0, 1, 1], [-1, -1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / 3**0.5
    torch.testing.assert_close(means, paper, atol=1e-15, rtol=0)
    # the multi-mode densities have 2n modes (sphere) and 2n + 1 (hyperboloid)
    assert len(get_density("Sphere", "4wrapped", dim=5).dist.components) == 10
    assert get_density("Hyperboloid", "5gaussians", dim=5).centers.shape == (11, 5)


@pytest.mark.parametrize("M,ds,n", [("Sphere", "4wrapped", 3), ("Hyperboloid", "5gaussians", 3),
                                    ("Sphere", "1wrapped", 5), ("Hyperboloid", "1wrapped", 5)])  # fmt: skip
def test_cli_any_dimension(tmp_path, M, ds, n):
    extra = ["--save", "--samples", "500"] if n == 3 else []
    r = run(
        "--M", M, "--dataset", ds, "--dim", n, "--epochs", 2, "--dev", "cpu", "--out", tmp_path, *extra, *FAST
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["args"]["dim"] == n and all(math.isfinite(m[k]) for k in ("test_nll", "entropy", "kl"))
    assert abs(m["entropy"] - m["test_nll"] + m["kl"]) < 1e-9
    from flows import load_model

    model = load_model(tmp_path / "checkpoint.pt")
    assert model.manifold.dim == n
    with torch.no_grad():
        x = model.sample(7)
    assert x.shape == (7, n + 1)
    if n == 3:
        assert (tmp_path / f"{ds}_{M}.png").stat().st_size > 10_000  # pairwise marginals
        assert (tmp_path / "samples.png").is_file() and (tmp_path / "samples.npy").is_file()


@pytest.mark.parametrize("args,message", [
    (["--M", "Sphere", "--dataset", "bigcheckerboard", "--dim", "3"], "2-dimensional only"),
    (["--M", "Hyperboloid", "--dataset", "1wrapped", "--dim", "3", "--contsave"], "--contsave draws density maps"),
    (["--M", "Sphere", "--dataset", "volcano", "--dim", "3"], "the Earth datasets live on the 2-sphere"),
])  # fmt: skip
def test_cli_refusals_in_other_dimensions(tmp_path, args, message):
    out = tmp_path / "run"
    r = run(*args, "--epochs", 2, "--dev", "cpu", "--out", out, *FAST)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
