"""Hostile use, case by case (issue #24): the solver guard, numerics at the edges, results that must
belong to their run, bad files, the library's input checks, size limits, and the scripts.

Command-line cases assert the exit status, one line on stderr without a traceback, and that the
files already in the folder are unchanged.
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import main_density
from data.earth import SHIPPED_DIR, read_lat_lon
from flows import MCNF, NCP, PRNVP, WHC, load_model
from flows.checkpoint import with_digest
from manifolds import get_manifold
from train import guard as guard_mod
from train.loop import EMA

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--test_size", "300", "--quiet", "--dev", "cpu"]
EARTH_FAST = ["--M", "Sphere", "--dataset", "volcano", "--flow_hidden_size", "8", "--n_hidden", "2",
              "--dev", "cpu", "--quiet", "--eval_freq", "1", "--step_size", "0.5"]  # fmt: skip


def cli(*args, capsys=None):
    """main_density.main in this process: (exit status, stderr)."""
    code = main_density.main([str(a) for a in args])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def sub(module_or_file, *args, env=None):
    cmd = [sys.executable, *(["-m", module_or_file] if "/" not in module_or_file else [module_or_file])]
    e = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=e, timeout=600
    )


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def one_line_error(err: str):
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert "Traceback" not in err and len(lines) == 1 and "error" in lines[0], err


# -- the solver guard -----------------------------------------------------------------------------
def test_guard_with_ema_scores_the_trained_weights_not_the_average(tmp_path, capsys):
    """Before: the guard compared the raw model's training solve with the EMA copy's accurate solve,
    read the EMA lag (-0.65 nats) as a solver gap and refined the step to 1/256."""
    code, err = cli("--M", "Sphere", "--dataset", "4wrapped", "--epochs", 20, "--eval_freq", 10, "--lr", "1e-2",
                    "--ema", "0.999", "--out", tmp_path / "r", *FAST, capsys=capsys)  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["guard_events"] == [] and m["final_step_size"] == 1 / 3  # the sphere's default step
    log = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["guard_log"]
    assert all(abs(c["gap"]) < 0.005 for c in log)


def test_guard_and_scores_of_a_hutchinson_model_are_exact(tmp_path, capsys):
    """Before: the guard's mean gap moved by +-0.02-0.04 nats with the estimator's noise (and the eval
    solve of a Hutchinson model was itself a random estimate)."""
    code, err = cli("--M", "Sphere", "--dataset", "4wrapped", "--epochs", 10, "--eval_freq", 10, "--lr", "1e-2",
                    "--divergence", "hutchinson", "--out", tmp_path / "r", *FAST, capsys=capsys)  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["guard_events"] == [] and "warnings" not in m
    model = load_model(tmp_path / "r" / "checkpoint.pt").double()
    x = get_manifold("Sphere").random(200, generator=torch.Generator().manual_seed(0))
    a, b = model.log_prob(x), model.log_prob(x)
    assert torch.equal(a, b)  # eval mode: the exact divergence, deterministic
    model.dynamics.divergence = "exact"
    torch.testing.assert_close(model.log_prob(x), a, rtol=0, atol=1e-12)


def test_guard_statistic_does_not_let_errors_cancel():
    d = torch.tensor([0.3, -0.3] * 500, dtype=torch.float64)  # mean 0: the old mean-only test passed it
    stats = guard_mod.gap_statistics(d)
    assert abs(stats["gap"]) < 1e-12 and guard_mod.needs_refinement(stats, 0.005)
    small = guard_mod.gap_statistics(torch.full((1000,), 0.001, dtype=torch.float64))
    assert not guard_mod.needs_refinement(small, 0.005)


def test_guard_at_its_floor_warns_in_the_log_and_metrics(tmp_path, capsys, monkeypatch):
    """Before: at the smallest step with the gap open, training went on with one printed line."""
    monkeypatch.setattr(guard_mod.SolverGuard, "per_point_gap", lambda self, model: torch.full((50,), 0.5))
    code, err = cli("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 2, "--eval_freq", 2,
                    "--out", tmp_path / "r", *FAST, capsys=capsys)  # fmt: skip
    assert code == 0
    assert "warning: epoch 2: solver guard: at the smallest step" in err and "Traceback" not in err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # halved down to the floor: the last halving of the sphere's 1/3 at or above MIN_STEP (1/192)
    assert m["final_step_size"] >= guard_mod.MIN_STEP > m["final_step_size"] / 2
    assert "smallest step" in m["warnings"][0]


# -- numerics -------------------------------------------------------------------------------------
def _two_point_reference(x, z, t):
    import mpmath

    mpmath.mp.dps = 50
    X, Z, T = [mpmath.mpf(float(v)) for v in x], [mpmath.mpf(float(v)) for v in z], mpmath.mpf(t)
    d = mpmath.acosh(X[0] * Z[0] - sum(a * b for a, b in zip(X[1:], Z[1:], strict=True)))
    xt = [
        (mpmath.sinh((1 - T) * d) * a + mpmath.sinh(T * d) * b) / mpmath.sinh(d)
        for a, b in zip(X, Z, strict=True)
    ]
    ut = [
        d * (mpmath.cosh(T * d) * b - mpmath.cosh((1 - T) * d) * a) / mpmath.sinh(d)
        for a, b in zip(X, Z, strict=True)
    ]
    return torch.tensor([float(v) for v in xt]), torch.tensor([float(v) for v in ut])


def test_flow_matching_targets_on_the_hyperboloid_are_exact_for_far_pairs():
    """x at r = 7, z at r = 4.3 on the opposite side (d = 11.3): the two-point form against 50 digits."""
    from flows.matching import conditional_path

    H = get_manifold("Hyperboloid", 2)
    o = H.origin(dtype=torch.float64)
    x = H.expmap(o, torch.tensor([0.0, 7.0, 0.0]))
    z = H.expmap(o, torch.tensor([0.0, -4.3, 0.0]))
    assert abs(float(H.dist(x, z)) - 11.3) < 1e-9
    shooting_err = 0.0
    for t in (0.1, 0.5, 0.9):
        rx, ru = _two_point_reference(x, z, t)
        xt, ut, keep = conditional_path(H, x[None], z[None], torch.tensor([t]))
        assert keep.all()
        assert (
            float((xt[0] - rx).norm() / rx.norm()) <= 1e-6 and float((ut[0] - ru).norm() / ru.norm()) <= 1e-6
        )
        assert float((xt[0] - rx).norm() / rx.norm()) <= 1e-12  # in fact at rounding level
        xs, us = H.geodesic(x[None], H.logmap(x[None], z[None]), torch.tensor([[t]]))
        shooting_err = max(shooting_err, float((us[0] - ru).norm() / ru.norm()))
    assert shooting_err > 1e-6  # what the targets were before (exp of log): 3e-5 here


def test_ncp_samples_near_the_poles_score_as_they_were_drawn():
    """Before: layers compounding towards a pole left 17% of samples within 1e-10 of it, where
    ``sample(return_log_prob=True)`` and ``log_prob`` disagreed by up to 23 nats."""
    torch.manual_seed(0)
    m = NCP(blocks=8).double()
    with torch.no_grad():
        for net in m.nets:
            net.layers[-1].weight.normal_(0, 0.5)
            net.layers[-1].bias.normal_(0, 0.5)
    x, lp = m.sample(4000, generator=torch.Generator().manual_seed(1), return_log_prob=True)
    assert float(((1 - x[:, 2].abs()) < 1e-10).double().mean()) > 0.1  # the hard case is exercised
    with torch.no_grad():
        assert float((m.log_prob(x) - lp).abs().max()) < 1e-8
    with pytest.raises(ValueError, match="poles"):
        m.log_prob(torch.tensor([[0.0, 0.0, 1.0]]))


def test_ema_is_bias_corrected_and_resumes_its_step_count():
    """Before: after 500 steps at decay 0.999 the scored weights were 61% the initial ones."""
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, 0.999)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(500):
        ema.update(net)
    torch.testing.assert_close(ema.model.weight, torch.ones(2, 2))  # initial weights carry no weight
    # a sequence of weights: the bias-corrected average sum (1-d) d^(t-k) p_k / (1 - d^t)
    ema, d, ps = EMA(net, 0.9), 0.9, [float(k) for k in range(1, 8)]
    for p in ps:
        with torch.no_grad():
            net.weight.fill_(p)
        ema.update(net)
    t = len(ps)
    want = sum((1 - d) * d ** (t - k) * p for k, p in enumerate(ps, 1)) / (1 - d**t)
    assert abs(float(ema.model.weight[0, 0]) - want) < 1e-12


def test_fm_run_saves_the_ema_step_count(tmp_path, capsys):
    code, err = cli("--M", "Sphere", "--dataset", "1wrapped", "--objective", "fm", "--epochs", 4, "--eval_freq", 4,
                    "--stop_after", 2, "--flow_hidden_size", 8, "--out", tmp_path / "r", *FAST, capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["ema_steps"] == 2


# -- results that belong to their run ------------------------------------------------------------
def test_resuming_run_b_into_run_a_folder_reports_b(tmp_path, capsys):
    """Before: B's metrics.json reported A's best.pt (A's test NLL and best epoch), exit 0."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli(*EARTH_FAST, "--epochs", 3, "--lr", "3e-2", "--seed", 1, "--out", a, capsys=capsys)[0] == 0
    # lr 1e-30: B's weights do not move, so its validation NLL never improves after the resume and the
    # old code never rewrote best.pt: it reported A's (test NLL, best epoch 3 of B's 2), exit 0
    assert cli(*EARTH_FAST, "--epochs", 2, "--lr", "1e-30", "--seed", 2, "--stop_after", 1, "--out", b,
               capsys=capsys)[0] == 0  # fmt: skip
    code, err = cli("--resume", b / "checkpoint.pt", "--out", a, "--overwrite", "--quiet", capsys=capsys)
    assert code == 0, err
    m = json.loads((a / "metrics.json").read_text())
    hist = [json.loads(line) for line in (a / "history.jsonl").read_text().splitlines()]
    best = min(hist, key=lambda h: h["val_nll"])
    assert (
        m["args"]["lr"] == 1e-30 and m["best_epoch"] == best["epoch"] == 1 and m["val_nll"] == best["val_nll"]
    )
    assert torch.load(a / "best.pt", weights_only=True)["val_nll"] == best["val_nll"]
    # into an empty folder (documented): trains and finishes with metrics.json
    code, err = cli("--resume", b / "checkpoint.pt", "--out", c, "--quiet", capsys=capsys)
    assert code == 0, err
    assert json.loads((c / "metrics.json").read_text())["best_epoch"] in (1, 2)


def test_earth_checkpoint_resumes_with_the_printed_command_and_its_own_data(tmp_path, capsys):
    """Before: --data_dir was not restored, so the printed --resume command failed (or read other data)."""
    data = tmp_path / "data"
    data.mkdir()
    rows = (SHIPPED_DIR / "volerup.csv").read_text().splitlines()
    (data / "volerup.csv").write_text("\n".join(rows[:202]) + "\n")  # 200 events: a test split of 20
    out = tmp_path / "r"
    code, err = cli(
        *EARTH_FAST, "--epochs", 2, "--stop_after", 1, "--data_dir", data, "--out", out, capsys=capsys
    )
    assert code == 0, err
    code, err = cli("--resume", out / "checkpoint.pt", "--quiet", capsys=capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 20 and m["args"]["data_dir"] == str(data)


def test_an_interrupted_final_figure_does_not_block_finishing(tmp_path, capsys, monkeypatch):
    """Before: Ctrl-C in the --save figure left a finished checkpoint that --resume refused."""
    from train import tasks

    out = tmp_path / "r"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.SyntheticTask, "figure", interrupted)
    code, _ = cli("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 2, "--eval_freq", 2, "--save",
                  "--out", out, *FAST, capsys=capsys)  # fmt: skip
    assert code == 130 and not (out / "metrics.json").exists()
    monkeypatch.undo()
    code, err = cli("--resume", out / "checkpoint.pt", "--res", 20, "--quiet", capsys=capsys)
    assert code == 0, err  # the run's own --save is kept
    assert (out / "metrics.json").is_file() and (out / "1wrapped_Sphere.png").is_file()


# -- files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, needle",
    [
        ("# c\nlat,lon\n" + "oops,1\n" * 100 + "10,20\n", "line 3"),  # before: 100 rows dropped, exit 0
        ("lat,lon\n10,20\n30,x\n", "line 3"),
        ("lat,lon\n10,20\n95,0\n", "line 3"),
        ("10,20\nlat,lon\n", "line 2"),  # a header after data is a bad row
    ],
)
def test_csv_rows_are_validated_everywhere_with_file_and_line(tmp_path, text, needle):
    f = tmp_path / "volerup.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=needle) as e:
        read_lat_lon(f)
    assert str(f) in str(e.value)


