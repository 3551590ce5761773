"""Earth event data: loader, known places, splits, clear errors, and a short training run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.earth import EARTH, SHIPPED_DIR, EarthData, load_earth, read_lat_lon, split_indices

ROOT = Path(__file__).resolve().parents[1]
DATA = SHIPPED_DIR  # the catalogues ship with the project (data/events/)


@pytest.mark.parametrize("name", list(EARTH))
def test_loader_counts_and_unit_norm(name):
    x = load_earth(name, DATA)
    assert x.shape == (EARTH[name][1], 3)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(len(x)))


def test_known_places(tmp_path):
    (tmp_path / "volerup.csv").write_text("# comment\nLatitude,Longitude\n90,17\n0,0\n0,90\n-90,0\n0,180\n")
    x = load_earth("volcano", tmp_path)
    expected = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, -1], [-1, 0, 0]])
    torch.testing.assert_close(x, expected, atol=1e-12, rtol=0)
    (tmp_path / "fire.csv").write_text("# no header\n10.5,20.25\n")
    assert read_lat_lon(tmp_path / "fire.csv").tolist() == [[10.5, 20.25]]


def test_split_is_a_deterministic_partition():
    a = split_indices(827, seed=3)
    b = split_indices(827, seed=3)
    c = split_indices(827, seed=4)
    allidx = torch.cat(a).sort().values
    assert torch.equal(allidx, torch.arange(827))
    assert [len(s) for s in a] == [662, 83, 82]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"quakes_all.csv.*NOAA"):
        load_earth("earthquake", tmp_path)
    with pytest.raises(ValueError, match="volcano"):
        load_earth("tsunami", tmp_path)


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(ROOT / "main_density.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)  # fmt: skip


def test_cli_missing_data_is_a_clear_error(tmp_path):
    r = _run("--M", "Sphere", "--dataset", "flood", "--data_dir", tmp_path, "--epochs", 1, "--dev", "cpu",
             "--out", tmp_path / "o", "--quiet")  # fmt: skip
    assert r.returncode == 2 and "flood.csv" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _run("--M", "Hyperboloid", "--dataset", "volcano", "--data_dir", tmp_path, "--epochs", 1, "--quiet")
    assert r.returncode == 2 and "--M Sphere" in r.stderr


def test_short_volcano_run_finite_and_normalized(tmp_path):
    r = _run("--M", "Sphere", "--dataset", "volcano", "--data_dir", DATA, "--epochs", 2, "--eval_freq", 1,
             "--dev", "cpu", "--out", tmp_path, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(m["test_nll"]) and math.isfinite(m["val_nll"]) and m["best_epoch"] in (1, 2)
    assert (tmp_path / "best.pt").is_file()
    from flows import load_model, model_integral

    model = load_model(tmp_path / "checkpoint.pt").double()
    assert abs(model_integral(model, n_radial=60, n_angular=120) - 1) < 5e-3
    d = EarthData("volcano", DATA, split_seed=0)
    assert m["n_test"] == len(d.test)


def test_map_view_is_the_scoring_solves_values():
    """Every cell a map shows is the scoring solve's: scripts.earth.rescore_view computes the cells within
    the view (8 nats) and a margin below it again, until the top stops moving, so a fixed step's blow-up at
    one grid point (fire's long model: log p 14.8 by the map's step, -29.3 scored) can neither set the scale
    nor leave artefacts in view; the cells far below the view keep the map's values."""
    import numpy as np

    from manifolds import Sphere
    from scripts.earth import LOG_RANGE, VIEW_MARGIN, rescore_view

    def scored(x):  # the "scoring solve": a smooth density with its mode at the north pole
        return 6.0 * x[:, 2] - 6.0

    res = 20
    x = Sphere(2).plot_grid(res)[0]
    truth = np.exp(scored(x).numpy())
    values = truth.copy().reshape(res, res)
    flat = values.reshape(-1)
    south = np.flatnonzero(x[:, 2].numpy() < -0.9)  # true log p below -11: out of view
    spike, artefact, low = south[0], south[1], south[2]
    flat[spike] = math.exp(14.8)  # a blow-up far above the true top
    flat[artefact] = math.exp(-1.0)  # wrongly in view
    flat[low] = truth[low] * math.exp(0.5)  # wrong, but far below the view: not computed again
    before = values.copy()
    n, err, refined, _ = rescore_view(values, res, scored)
    top = np.log(truth.max())
    in_view = np.log(truth) >= top - LOG_RANGE - VIEW_MARGIN
    assert n == int(in_view.sum()) + 2 and refined == 0  # the view, the spike and the artefact
    assert np.allclose(flat[[spike, artefact]], truth[[spike, artefact]])
    assert np.allclose(flat[in_view], truth[in_view]) and flat[low] == truth[low] * math.exp(0.5)
    assert err > 14.8 - np.log(truth[spike]) - 1e-9
    assert values.max() == truth.max()

    # a finer step tried first, which still blows up at the spike and is 0.01 nats high elsewhere
    calls = []
    xs = x.double()

    def finer(y):
        calls.append(len(y))
        lp = scored(y) + 0.01
        lp[(y - xs[spike]).norm(dim=-1) < 1e-12] = 14.0
        return lp

    # where the fixed step is right near the view, a probe of 64 cells shows that the finer step does not
    # pay: the spike (refined alone, then scored) and the probe are all it computes; every cell in view is
    # still the scoring solve's
    values2 = before.copy()
    n2, err2, refined2, refining2 = rescore_view(values2, res, scored, finer)
    flat2 = values2.reshape(-1)
    assert calls == [1, 64] and refined2 == 65 and not refining2  # no band below the reach either
    assert np.allclose(flat2[in_view], truth[in_view]) and np.isclose(flat2[spike], truth[spike])
    assert n2 <= n and err2 == pytest.approx(err) and flat2[low] == truth[low] * math.exp(0.5)

    # where many cells far from the mode are wrongly high (a sharp model's stiff cells), the probe finds
    # them out of reach by the finer step, which then computes every cell within reach first: those
    # cells keep the finer step's values, far below the view, and only the cells near the view are scored
    calls.clear()
    values3 = before.copy()
    wrong = np.setdiff1d(np.flatnonzero(x[:, 2].numpy() < -0.3), [spike, artefact, low])
    assert len(wrong) > 64
    values3.reshape(-1)[wrong] = math.exp(-2.0)
    n3, _, refined3, refining3 = rescore_view(values3, res, scored, finer)
    flat3 = values3.reshape(-1)
    assert np.allclose(flat3[in_view], truth[in_view]) and np.isclose(flat3[spike], truth[spike])
    far = wrong[np.log(truth[wrong]) + 0.01 < top - LOG_RANGE - VIEW_MARGIN]
    assert np.allclose(np.log(flat3[far]), np.log(truth[far]) + 0.01)  # the finer step's values, not scored
    assert sum(calls) == refined3 > len(far) and n3 <= n and refining3
    assert n3 <= int((np.log(truth) >= top - LOG_RANGE - VIEW_MARGIN - 0.01).sum()) + 1


