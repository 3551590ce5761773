"""flows/fused.py: the exact divergence as one autograd node gives the generic path's numbers."""

import gc
import os
import shutil
import stat
import weakref

import pytest
import torch

from flows import MCNF, fused, native
from flows import divergence as div_mod
from flows.fused import ExactDivergence, exact_divergence, supports
from flows.vector_field import FieldAverage, VectorField
from manifolds import get_manifold


def _inputs(M, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    if M.name == "Hyperboloid":
        p = M.random(B, scale=1.5, generator=g, dtype=torch.float64)
    else:  # both hemispheres (the frame's sign) and a point on the equator y_0 = 0
        p = M.random(B, generator=g, dtype=torch.float64)
        p[4, 0] = 0.0
        p[4] = p[4] / p[4].norm()
    v = 0.7 * torch.randn(B, M.dim, generator=g, dtype=torch.float64)
    v[:3] *= 1e-3  # inside the radial functions' Taylor branch
    v[3] = 0.0  # a chart's first stage
    return p, M.tangent_basis(p), v, torch.tensor(0.3, dtype=torch.float64)


@pytest.mark.parametrize("manifold", ["Hyperboloid", "Sphere"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_equal_the_generic_path(manifold, n, dtype, library):
    if library == "native" and n > native.MAX_DIM:
        pytest.skip("the numpy kernel runs there (flows/native.py MAX_DIM)")
    M = get_manifold(manifold, dim=n)
    torch.manual_seed(n)
    field = VectorField(M).to(dtype)
    p, E, v, t = _inputs(M, 40)
    if M.name == "Sphere":  # the sphere's geometry runs in the model's dtype
        p, E, v, t = (x.to(dtype) for x in (p, E, v, t))
    out, grads = [], []
    for fn in (lambda *a: div_mod.chart_divergence(M, field, *a), lambda *a: exact_divergence(M, field, *a)):
        ins = [x.clone().requires_grad_() for x in (p, v, E)]
        g, d = fn(t, *ins)
        w = torch.randn(g.shape, generator=torch.Generator().manual_seed(1), dtype=g.dtype)
        loss = (w * g).sum() + (torch.arange(len(d), dtype=d.dtype) * d).sum()
        out.append((g.detach(), d.detach()))
        grads.append(torch.autograd.grad(loss, [*ins, *field.parameters()]))
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for a, b in zip(out[0], out[1], strict=True):
        torch.testing.assert_close(b, a, **tol)
    for a, b in zip(grads[0], grads[1], strict=True):
        assert b.dtype == a.dtype and b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * (1 + a.abs().max()))


def _native_or_skip():
    """The C++ kernel must build wherever a C++ compiler is on the PATH (CI's machines have one)."""
    if native.library() is None:
        assert shutil.which(os.environ.get("CXX", "c++")) is None or not native.enabled(), (
            "the kernel did not build"
        )
        pytest.skip("no C++ compiler (or MCNF_NATIVE=0): the numpy kernel runs")


@pytest.fixture(params=["native", "numpy", "torch"])
def library(request, monkeypatch):
    """The kernel in C++ (the CPU's, flows/native.py), on numpy (the CPU's without a compiler) and on torch
    (other devices': run here on CPU tensors)."""
    if request.param == "native":
        _native_or_skip()
    else:
        monkeypatch.setattr(fused, "NATIVE", False)
    if request.param == "torch":
        monkeypatch.setattr(fused, "_ops_for", lambda device: fused._Torch)
    return request.param


@pytest.mark.parametrize("manifold", ["Hyperboloid", "Sphere"])
@pytest.mark.parametrize("hidden,n_hidden", [(32, 3), (7, 2), (5, 0)])
def test_gradcheck(manifold, hidden, n_hidden, library):
    M = get_manifold(manifold, dim=2)
    torch.manual_seed(0)
    # the default network (the C++ kernel's specialized entry), another width, no hidden layer
    field = VectorField(M, hidden=hidden, n_hidden=n_hidden).double()
    p, E, v, t = _inputs(M, 6)
    params = [x for layer in field.layers for x in (layer.weight, layer.bias)]
    # t too: an adaptive solver's times depend on the state, and the gradient follows them
    args = [x.clone().requires_grad_() for x in (t, v, p, E, *params)]
    assert torch.autograd.gradcheck(lambda *a: ExactDivergence.apply(M.name, True, *a), args)


def test_no_reference_cycle():
    # an output saved on ctx other than by save_for_backward would keep every solve's graph alive until
    # the garbage collector ran (a leak that slowed training twofold before it was found)
    M = get_manifold("Hyperboloid", dim=2)
    field = VectorField(M)
    p, E, v, t = _inputs(M, 8)
    was = gc.isenabled()
    gc.disable()
    try:
        g, d = exact_divergence(M, field, t, p, v.requires_grad_(), E)
        ref = weakref.ref(g.grad_fn)
        (g.sum() + d.sum()).backward()
        del g, d
        assert ref() is None
    finally:
        if was:
            gc.enable()


def test_inputs_changed_in_place_are_refused(library):
    # the backward pass reads v, p, E and the weights (the numpy kernels g too): autograd's version check
    # guards them (a numpy view or a pointer kept on the side would silently read the changed values)
    M = get_manifold("Hyperboloid", dim=2)
    field = VectorField(M)
    p, E, v, t = _inputs(M, 8)
    g, d = exact_divergence(M, field, t, p, v.requires_grad_(), E)
    with torch.no_grad():
        field.layers[1].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (g.sum() + d.sum()).backward()
    grads = []
    for change in (False, True):
        g, d = exact_divergence(M, field, t, p, v, E)
        if change:
            with torch.no_grad():
                g.mul_(2)
        if change and library != "native":
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                (g.sum() + d.sum()).backward()
            return
        grads.append(torch.autograd.grad(g.sum() + d.sum(), v))
    # the C++ kernel's reverse pass reads its own copy of g (in the workspace it kept)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_what_it_covers():
    H, S = get_manifold("Hyperboloid", dim=2), get_manifold("Sphere", dim=2)
    assert supports(H, VectorField(H), "exact")
    assert not supports(H, VectorField(H), "hutchinson")
    assert supports(S, VectorField(S), "exact")
    assert not supports(get_manifold("Torus", dim=2), VectorField(get_manifold("Torus", dim=2)), "exact")
    assert not supports(H, VectorField(H, fourier=4), "exact")
    assert not supports(H, VectorField(H, activation="softplus"), "exact")  # (also has the speed limiter)
    assert not supports(H, FieldAverage([VectorField(H), VectorField(H)]), "exact")


@pytest.mark.parametrize("manifold,charts", [("Hyperboloid", 1), ("Hyperboloid", 3), ("Sphere", 3)])
def test_training_step_equals_the_generic_path(manifold, charts):
    """A model's loss and gradients with and without the fused evaluation (several charts: the centres
    of the later ones carry gradients)."""
    torch.manual_seed(0)
    m = MCNF(manifold, charts=charts, train_solver=dict(method="rk4", step_size=0.25)).train()
    g = torch.Generator().manual_seed(1)
    x = (
        m.manifold.random(64, scale=2.0, generator=g)
        if manifold == "Hyperboloid"
        else m.manifold.random(64, generator=g)
    )
    res = []
    for on in (False, True):
        m.dynamics.fused = on
        m.zero_grad()
        lp = m.log_prob(x)
        lp.mean().backward()
        res.append((lp.detach(), torch.cat([q.grad.flatten() for q in m.parameters()])))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-4, atol=1e-5)


def test_benchmark_writes_its_section(tmp_path):
    from benchmarks import fused as bench
    from benchmarks import sections

    md = tmp_path / "benchmark.md"
    md.write_text(f"# page\n\n{sections.DIMENSIONS[0]}\nkept\n{sections.DIMENSIONS[1]}\n")
    assert bench.main(["--steps", "2", "--reps", "1", "--md", str(md)]) == 0
    text = md.read_text()
    assert text.index(sections.FUSED[0]) < text.index(sections.DIMENSIONS[0]) and "kept" in text
    rows = [line for line in text.splitlines() if line.startswith(("| Sphere", "| Hyperboloid"))]
    assert len(rows) == 2 and all(
        float(c.strip().rstrip("x")) > 0 for r in rows for c in r.strip("|").split("|")[1:]
    )
    assert "step C++ | step numpy | step generic" in text and all(len(r.split("|")) == 10 for r in rows)
    assert fused.NATIVE  # switched back


def test_the_native_kernel_runs_where_it_is_built(monkeypatch):
    """On the CPU the default models' evaluation goes through the C++ kernel (all three dtype pairings), and
    a disabled kernel (``MCNF_NATIVE=0``, no compiler) leaves the numpy kernel with the same numbers."""
    _native_or_skip()
    calls = []
    real = native.evaluate
    monkeypatch.setattr(native, "evaluate", lambda *a, **k: calls.append(a[4].dtype) or real(*a, **k))
    out = {}
    for manifold, dtype in (
        ("Sphere", torch.float32),
        ("Hyperboloid", torch.float32),
        ("Sphere", torch.float64),
    ):
        m = MCNF(manifold).to(dtype)
        x = m.manifold.random(16, generator=torch.Generator().manual_seed(0)).to(dtype)
        assert m.dynamics.runs_native("cpu", dtype)
        out[manifold, dtype] = m.log_prob(x)
        fused.NATIVE = False
        try:
            assert not m.dynamics.runs_native("cpu", dtype)
            torch.testing.assert_close(m.log_prob(x), out[manifold, dtype], rtol=1e-5, atol=1e-5)
        finally:
            fused.NATIVE = True
    assert set(calls) == {
        torch.float32,
        torch.float64,
    }  # the sphere's state in float32, the hyperboloid's in 64
    monkeypatch.setenv("MCNF_NATIVE", "0")
    assert native.library() is None and not MCNF("Sphere").dynamics.runs_native("cpu", torch.float32)


def test_without_a_compiler_there_is_no_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is None
    m = MCNF("Sphere")
    x = m.manifold.random(8, generator=torch.Generator().manual_seed(0))
    assert not m.dynamics.runs_native("cpu", torch.float32) and torch.isfinite(m.log_prob(x)).all()


def test_the_library_is_loaded_only_from_a_private_folder(tmp_path, monkeypatch):
    """Loading a shared library runs its code: a cache folder others can write to is not used."""
    mine = tmp_path / "cache"
    assert native._private_folder(mine) and stat.S_IMODE(mine.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not native._private_folder(shared)
    (tmp_path / "file").write_text("")
    assert not native._private_folder(tmp_path / "file")
    # $MCNF_CACHE_DIR first; when it is not private, this user's folder in the temporary directory
    import tempfile

    monkeypatch.setenv("MCNF_CACHE_DIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folders = list(native._cache_folders())
    assert (
        folders[0] == shared
        and next(f for f in folders if native._private_folder(f)).parent == tmp_path / "tmp"
    )


def test_the_native_kernel_runs_where_it_is_the_faster_one():
    """flows/native.py's measured shapes: n <= 2 and hidden widths <= 32 (elsewhere the numpy kernel)."""
    _native_or_skip()
    for manifold in ("Sphere", "Hyperboloid"):
        for n, hidden, runs in ((2, 32, True), (1, 32, True), (2, 16, True), (2, 64, False), (3, 32, False)):
            m = MCNF(manifold, dim=n, hidden=hidden).float()
            assert m.dynamics.runs_native("cpu", torch.float32) == runs, (manifold, n, hidden)
            p, E, v, t = _inputs(m.manifold, 8)
            params = [x.float() for layer in m.field.layers for x in (layer.weight, layer.bias)]
            state = p.dtype if manifold == "Hyperboloid" else torch.float32
            assert native.supports(*(x.to(state) for x in (v, p, E)), params) == runs


def test_empty_batches_and_strided_weights_take_the_numpy_kernel():
    """The C++ kernel reads data pointers: an empty batch (null pointers) and non-contiguous weights go to the
    numpy kernel, which gives zero gradients and reads strides (found by trying both: the C++ kernel had
    returned uninitialized weight gradients for an empty batch and wrong values for a transposed weight)."""
    _native_or_skip()
    M = get_manifold("Sphere", dim=2)
    field = VectorField(M).float()
    t = torch.tensor(0.3, dtype=torch.float32)
    p = M.random(0, dtype=torch.float32)
    v = torch.zeros(0, 2, dtype=torch.float32, requires_grad=True)
    g, d = exact_divergence(M, field, t, p, v, M.tangent_basis(p))
    (g.sum() + d.sum()).backward()
    assert g.shape == (0, 2) and all((x.grad == 0).all() for x in field.parameters())
    params = [x for layer in field.layers for x in (layer.weight, layer.bias)]
    p = M.random(6, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    E, v = M.tangent_basis(p), 0.2 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1)).float()
    assert native.supports(v, p, E, params)
    strided = torch.nn.Parameter(field.layers[1].weight.detach().t().contiguous().t())
    field.layers[1].weight = strided
    assert not strided.is_contiguous() and not native.supports(v, p, E, [*params[:2], strided, *params[3:]])
    out = exact_divergence(M, field, t, p, v, E)
    field.layers[1].weight = torch.nn.Parameter(strided.detach().contiguous())
    torch.testing.assert_close(out, exact_divergence(M, field, t, p, v, E), rtol=1e-5, atol=1e-6)