def test_csv_quotes_and_foreign_comment_bytes(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('"lat","lon"\n"10.5","-20"\n\'1\',\'2\'\n')  # before: "holds no rows"
    assert read_lat_lon(f).tolist() == [[10.5, -20.0], [1.0, 2.0]]
    f.write_bytes(b"# caf\xe9 (Latin-1)\nlat,lon\n1,2\n")  # before: a decode error naming no file or line
    assert read_lat_lon(f).tolist() == [[1.0, 2.0]]
    f.write_bytes(b"lat,lon\n1,2\n3\xe9,4\n")
    with pytest.raises(ValueError, match=r"line 3: not UTF-8"):
        read_lat_lon(f)


def test_the_catalogues_ship_with_the_project():
    from data.earth import EARTH, default_data_dir, load_earth

    assert default_data_dir() == SHIPPED_DIR or os.environ.get("MANIFOLD_ODE_EARTH_DATA")
    for name, (fname, n, _) in EARTH.items():
        assert (SHIPPED_DIR / fname).is_file() and len(load_earth(name, SHIPPED_DIR)) == n
    assert (SHIPPED_DIR / "README.md").is_file()


# -- the library refuses what it cannot score -----------------------------------------------------
def _models():
    torch.manual_seed(0)
    return [MCNF("Sphere"), MCNF("Hyperboloid"), WHC(), PRNVP(), NCP()]


@pytest.mark.parametrize("i", range(5))
def test_library_refuses_points_it_cannot_score(i):
    """Before: +14,249 nats at (0, 0, 100); finite numbers for the lower sheet, (123, 0, 0) and NaN;
    NaN from WHC; torchdiffeq's 'underflow in dt' for an empty batch; errors deep inside torch."""
    model = _models()[i].eval()
    M = model.manifold
    bad = {
        "not on the": torch.tensor([[0.0, 0.0, 100.0]])
        if M.name == "Sphere"
        else torch.tensor([[-1.0, 0.0, 0.0]]),
        "NaN": torch.tensor([[float("nan"), 0.0, 0.0]]),
        "shape": torch.ones(2, 4),
        "float32 or float64": torch.ones(2, 3, dtype=torch.int64),
    }
    if M.name == "Hyperboloid":
        bad["not on the Hyperboloid"] = torch.tensor([[123.0, 0.0, 0.0]])
    for needle, x in bad.items():
        with pytest.raises(ValueError, match=needle):
            model.log_prob(x)
        with pytest.raises(ValueError, match=needle):
            model(x)
    empty = torch.zeros(0, 3)
    assert model.log_prob(empty).shape == (0,)
    z, d = model(empty)
    assert z.shape == (0, 3) and d.shape == (0,)
    assert model.inverse(empty).shape == (0, 3)
    x = model.sample(4)
    assert torch.isfinite(model.log_prob(x)).all()  # points of the manifold still score


# -- size limits ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--dim", "1000"], "--dim"),  # before: killed by the kernel at 23.8 GB
        (["--flow_hidden_size", "65536"], "--flow_hidden_size"),  # before: 17 GB allocated
        (["--charts", "1000000"], "--charts"),  # before: hung
        (["--fourier", "100000"], "--fourier"),
        (["--model", "ncp", "--blocks", "100000"], "--blocks"),
        (["--step_size", "1e-300"], "--step_size"),  # before: "training diverged, try a lower --lr"
    ],
)
def test_sizes_beyond_the_machine_are_refused_up_front(tmp_path, capsys, extra, needle):
    (tmp_path / "keep.txt").write_text("a user's file")
    before = snapshot(tmp_path)
    code, err = cli("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 2, "--out", tmp_path, *FAST, *extra,
                    capsys=capsys)  # fmt: skip
    assert code == 2 and needle in err, err
    one_line_error(err)
    assert snapshot(tmp_path) == before