def test_view_cascade_refines_a_band_below_the_reach():
    """While the finer step is in use, the points the fixed step leaves up to REFINE_BAND nats below the reach
    are computed with it too: one truly in view (put 1.5 nats below the reach) is then scored and shown, one
    truly far below (put just under the reach: volcano's default map, a test event at -2.37 by the fixed
    step, -5.89 scored) takes the finer step's value; points below the band keep the fixed step's. Without
    the finer step (or once a probe has stopped it) nothing below the reach is computed again."""
    import numpy as np
    import torch

    from scripts.earth import LOG_RANGE, REFINE_BAND, VIEW_MARGIN, view_cascade

    exact = lambda y: y[:, 0].clone()  # noqa: E731 (the point's first coordinate is its log-density)
    finer = lambda y: y[:, 0] + 0.01  # noqa: E731
    top = 0.0
    reach = top - LOG_RANGE - VIEW_MARGIN
    truth = np.array([top, -3.0, reach - 0.5 * REFINE_BAND, reach - 3.0, reach - REFINE_BAND - 2.0])
    logs = truth.copy()
    logs[1] = reach - 1.5  # truly in view, put below the reach
    logs[2] = reach - 0.3  # truly far below, put just under the reach
    logs[3] = reach - REFINE_BAND - 0.5  # below the band: not computed again
    x = torch.tensor(truth).unsqueeze(-1).expand(5, 3).contiguous()
    out, done = view_cascade(logs, x, exact, finer, top, probe=None)
    assert np.allclose(out[[0, 1]], truth[[0, 1]])  # scored
    assert np.isclose(out[2], truth[2] + 0.01) and out[3] == logs[3] and out[4] == logs[4]
    assert done.scored == 2 and done.refined == 3 and done.refining
    out, done = view_cascade(logs, x, exact, None, top)
    assert np.allclose(out[0], truth[0]) and np.array_equal(out[1:], logs[1:]) and not done.refining


def test_view_cascade_with_a_fixed_top_scores_only_the_points_in_view():
    """The map as drawn at points off its grid (the test events): with the map's top given, the points the
    fixed step puts within reach of the view get the scoring solve's value, the others keep their own."""
    import numpy as np
    import torch

    from scripts.earth import LOG_RANGE, VIEW_MARGIN, view_cascade

    x = torch.linspace(-1, 1, 7).unsqueeze(-1).expand(7, 3).double()
    exact = lambda y: y[:, 0] * 6.0  # noqa: E731
    logs = exact(x).numpy() - 0.1  # the fixed step, 0.1 nats low everywhere
    top = 6.0
    out, done = view_cascade(logs, x, exact, top=top)
    near = logs >= top - LOG_RANGE - VIEW_MARGIN
    assert 0 < near.sum() < len(x)
    assert np.allclose(out[near], exact(x).numpy()[near]) and np.array_equal(out[~near], logs[~near])
    assert done.scored == int(near.sum()) and done.err == pytest.approx(0.1)


