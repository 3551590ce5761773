"""Property tests shared by every manifold (geoopt-style), plus log-det and gradient checks."""

import math

import pytest
import torch

from manifolds import Euclidean, Hyperboloid, Sphere, Torus, get_manifold, special

MANIFOLDS = [Sphere, Hyperboloid, Euclidean, Torus]
DIMS = [1, 2, 5]
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(
    params=[(m, d, t) for m in MANIFOLDS for d in DIMS for t in DTYPES],
    ids=lambda p: f"{p[0].__name__}-{p[1]}-{str(p[2])[6:]}",
)
def case(request):
    cls, dim, dtype = request.param
    M = cls(dim)
    g = torch.Generator().manual_seed(1)
    n = 16

    def point():
        if cls is Hyperboloid:
            return M.random(n, generator=g, dtype=dtype)
        return M.random(n, generator=g, dtype=dtype)

    def tangent(x, scale=1.0):
        u = torch.randn(x.shape, generator=g, dtype=dtype)
        return scale * M.proju(x, u)

    return M, dtype, point, tangent


def test_projx_idempotent(case, tol):
    M, dtype, point, _ = case
    x = point() * 1.3 if M.name == "Sphere" else point()
    y = M.projx(x)
    torch.testing.assert_close(M.projx(y), y, **tol(dtype))


def test_projx_lands_on_manifold(case, tol):
    M, dtype, point, _ = case
    x = M.projx(torch.randn(10, M.ambient_dim, dtype=dtype) * 2)
    if M.name == "Sphere":
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(10, dtype=dtype), **tol(dtype))
    if M.name == "Hyperboloid":
        torch.testing.assert_close(M.inner(x, x, x), -torch.ones(10, dtype=dtype), **tol(dtype))


def test_proju_gives_tangent_vectors(case, tol):
    M, dtype, point, _ = case
    x = point()
    u = M.proju(x, torch.randn(x.shape, dtype=dtype))
    if M.name != "Euclidean":
        ip = M.inner(x, x, u)
        torch.testing.assert_close(ip, torch.zeros_like(ip), atol=50 * tol(dtype)["atol"], rtol=0)
    torch.testing.assert_close(M.proju(x, u), u, **tol(dtype))


