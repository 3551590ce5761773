"""Figures: written, right size, not blank, and showing the right things (headless Agg backend)."""

import builtins
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from data import get_density
from viz import figures
from viz.paper_grid import paper_grid


def _png(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(float)


def test_5gaussians_poincare_blobs(tmp_path):
    den = get_density("Hyperboloid", "5gaussians")
    res = 120
    vals = figures.density_values(den.log_prob, "Hyperboloid", res)
    labels, n = ndimage.label(vals > 0.5 * vals.max())
    assert n == 5, n
    c = (np.arange(res) + 0.5) / res * 2 - 1
    centres = ndimage.center_of_mass(vals, labels, range(1, 6))
    pts = sorted((round(float(c[0] + (c[1] - c[0]) * col), 2), round(float(c[0] + (c[1] - c[0]) * row), 2))
                 for row, col in centres)  # fmt: skip
    r = math.tanh(1.5)  # tangent radius 3 on the Poincare disk
    expected = sorted([(0.0, 0.0), (r, 0.0), (-r, 0.0), (0.0, r), (0.0, -r)])
    for (x, y), (ex, ey) in zip(pts, expected, strict=True):
        assert abs(x - ex) < 0.05 and abs(y - ey) < 0.05, (pts, expected)
    # the pulled-back density makes the five peaks equal
    peaks = ndimage.maximum(vals, labels, range(1, 6))
    assert max(peaks) / min(peaks) < 1.1
    out = figures.plot_panels([dict(title="truth", values=vals)], "Hyperboloid", tmp_path / "d.png")
    img = _png(out)
    assert img.shape == (figures.DPI * 4, figures.DPI * 4, 3)
    assert img.std() > 10  # not blank


def test_sphere_1wrapped_brightest_pixel(tmp_path):
    den = get_density("Sphere", "1wrapped")
    res = 180
    vals = figures.density_values(den.log_prob, "Sphere", res)
    row, col = np.unravel_index(np.argmax(vals), vals.shape)
    lon = (col + 0.5) / res * 360 - 180
    lat = (row + 0.5) / res * 180 - 90
    assert abs(lon - (-135.0)) < 3 and abs(lat - math.degrees(math.asin(-1 / math.sqrt(3)))) < 3
    out = figures.density_figure(
        {"truth": den.log_prob, "again": den.log_prob}, "Sphere", tmp_path / "s.png", res=60
    )
    img = _png(out)
    assert img.shape == (figures.DPI * 4, figures.DPI * 16, 3)
    assert img.std() > 10


def test_sphere_without_cartopy_falls_back(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def blocked(name, *a, **k):
        if name.startswith("cartopy"):
            raise ImportError("blocked for the test")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", blocked)
    den = get_density("Sphere", "4wrapped")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = figures.density_figure({"truth": den.log_prob}, "Sphere", tmp_path / "f.png", res=50)
    assert any("Cartopy unavailable" in str(x.message) for x in w)
    img = _png(out)
    assert img.shape == (figures.DPI * 4, figures.DPI * 8, 3) and img.std() > 10


def test_samples_and_curve_and_gif(tmp_path):
    den = get_density("Sphere", "4wrapped")
    x = den.sample(500, generator=torch.Generator().manual_seed(0))
    out = figures.samples_figure({"a": x, "b": x}, "Sphere", tmp_path / "s.png")
    assert _png(out).std() > 10
    hist = [dict(epoch=e, test_nll=3.0 - e / 10, entropy=1.7) for e in (1, 2, 3)]
    out = figures.training_curve(
        hist, tmp_path / "c.png", losses=(np.arange(1, 4), np.array([3.0, 2.5, 2.0]))
    )
    assert _png(out).std() > 10
    frames = []
    for i in range(4):
        frames.append(figures.plot_panels([dict(values=np.random.default_rng(i).random((20, 20)))], "Hyperboloid",
                                          tmp_path / f"{i}.png"))  # fmt: skip
    assert figures.make_gif(frames, tmp_path / "a.gif") == 4
    assert Image.open(tmp_path / "a.gif").n_frames == 4


def test_paper_grid(tmp_path):
    h = get_density("Hyperboloid", "5gaussians")
    s = get_density("Sphere", "4wrapped")
    out = paper_grid([("h", "Hyperboloid", h.log_prob, h.log_prob), ("s", "Sphere", s.log_prob, s.log_prob)],
                     tmp_path / "g.png", res=40)  # fmt: skip
    img = _png(out)
    assert img.shape == (figures.DPI * 8, figures.DPI * 16, 3) and img.std() > 10


def test_unknown_manifold():
    with pytest.raises(ValueError, match="Hyperboloid"):
        figures.density_values(lambda x: x[:, 0], "Euclidean", 10)