def test_map_check_scores_random_grid_cells_both_ways(tmp_path):
    """python -m scripts.map_check: random cells of a map's grid, the map's fixed step against the scoring
    solve. A barely trained small model's flow is gentle: its fixed step agrees everywhere; a folder
    without a map is one line and exit status 2."""
    import re

    out = tmp_path / "volcano_split0"
    r = _run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--epochs", 4, "--eval_freq", 2,
             "--flow_hidden_size", "8", "--n_hidden", "2", "--fourier", "4", "--test_size", "100", "--dev", "cpu",
             "--out", out, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    check = [sys.executable, "-m", "scripts.map_check", str(out), "--cells", "30"]
    r = subprocess.run(check, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 2 and "no map.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (out / "map.json").write_text(json.dumps({"map_res": 20, "map_step": 0.25, "map_warp": 2.0}))
    r = subprocess.run(check, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "30 random cells of 20 x 20" in r.stdout
    out_default = r.stdout
    median, mean, off = re.search(r"all: median ([\d.]+), 90% [\d.]+, mean ([\d.]+), off by > 1 nat (\d+)/30",
                                  r.stdout).groups()  # fmt: skip
    assert float(median) < 0.01 and float(mean) < 0.05 and off == "0", r.stdout
    # the drawn cells (the whole grid solved as the map solves it): no chart was re-centred, the same numbers
    r = subprocess.run([*check, "--full"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0 and "the whole grid solved as the map does" in r.stdout, r.stderr
    numbers = [[float(v) for v in re.findall(r"[\d.]+", o.splitlines()[1])] for o in (r.stdout, out_default)]
    assert numbers[0] == pytest.approx(numbers[1], abs=2e-3), (r.stdout, out_default)
    shown = re.search(r"shown \((\d+) cells within 8 nats of the map's top, (\d+) at random\): median ([\d.]+)",
                      r.stdout)  # fmt: skip
    assert shown and 0 < int(shown[2]) <= min(30, int(shown[1])) and float(shown[3]) < 0.01, r.stdout
    # other fixed steps as the map's finder: the map's own step finds every cell in view, as the map did
    r = subprocess.run([*check, "--full", "--finders", "0.25", "0.5"], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    view, again = map(
        int, re.search(r"reference: the map's (\d+) cells in view; it computed (\d+)", r.stdout).groups()
    )
    own = re.search(r"finder rk4 1/4: grid [\d.]+ s; largest underestimate in view (-?[\d.]+) nats; "
                    r"margin 1: (\d+) cells again \(about \d+ s\), (\d+) in view missed", r.stdout)  # fmt: skip
    assert own and float(own[1]) < 1 and int(own[2]) >= view and abs(int(own[2]) - again) <= 2, r.stdout
    assert own[3] == "0", r.stdout
    assert "finder rk4 1/2: grid" in r.stdout, r.stdout
    # a finer step tried first: the same cells in view, with the same values
    r = subprocess.run([*check, "--full", "--refine", "4"], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=300)  # fmt: skip
    ref = re.search(r"refine 1/16 first: (\d+) cells refined, (\d+) scored, [\d.]+ s \(scoring every cell in reach: "
                    r"(\d+) cells, [\d.]+ s\); cells in view (\d+) against (\d+), the same cells: True, largest "
                    r"difference in view ([\d.e+-]+) nats", r.stdout)  # fmt: skip
    # a gentle model: every cell is in view, the probe's 64 refined cells stay there, so the finer step stops
    assert ref and int(ref[1]) == 64 and int(ref[2]) == int(ref[3]) and ref[4] == ref[5], r.stdout
    assert float(ref[6]) < 1e-9, r.stdout
    r = subprocess.run(
        [*check, "--finders", "0.25"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert (
        r.returncode == 2 and "--finders and --refine need --full" in r.stderr and "Traceback" not in r.stderr
    ), r.stderr


def test_an_earth_map_is_drawn_with_its_cells_in_view_scored_and_measured_as_drawn(tmp_path):
    """scripts.earth.draw_map on a small flow-matching model: the calibrated fixed step, the cells in view
    refined and scored (every scored cell was refined first), and the map's own values at the test events
    (the cascade with the map's top) within the scoring tolerance's reach of the scoring solve, while the
    fixed step alone is measured beside them."""
    from scripts import earth

    out = tmp_path / "volcano_split0"
    r = _run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--epochs", 4, "--eval_freq", 2,
             "--flow_hidden_size", "8", "--n_hidden", "2", "--fourier", "4", "--test_size", "100", "--dev", "cpu",
             "--out", out, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    fig = tmp_path / "map.png"
    rec = earth.draw_map(out, "volcano", fig, 16, None, 0)
    assert fig.is_file() and rec["map_res"] == 16 and rec["map_pointwise"]
    assert 0 < rec["map_cells_rescored"] <= 16 * 16 and rec["map_cells_refined"] <= 64
    assert rec["map_err_test"] < 0.05 and rec["map_err_test_drawn"] < 1e-3
    assert rec["map_seconds"] > 0
