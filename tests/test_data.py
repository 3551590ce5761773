"""Distributions and the seven test densities: normalization, sampling vs log_prob, vMF oracle."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from data import DATASETS, UniformSphere, VonMisesFisher, VonMisesFisherKDE, WrappedNormal, get_density
from data.distributions import vmf_mean_resultant_length
from manifolds import Hyperboloid, Sphere, integrate

PAIRS = [(m, d) for m, ds in DATASETS.items() for d in ds]
CHECKER = {"bigcheckerboard"}


@pytest.mark.parametrize("manifold,dataset", PAIRS)
def test_density_integrates_to_one(manifold, dataset):
    den = get_density(manifold, dataset)
    if dataset in CHECKER:
        total = integrate(den.log_prob, den.manifold, n_radial=600, n_angular=1200)
        assert abs(total - 1) < 5e-3, total
    else:
        assert abs(integrate(den.log_prob, den.manifold) - 1) < 2e-3


@pytest.mark.parametrize("manifold,dataset", PAIRS)
def test_samples_agree_with_log_prob(manifold, dataset):
    """Chi-square test of sample counts in coarse cells against the density's cell integrals."""
    den = get_density(manifold, dataset)
    g = torch.Generator().manual_seed(11)
    n = 20_000
    x = den.sample(n, generator=g)
    assert x.shape == (n, den.manifold.ambient_dim) and torch.isfinite(x).all()
    lp = den.log_prob(x)
    assert torch.isfinite(lp).all(), "a sample falls where the density is zero"
    M = den.manifold
    if manifold == "Torus":  # cells: 8 x 8 squares of the two angles
        torch.testing.assert_close(M.residual(x), torch.zeros(n, dtype=x.dtype), atol=1e-12, rtol=0)
        edges_a = torch.linspace(-math.pi, math.pi, 9)
        a, ang = M.to_angles(x).unbind(-1)
    elif manifold == "Sphere":
        assert torch.allclose(x.norm(dim=-1), torch.ones(n))
        # cells: 8 bands in z (equal area) x 8 sectors in azimuth
        edges_a = torch.linspace(-1, 1, 9)
        a = x[:, 2]
    else:
        assert torch.allclose(M.inner(x, x, x), -torch.ones(n))
        # cells: geodesic rings around the origin x 8 sectors
        edges_a = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.5, 100.0])
        a = M.dist(M.origin(), x)
    if manifold != "Torus":
        ang = torch.atan2(x[:, 2], x[:, 1]) if manifold == "Hyperboloid" else torch.atan2(x[:, 1], x[:, 0])
    edges_b = torch.linspace(-math.pi, math.pi, 9)
    counts = np.histogram2d(a.numpy(), ang.numpy(), bins=[edges_a.numpy(), edges_b.numpy()])[0]
    # expected cell masses by quadrature
    from manifolds import quadrature_grid

    q, w = quadrature_grid(M, n_radial=600, n_angular=1200)
    pq = den.log_prob(q).exp() * w
    if manifold == "Torus":
        qa, qb = M.to_angles(q).unbind(-1)
    else:
        qa = q[:, 2] if manifold == "Sphere" else M.dist(M.origin(), q)
        qb = torch.atan2(q[:, 2], q[:, 1]) if manifold == "Hyperboloid" else torch.atan2(q[:, 1], q[:, 0])
    mass = np.histogram2d(
        qa.numpy(), qb.numpy(), bins=[edges_a.numpy(), edges_b.numpy()], weights=pq.numpy()
    )[0]
    mass = mass / mass.sum()
    expected = n * mass
    keep = expected > 20
    chi2 = (((counts - expected) ** 2)[keep] / expected[keep]).sum()
    dof = keep.sum() - 1
    assert counts[~keep].sum() < 20 * max((~keep).sum(), 1) + 50
    assert stats.chi2.sf(chi2, dof) > 1e-4, (chi2, dof)


def test_unknown_dataset_names_valid_ones():
    with pytest.raises(ValueError, match="5gaussians"):
        get_density("Hyperboloid", "4wrapped")
    with pytest.raises(ValueError, match="4wrapped"):
        get_density("Sphere", "5gaussians")
    with pytest.raises(ValueError, match="Sphere"):
        get_density("Klein", "1wrapped")