def test_memory_estimate_is_close_to_measured():
    """The estimate against the peak memory measured above an idle run (train/resources.py)."""
    from train.config import fill_objective, fill_settings
    from train.resources import estimate

    for flags, measured_gb in [(["--dim", "60"], 1.0), (["--M", "Sphere", "--dim", "60"], 0.64)]:
        a = main_density.parse_args(flags)
        fill_objective(a, False)
        fill_settings(a)
        assert 0.7 < sum(estimate(a).values()) / 2**30 / measured_gb < 1.5


def test_out_of_memory_is_reported_as_such(tmp_path, capsys, monkeypatch):
    from train import loop

    def oom(self, *a):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loop.MeanNLL, "forward", oom)
    code, err = cli("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 2, "--out", tmp_path / "r", *FAST,
                    capsys=capsys)  # fmt: skip
    assert code == 2 and "out of memory" in err and "diverged" not in err and "--lr" not in err
    one_line_error(err)


def test_batch_smaller_than_the_ranks_is_refused(tmp_path, capsys, monkeypatch):
    """Before: under torchrun, --batch_size 1 gave one rank an empty shard and a 'lower --lr' message."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = cli("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 2, "--batch_size", 1,
                    "--out", tmp_path / "r", *FAST, capsys=capsys)  # fmt: skip
    assert code == 2 and "2 ranks" in err
    one_line_error(err)
    assert not (tmp_path / "r").exists()


# -- checkpoints: values and integrity ------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "r"
    r = sub(str(ROOT / "main_density.py"), "--M", "Sphere", "--dataset", "1wrapped", "--epochs", 4, "--eval_freq", 2,
            "--stop_after", 2, "--out", out, *FAST)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out / "checkpoint.pt"


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["args"].update(lr=-1.0), "--lr"),
        (lambda c: c["args"].update(lr=float("nan")), "--lr"),
        (lambda c: c["args"].update(ema=1.5), "--ema"),
        (lambda c: c["args"].update(model="evil"), "--model"),
        (lambda c: c["args"].update(eval_freq=0), "--eval_freq"),
        (lambda c: c.update(epoch=-5), "epoch"),
        (lambda c: c.update(history="not a list"), "history"),
    ],
)
def test_values_read_from_a_checkpoint_are_validated(tmp_path, capsys, stopped_run, edit, needle):
    """Before: tracebacks, or exit 0 with garbage (the values skipped the flags' checks)."""
    ckpt = torch.load(stopped_run, weights_only=True)
    edit(ckpt)
    folder = tmp_path / "r"
    folder.mkdir()
    torch.save(with_digest(ckpt), folder / "checkpoint.pt")  # a consistent digest: the values are the problem
    before = snapshot(folder)
    code, err = cli("--resume", folder / "checkpoint.pt", "--quiet", capsys=capsys)
    assert code == 2 and needle in err, err
    one_line_error(err)
    assert snapshot(folder) == before


def test_a_corrupted_checkpoint_is_refused(tmp_path, capsys, stopped_run):
    """Before: a one-byte corruption of the optimizer state resumed silently."""
    folder = tmp_path / "r"
    folder.mkdir()
    path = folder / "checkpoint.pt"
    shutil.copy(stopped_run, path)
    with zipfile.ZipFile(path) as z:  # the largest tensor record (weights or Adam's moments)
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    # the data follow the local header (30 bytes, the name, and its own extra field)
    local_extra = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + len(info.filename.encode()) + local_extra
    raw[start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    before = snapshot(folder)
    code, err = cli("--resume", path, "--quiet", capsys=capsys)
    assert code == 2 and "corrupted" in err, err
    one_line_error(err)
    assert snapshot(folder) == before
    with pytest.raises(ValueError, match="corrupted"):
        load_model(path)


# -- scripts --------------------------------------------------------------------------------------
def test_scripts_give_one_line_errors(tmp_path):
    """Before: tracebacks from scripts.solver_gap, scripts.earth (missing data) and the benchmark."""
    cases = [
        ("scripts.solver_gap", [tmp_path / "nothing"], "does not exist"),
        (
            "scripts.earth",
            ["--data_dir", tmp_path, "--datasets", "volcano", "--md", tmp_path / "p.md"],
            "volerup.csv",
        ),
        ("benchmarks.benchmark", ["--reps", "0"], "positive integer"),
        ("benchmarks.benchmark", ["--dev", "nonsense"], "unknown device"),
    ]
    for module, args, needle in cases:
        r = sub(module, *args)
        assert r.returncode == 2 and needle in r.stderr, (module, r.stderr)
        assert "Traceback" not in r.stderr


def test_scripts_fail_loudly_and_keep_the_committed_pages(tmp_path):
    """Before: exit 0 after failed runs, and the page rewritten with one failed row (reproduce) or an
    emptied table (earth)."""
    page = tmp_path / "reproduction.md"
    shutil.copy(ROOT / "docs" / "reproduction.md", page)
    before = page.read_bytes()
    r = sub("scripts.reproduce", "--only", "Sphere/1wrapped", "--epochs", 2, "--dev", "nonsense", "--runs",
            tmp_path / "runs", "--md", page, "--no_grid", "--no_antipodal")  # fmt: skip
    assert r.returncode == 1 and "not rewritten" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert page.read_bytes() == before
    earth = tmp_path / "earth.md"
    shutil.copy(ROOT / "docs" / "earth_fm.md", earth)
    before = earth.read_bytes()
    r = sub("scripts.earth", "--objective", "fm", "--datasets", "volcano", "--seeds", 0, "--dev", "nonsense",
            "--runs", tmp_path / "earth_runs", "--md", earth, "--figures", "")  # fmt: skip
    assert r.returncode == 1 and "failed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert earth.read_bytes() == before


def test_page_writer_counts_results():
    from scripts.earth import count_results as earth_count
    from scripts.reproduce import count_results as repro_count

    assert repro_count((ROOT / "docs" / "reproduction.md").read_text()) == 7
    assert earth_count((ROOT / "docs" / "earth.md").read_text()) == 20
    assert not math.isnan(repro_count(""))


def test_scripts_earth_finishes_its_own_unfinished_runs(tmp_path):
    """Before: the resume command lost --data_dir, failed, and the run was left off the page (exit 0)."""
    runs, page = tmp_path / "runs", tmp_path / "earth_fm.md"
    extra = ["--epochs", "4", "--eval_freq", "2", "--flow_hidden_size", "8", "--n_hidden", "2", "--fourier", "4",
             "--test_size", "100"]  # fmt: skip
    r = sub(str(ROOT / "main_density.py"), "--M", "Sphere", "--dataset", "volcano", "--split_seed", 0,
            "--objective", "fm", "--dev", "cpu", "--out", runs / "volcano_split0", "--quiet", *extra,
            "--stop_after", 2)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = sub("scripts.earth", "--objective", "fm", "--datasets", "volcano", "--seeds", 0, "--dev", "cpu",
            "--runs", runs, "--md", page, "--figures", "", "--integral_samples", 400, "--integral_centers", 40,
            "--", *extra)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--resume" in r.stdout and (runs / "volcano_split0" / "metrics.json").is_file()
    assert "| volcano |" in page.read_text()


def test_torchrun_with_fewer_points_than_ranks_is_one_line_per_rank(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "main_density.py"), "--M", "Sphere", "--dataset", "1wrapped", "--batch_size", "1",
           "--epochs", "2", "--dev", "cpu", "--quiet", "--out", str(tmp_path / "r")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode != 0
    assert r.stderr.count("--batch_size 1 is smaller than the 2 ranks") == 2, r.stderr[-2000:]
    # torchrun prints its own launcher traceback when a rank fails; none may come from this code
    assert (
        'main_density.py", line' not in r.stderr
        and "train/" not in r.stderr
        and not (tmp_path / "r").exists()
    )