def test_expmap_logmap_roundtrip(case, tol):
    M, dtype, point, tangent = case
    x = point()
    u = tangent(x)
    if M.injectivity_radius < math.inf:  # stay inside the injectivity radius
        u = u * (2.5 / M.norm(x, u).clamp(min=2.5)).unsqueeze(-1)
    y = M.expmap(x, u)
    t = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else dict(atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(M.logmap(x, y), u, **t)
    torch.testing.assert_close(M.expmap(x, M.logmap(x, y)), y, **t)


def test_dist_equals_norm_of_logmap(case):
    M, dtype, point, _ = case
    x, y = point(), point()
    if M.name == "Sphere":  # keep away from the cut locus, where logmap is singular
        y = M.projx(x + 0.8 * (y - x))
    t = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else dict(atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(M.dist(x, y), M.norm(x, M.logmap(x, y)), **t)
    torch.testing.assert_close(M.dist(x, y), M.dist(y, x), **t)


def test_transp_preserves_inner_products(case):
    M, dtype, point, tangent = case
    x, y = point(), point()
    if M.name == "Sphere":
        y = M.projx(x + 0.8 * (y - x))
    u, v = tangent(x), tangent(x)
    tu, tv = M.transp(x, y, u), M.transp(x, y, v)
    t = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else dict(atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(M.inner(y, tu, tv), M.inner(x, u, v), **t)
    if M.name != "Euclidean":
        ip = M.inner(y, y, tu)
        torch.testing.assert_close(ip, torch.zeros_like(ip), **t)


def test_tangent_basis_orthonormal(case):
    M, dtype, point, _ = case
    x = point()
    if M.name == "Sphere":  # include both origin regions and the origin's antipode itself
        x = torch.cat([x, M.origin(1, dtype=dtype), -M.origin(1, dtype=dtype)])
    E = M.tangent_basis(x)
    assert E.shape == (*x.shape[:-1], M.dim, M.ambient_dim)
    gram = M.inner(x[..., None, None, :], E.unsqueeze(-2), E.unsqueeze(-3))
    eye = torch.eye(M.dim, dtype=dtype).expand_as(gram)
    t = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(gram, eye, **t)
    if M.name != "Euclidean":
        ip = M.inner(x.unsqueeze(-2), x.unsqueeze(-2), E)
        torch.testing.assert_close(ip, torch.zeros_like(ip), **t)


def test_batch_equals_loop(case, tol):
    M, dtype, point, tangent = case
    x = point()
    u = tangent(x, 0.5)
    y = M.expmap(x, u)
    batch = [M.expmap(x, u), M.logmap(x, y), M.logdetexp(x, u), M.dist(x, y), M.tangent_basis(x)]
    for i in range(x.shape[0]):
        single = [
            M.expmap(x[i], u[i]),
            M.logmap(x[i], y[i]),
            M.logdetexp(x[i], u[i]),
            M.dist(x[i], y[i]),
            M.tangent_basis(x[i]),
        ]
        for b, s in zip(batch, single, strict=True):
            torch.testing.assert_close(b[i], s, **tol(dtype))


@pytest.mark.parametrize("cls", [Sphere, Hyperboloid])
@pytest.mark.parametrize("dim", [2, 3, 5])
def test_logdetexp_matches_autograd_jacobian(cls, dim):
    M = cls(dim)
    g = torch.Generator().manual_seed(3)
    xs = M.random(4, generator=g)
    for x in xs:
        E = M.tangent_basis(x)
        for r in [0.0, 1e-3, 0.5, 1.5, 2.5, 3.0]:
            if cls is Sphere and r >= math.pi:
                continue
            v = torch.randn(dim, generator=g)
            v = r * v / v.norm()

            jac = torch.autograd.functional.jacobian(lambda w: M.expmap(x, w @ E), v)  # (n+1, n)
            y = M.expmap(x, v @ E)
            # Express the columns in an orthonormal basis of T_y M and take log|det|.
            Ey = M.tangent_basis(y)
            Jy = M.inner(y, Ey.unsqueeze(-2), jac.T.unsqueeze(-3))  # (n, n)
            expected = torch.linalg.slogdet(Jy).logabsdet
            torch.testing.assert_close(M.logdetexp(x, v @ E), expected, atol=1e-8, rtol=1e-8)


SMALL = [0.0] + [10.0**-k for k in range(15, 0, -2)] + [1.0]


@pytest.mark.parametrize("cls", [Sphere, Hyperboloid, Euclidean, Torus])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r", SMALL)
def test_gradients_finite_near_zero(cls, dtype, r):
    M = cls(2)
    x = M.origin(dtype=dtype) if cls is not Sphere else M.projx(torch.tensor([0.3, -0.5, 0.8], dtype=dtype))
    d = M.proju(x, torch.tensor([0.2, 0.7, -0.4, 0.5], dtype=dtype)[: M.ambient_dim])
    u = (r * d / M.norm(x, d)).requires_grad_(True)
    y = M.expmap(x, u)
    for out in [
        y.sum(),
        M.logdetexp(x, u),
        M.logmap(x, y.detach() + 0 * y).sum(),
        M.dist(x, y),
        M.norm(x, u),
    ]:
        if not out.requires_grad:  # the flat log-det is the constant 0
            continue
        (grad,) = torch.autograd.grad(out, u, retain_graph=True, allow_unused=True)
        assert grad is None or torch.isfinite(grad).all(), (out, grad)
    # second derivatives (used by the flow's divergence at the chart centre) are finite too
    y2 = M.expmap(x, u)
    (g1,) = torch.autograd.grad(y2.sum() + M.logdetexp(x, u), u, create_graph=True)
    if g1.requires_grad:  # constant for the flat case
        (g2,) = torch.autograd.grad(g1.sum(), u)
        assert torch.isfinite(g2).all()


def test_second_derivative_of_expmap_at_zero_is_exact():
    # d^2/dt^2 exp_x(t u) at t = 0 is the geodesic acceleration -|u|^2 x (sphere), +|u|^2 x (hyperboloid).
    for M, sign in [(Sphere(2), -1.0), (Hyperboloid(2), 1.0)]:
        x = M.origin()
        u = M.proju(x, torch.tensor([0.0, 0.6, -0.8]))
        t = torch.zeros((), requires_grad=True)
        y = M.expmap(x, t * u)
        acc = []
        for i in range(3):
            (dyi,) = torch.autograd.grad(y[i], t, create_graph=True)
            acc.append(torch.autograd.grad(dyi, t, retain_graph=True)[0])
        acc = torch.stack(acc)
        torch.testing.assert_close(acc, sign * M.inner(x, u, u) * x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sphere_gradients_finite_near_antipode(dtype):
    M = Sphere(2)
    x = M.origin(dtype=dtype)
    for eps in [1e-1, 1e-2, 1e-3]:
        y = M.projx(-x + torch.tensor([0.0, eps, 0.0], dtype=dtype)).requires_grad_(True)
        for out in [M.logmap(x, y).sum(), M.dist(x, y)]:
            (grad,) = torch.autograd.grad(out, y)
            assert torch.isfinite(grad).all()
        u = M.logmap(x, y.detach())
        assert M.norm(x, u) < math.pi and M.norm(x, u) > math.pi - 2 * eps
        uu = u.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(M.logdetexp(x, uu), uu)
        assert torch.isfinite(grad).all()


def test_special_functions_match_closed_forms():
    r = torch.tensor([1e-8, 1e-4, 0.01, 0.1, 0.5, 1.0, 2.0, 3.0])
    r2 = r * r
    torch.testing.assert_close(special.sinc_sq(r2), torch.sin(r) / r)
    torch.testing.assert_close(special.sinhc_sq(r2), torch.sinh(r) / r)
    torch.testing.assert_close(special.inv_sinc_sq(r2), r / torch.sin(r))
    torch.testing.assert_close(special.inv_sinhc_sq(r2), r / torch.sinh(r))
    torch.testing.assert_close(special.cos_sq(r2), torch.cos(r))
    torch.testing.assert_close(special.cosh_sq(r2), torch.cosh(r))
    torch.testing.assert_close(special.log_sinc_sq(r2), torch.log(torch.sin(r) / r))
    torch.testing.assert_close(special.log_sinhc_sq(r2), torch.log(torch.sinh(r) / r))
    s = torch.tensor([1e-8, 1e-3, 0.1, 0.5, 0.9])
    torch.testing.assert_close(special.asinc_sq(s * s), torch.asin(s) / s)
    torch.testing.assert_close(special.asinhc_sq(s * s), torch.asinh(s) / s)
    big = torch.tensor([800.0**2])  # sinh overflows float64 here; the log must not
    torch.testing.assert_close(special.log_sinhc_sq(big), torch.tensor([800 - math.log(2) - math.log(800)]))
    for f in [special.safe_acos, special.safe_acosh]:
        x = torch.tensor([1.0, -1.0], requires_grad=True)
        (g,) = torch.autograd.grad(f(x).sum(), x)
        assert torch.isfinite(g).all()


def test_conversions():
    S, H = Sphere(2), Hyperboloid(2)
    north = S.lonlat_to_xyz(torch.tensor(0.3), torch.tensor(math.pi / 2))
    torch.testing.assert_close(north, torch.tensor([0.0, 0.0, 1.0]), atol=1e-12, rtol=0)
    lon, lat = torch.tensor([0.5, -2.0]), torch.tensor([0.2, -1.0])
    lo, la = S.xyz_to_lonlat(S.lonlat_to_xyz(lon, lat))
    torch.testing.assert_close((lo, la), (lon, lat))
    x = H.random(20)
    p = H.to_poincare(x)
    assert (p.norm(dim=-1) < 1).all()
    torch.testing.assert_close(H.from_poincare(p), x)


def test_get_manifold():
    assert isinstance(get_manifold("Sphere", 3), Sphere) and get_manifold("Sphere", 3).dim == 3
    assert isinstance(get_manifold("Hyperboloid"), Hyperboloid)
    with pytest.raises(ValueError, match="Hyperboloid"):
        get_manifold("Klein")
    with pytest.raises(ValueError):
        Sphere(0)


@pytest.mark.parametrize("cls", [Sphere, Hyperboloid, Euclidean, Torus])
@pytest.mark.parametrize("dim", [1, 2, 4])
def test_chart_calculus_matches_autodiff(cls, dim):
    """Closed forms used by the flow: chart velocity, grad log J, and the field projection's JVP."""
    from torch.func import jvp

    from manifolds.base import Manifold

    M = cls(dim)
    g = torch.Generator().manual_seed(5)
    x = M.random(6, generator=g)
    E = M.tangent_basis(x)
    v = torch.randn(6, dim, generator=g)
    v[0] = 0.0  # the chart centre
    v[1] *= 1e-6
    y = M.chart(x, v, E)
    w = M.proj_field(y, torch.randn(y.shape, generator=g))
    torch.testing.assert_close(M.chart_velocity(x, v, w, E), Manifold.chart_velocity(M, x, v, w, E))
    vv = v.clone().requires_grad_(True)
    logdet = M.logdetexp(x, M.from_coords(x, vv, E)).sum()
    if logdet.requires_grad:
        (grad,) = torch.autograd.grad(logdet, vv)
        torch.testing.assert_close(M.grad_logdetexp(x, v), grad)
    # a segment's end: the chart point and log J from one pass, as the generic composition gives them
    # (values and gradients; v[0] = 0 and v[1] ~ 1e-6 take the series branch)
    yy, lj = M.chart_with_logdet(x, vv, E)
    uu = M.from_coords(x, vv, E)
    ref_y, ref_lj = M.expmap(x, uu), M.logdetexp(x, uu)
    torch.testing.assert_close((yy, lj), (ref_y, ref_lj))
    if lj.requires_grad:
        torch.testing.assert_close(
            torch.autograd.grad((yy.sum() + lj.sum()), vv)[0],
            torch.autograd.grad(ref_y.sum() + ref_lj.sum(), vv)[0],
        )
    h, dh = torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g)
    dy = M.proju(y, torch.randn(y.shape, generator=g))
    _, ref = jvp(M.proj_field, (y, h), (dy, dh))
    torch.testing.assert_close(M.proj_field_jvp(y, h, dy, dh), ref)
    f = M.proj_field(y, h)
    if M.name != "Euclidean":  # the projected field is tangent
        torch.testing.assert_close(M.inner(y, y, f), torch.zeros(6), atol=1e-10, rtol=0)
    if M.name == "Hyperboloid":  # transport: speed equals the spatial part of the network output
        torch.testing.assert_close(M.norm(y, f), h[:, 1:].norm(dim=-1))