def test_entropies_match_design():
    # docs/math.md: Monte Carlo entropies with 200,000 samples, +-0.003
    expected = {
        ("Hyperboloid", "5gaussians"): 4.067,
        ("Sphere", "4wrapped"): 1.721,
        ("Hyperboloid", "bigcheckerboard"): 3.712,
    }
    for (m, d), h in expected.items():
        den = get_density(m, d)
        x = den.sample(100_000, generator=torch.Generator().manual_seed(5))
        assert abs(-den.log_prob(x).mean().item() - h) < 0.02


@pytest.mark.parametrize("dim", [2, 3, 6])
@pytest.mark.parametrize("kappa", [1e-3, 1.0, 50.0, 500.0])
def test_vmf_log_prob_matches_scipy(dim, kappa):
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(dim, generator=g)
    mu = mu / mu.norm()
    vmf = VonMisesFisher(mu, kappa)
    x = Sphere(dim - 1).random(50, generator=g)
    x = torch.cat([x, vmf.sample(50, generator=g)])
    ref = stats.vonmises_fisher(mu.numpy(), kappa).logpdf(x.numpy())
    np.testing.assert_allclose(vmf.log_prob(x).numpy(), ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dim", [2, 3, 6])
@pytest.mark.parametrize("kappa", [1e-3, 1.0, 50.0, 500.0])
def test_vmf_samples_mean_resultant_length(dim, kappa):
    mu = -Sphere(dim - 1).origin()
    mu = torch.roll(mu, 1) if dim > 2 else mu
    vmf = VonMisesFisher(mu, kappa)
    n = 40_000
    x = vmf.sample(n, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(x.norm(dim=-1), torch.ones(n))
    w = (x @ vmf.loc).numpy()
    a = vmf_mean_resultant_length(dim, kappa)
    assert abs(w.mean() - a) < 4 * w.std() / math.sqrt(n) + 1e-6
    # orthogonal components have zero mean
    perp = x - torch.as_tensor(w)[:, None] * vmf.loc
    assert perp.mean(0).abs().max() < 5 * perp.std() / math.sqrt(n) + 1e-6


def test_vmf_sampler_is_seeded():
    vmf = VonMisesFisher(torch.tensor([0.0, 0, 1, 0, 0]), 3.0)
    a = vmf.sample(10, generator=torch.Generator().manual_seed(1))
    b = vmf.sample(10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_wrapped_normal_high_dim_normalized_on_h2_and_logprob_of_samples():
    H = Hyperboloid(2)
    mu = H.expmap(H.origin(), torch.tensor([0.0, 0.5, -1.0]))
    wn = WrappedNormal(H, mu, torch.tensor([0.4, 0.9]))
    assert abs(integrate(wn.log_prob, H) - 1) < 1e-3
    # in any dimension, log_prob at the mean equals the Gaussian normalizer
    for dim in [1, 4]:
        M = Hyperboloid(dim)
        wn = WrappedNormal(M, M.origin(), 0.5)
        expected = -dim * (math.log(0.5) + 0.5 * math.log(2 * math.pi))
        assert abs(wn.log_prob(M.origin()).item() - expected) < 1e-10
        x = wn.sample(5)
        assert torch.allclose(M.inner(x, x, x), -torch.ones(5))


def test_uniform_sphere():
    u = UniformSphere(2)
    assert abs(u.log_prob(torch.tensor([[0.0, 0, 1]])).item() + math.log(4 * math.pi)) < 1e-12
    assert abs(integrate(u.log_prob, Sphere(2)) - 1) < 1e-5
    assert u.sample(7).shape == (7, 3)


def test_vmf_kde_is_normalized_and_sampled_exactly():
    g = torch.Generator().manual_seed(0)
    centers = Sphere(2).random(7, generator=g)
    kde = VonMisesFisherKDE(centers, 40.0)
    total = integrate(kde.log_prob, Sphere(2), n_radial=200, n_angular=400)
    assert abs(total - 1) < 1e-6, total
    one = VonMisesFisherKDE(centers[:1], 40.0)  # one kernel is the vMF itself
    x = Sphere(2).random(100, generator=g)
    torch.testing.assert_close(one.log_prob(x), VonMisesFisher(centers[0], 40.0).log_prob(x))
    s = one.sample(40000, generator=g)
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(40000, dtype=s.dtype))
    r = (s @ centers[0]).mean().item()
    assert abs(r - vmf_mean_resultant_length(3, 40.0)) < 4 * 0.025 / math.sqrt(40000) + 1e-4
    # the mixture samples each kernel equally often: nearest centre counts are balanced
    s = kde.sample(70000, generator=g)
    counts = torch.bincount((s @ centers.T).argmax(-1), minlength=7).double()
    assert (counts / 10000 - 1).abs().max() < 0.05, counts
