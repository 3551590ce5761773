"""Run safety: nothing loaded from disk runs code, nothing written is lost or overwritten unasked,
bad input and bad data are one-line errors (exit 2) before anything is written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--M", "Sphere", "--dataset", "1wrapped", "--dev", "cpu", "--quiet", "--test_size", "50",
        "--eval_freq", "1000", "--solver", "euler", "--step_size", "0.5", "--flow_hidden_size", "8"]  # fmt: skip


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(ROOT / "main_density.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=600)  # fmt: skip


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("warning")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def snapshot(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (2 epochs), reused read-only by several tests."""
    out = tmp_path_factory.mktemp("finished") / "run"
    r = run(*TINY, "--epochs", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


# -- checkpoints load safely ----------------------------------------------------------------------
class _Payload:
    """Unpickling this creates a marker file: stands in for os.system in a crafted checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_runs_no_code(tmp_path, finished):
    from flows import CheckpointError, load_model

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, evil, pickle_protocol=2)
    # a valid checkpoint with one extra malicious entry
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    sneaky = tmp_path / "sneaky.pt"
    torch.save(ckpt, sneaky)
    for path in (evil, sneaky):
        one_line_error(run("--resume", path, "--out", tmp_path / "o"), "refused to load")
        with pytest.raises(CheckpointError, match="refused to load"):
            load_model(path)
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("doctor", ["weights", "optimizer", "epoch", "args", "truncated"])
def test_doctored_checkpoint_is_a_one_line_error(tmp_path, finished, doctor):
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    if doctor == "weights":
        k = next(iter(ckpt["model"]))
        ckpt["model"][k] = torch.zeros(7, 7)
    elif doctor == "optimizer":
        ckpt["optimizer"]["param_groups"][0]["params"] = [0]
    elif doctor == "epoch":
        ckpt["epoch"] = "two"
    elif doctor == "args":
        ckpt["args"] = ["not", "a", "dict"]
    torch.save(ckpt, path)
    if doctor == "truncated":
        path.write_bytes((finished / "checkpoint.pt").read_bytes()[:100])
    before = path.read_bytes()
    one_line_error(run("--resume", path, "--epochs", 3))
    assert path.read_bytes() == before


# -- output folders: never overwrite or delete unasked ---------------------------------------------
def test_second_run_into_a_finished_run_is_refused(tmp_path, finished):
    before = snapshot(finished)
    one_line_error(run(*TINY, "--epochs", 2, "--out", finished), "holds another run", "--overwrite")
    assert snapshot(finished) == before


def test_overwrite_replaces_the_run_and_keeps_other_files(tmp_path):
    out = tmp_path / "run"
    assert run(*TINY, "--epochs", 2, "--out", out).returncode == 0
    (out / "notes.txt").write_text("mine")
    old = (out / "checkpoint.pt").read_bytes()
    r = run(*TINY, "--epochs", 3, "--out", out, "--overwrite", "--seed", 5)
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoint.pt").read_bytes() != old
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
    assert [json.loads(x)["epoch"] for x in (out / "history.jsonl").read_text().splitlines()] == [3]


def test_default_out_picks_a_fresh_numbered_folder(tmp_path):
    for _ in range(2):
        r = run(*TINY, "--epochs", 1, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    first, second = tmp_path / "results/1wrapped_Sphere", tmp_path / "results/1wrapped_Sphere_2"
    assert (first / "metrics.json").is_file() and (second / "metrics.json").is_file()
    assert "results/1wrapped_Sphere_2" in r.stdout


def test_resume_into_another_runs_folder_is_refused(tmp_path, finished):
    a = tmp_path / "a"
    assert run(*TINY, "--epochs", 4, "--stop_after", 1, "--out", a).returncode == 0
    before = snapshot(finished)
    one_line_error(run("--resume", a / "checkpoint.pt", "--out", finished), "holds another run")
    assert snapshot(finished) == before


def test_resume_refuses_conflicting_flags_and_accepts_equal_ones(tmp_path):
    out = tmp_path / "run"
    assert run(*TINY, "--epochs", 3, "--stop_after", 1, "--out", out).returncode == 0
    before = snapshot(out)
    r = run(
        "--resume",
        out / "checkpoint.pt",
        "--M",
        "Hyperboloid",
        "--dataset",
        "5gaussians",
        "--flow_hidden_size",
        32,
    )
    one_line_error(r, "--M Hyperboloid", "--dataset 5gaussians", "--flow_hidden_size 32", "conflict")
    assert snapshot(out) == before
    r = run("--resume", out / "checkpoint.pt", "--M", "Sphere", "--epochs", 3, "--quiet")
    assert r.returncode == 0, r.stderr


def test_exit_2_errors_write_nothing(tmp_path):
    for args in (
        ["--solver", "leapfrog"],
        ["--dataset", "nope"],
        ["--charts", "adaptive", "--chart_center", "origin"],
    ):
        out = tmp_path / "new" / "out"
        one_line_error(run(*TINY, "--epochs", 1, *args, "--out", out))
        assert not (tmp_path / "new").exists(), args


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--seed", "100000000000000000000000"], "--seed"),
        (["--seed", "1e23"], "--seed"),
        (["--batch_size", "1000000000000"], "--batch_size"),
        (["--test_size", "1000000000000"], "--test_size"),
        (["--save", "--res", "200000"], "--res"),
        (["--samples", "100000000000"], "--samples"),
        (["--eval_tol", "1e-300"], "--eval_tol"),
    ],
)
def test_sizes_are_checked_before_training(tmp_path, args, needle):
    one_line_error(run(*TINY, "--epochs", 1, *args, "--out", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()


# -- interruptions ---------------------------------------------------------------------------------
def test_resume_repairs_history_and_removes_temp_files(tmp_path):
    out = tmp_path / "run"
    assert run(*TINY, "--epochs", 6, "--eval_freq", 1, "--stop_after", 2, "--out", out).returncode == 0
    # a kill between a history append and the checkpoint rename: one line too many, a temp file
    with open(out / "history.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "test_nll": 0.0}) + "\n")
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")
    r = run("--resume", out / "checkpoint.pt")
    assert r.returncode == 0, r.stderr
    epochs = [json.loads(x)["epoch"] for x in (out / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert not list(out.glob(".*.tmp"))


def test_sigterm_is_handled_like_sigint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    args = [*TINY, "--epochs", 100000, "--eval_freq", 1, "--out", str(out)]
    p = subprocess.Popen([sys.executable, str(ROOT / "main_density.py"), *map(str, args)], stderr=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def test_full_disk_is_a_one_line_error_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    import errno

    import main_density
    import utils

    out = tmp_path / "run"
    real, calls = utils.atomic_torch_save, []

    def failing(obj, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path)

    monkeypatch.setattr(utils, "atomic_torch_save", failing)
    rc = main_density.main([*TINY, "--epochs", "3", "--eval_freq", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_metrics_json_is_strict_json(tmp_path):
    import main_density
    import utils

    utils.atomic_write_json(
        main_density.json_safe({"a": float("nan"), "b": [1.0, float("inf")]}), tmp_path / "m.json"
    )
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail) == {
        "a": None,
        "b": [1.0, None],
    }
    with pytest.raises(ValueError):
        utils.atomic_write_json({"a": float("nan")}, tmp_path / "n.json")
    assert not (tmp_path / "n.json").exists()


# -- Earth files are validated row by row ------------------------------------------------------------
GOOD = "".join(f"{(i * 7) % 170 - 85},{(i * 13) % 350 - 170}\n" for i in range(30))


@pytest.mark.parametrize(
    "content,needle",
    [
        ("lat,lon\n" + GOOD + "12,abc\n", "line 32"),
        ("".join(GOOD.splitlines(keepends=True)[:3]) + "nan,10\n" + GOOD, "line 4"),
        (GOOD + "inf,10\n", "finite"),
        (GOOD + "95,400\n", "latitude must be in [-90, 90]"),
        (GOOD + "10,400\n", "longitude"),
        ("1,2\n" * 9, "at least 20"),
    ],
)
def test_bad_earth_files_are_exit_2_naming_file_and_line(tmp_path, content, needle):
    (tmp_path / "volerup.csv").write_text(content)
    r = run("--M", "Sphere", "--dataset", "volcano", "--data_dir", tmp_path, "--epochs", 1, "--dev", "cpu",
            "--quiet", "--out", tmp_path / "o")  # fmt: skip
    one_line_error(r, needle)
    if "at least" not in needle:
        assert "volerup.csv" in r.stderr
    assert not (tmp_path / "o").exists()


def test_earth_bom_without_header_keeps_the_first_row(tmp_path):
    from data.earth import read_lat_lon

    (tmp_path / "f.csv").write_bytes("\ufeff10.5,20.25\n-3,4\n".encode())
    assert read_lat_lon(tmp_path / "f.csv").tolist() == [[10.5, 20.25], [-3.0, 4.0]]
    (tmp_path / "g.csv").write_bytes("\ufefflatitude,longitude\n10.5,20.25\n".encode())
    assert read_lat_lon(tmp_path / "g.csv").tolist() == [[10.5, 20.25]]


def test_our_checkpoints_hold_plain_data_only(finished):
    """Our own checkpoints load with the restricted unpickler (no custom classes inside)."""
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=True)
    assert isinstance(ckpt["model_config"], dict) and isinstance(ckpt["args"], dict)


@pytest.fixture
def interrupts():
    from flows import interrupts

    interrupts.clear()
    yield interrupts
    interrupts.clear()  # nothing recorded here may reach a later test in this process


def test_an_interrupt_inside_a_deferred_block_waits_for_its_end(interrupts):
    """flows.interrupts: what main_density's signal handlers do while a compiled call runs."""
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            interrupts.interrupt(KeyboardInterrupt())  # a signal arriving during compilation
            reached.append("the rest of the compiled call")
    assert reached == ["the rest of the compiled call"]
    interrupts.check()  # delivered: nothing left to raise
    with pytest.raises(KeyboardInterrupt):  # outside a deferred block it is raised at once
        interrupts.interrupt(KeyboardInterrupt())


def test_an_interrupt_wins_over_an_exception_leaving_the_deferred_block(interrupts):
    """A compilation that fails after the signal came (caught and run eagerly by ChartDynamics) must not
    take the interrupt with it."""
    with pytest.raises(KeyboardInterrupt) as info:
        with interrupts.deferred():
            interrupts.interrupt(KeyboardInterrupt())
            raise RuntimeError("compilation failed")
    assert isinstance(info.value.__context__, RuntimeError)


def test_an_interrupt_swallowed_by_a_callback_is_raised_at_the_next_step(interrupts, monkeypatch):
    """The CI failure of stop 45: SIGTERM ran its handler inside a weakref callback of torch._dynamo's,
    Python printed "Exception ignored" and training went on. The recorded interrupt is raised by the
    next ODE evaluation (and the next training step)."""
    import gc
    import weakref

    class Obj:
        pass

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    o = Obj()
    ref = weakref.ref(o, lambda r: interrupts.interrupt(KeyboardInterrupt()))  # noqa: F841
    del o
    gc.collect()
    assert dropped == [KeyboardInterrupt]  # Python dropped it ("Exception ignored in ...")
    from flows import MCNF

    model = MCNF("Sphere", hidden=8, train_solver=dict(method="euler", step_size=0.5))
    x = model.manifold.random(4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KeyboardInterrupt):
        model.log_prob(x)
    assert torch.isfinite(model.log_prob(x)).all()  # delivered once


def test_main_keeps_a_swallowed_interrupts_traceback_quiet_and_others_not():
    import types

    import main_density

    seen = []
    hook = main_density._unraisable(lambda u: seen.append(u.exc_type))
    for exc_type in (KeyboardInterrupt, main_density.Terminated, ValueError):
        hook(types.SimpleNamespace(exc_type=exc_type, exc_value=exc_type(), exc_traceback=None, object=None))
    assert seen == [ValueError]
