"""main_density.py as a user runs it: short runs in a subprocess, bad input, resume, determinism."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--test_size", "300", "--quiet", "--eval_freq", "2"]


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(ROOT / "main_density.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=600)  # fmt: skip


def test_reference_demo_command_short(tmp_path):
    # the README demo with a few epochs; no GPU here, so 'cuda' must fall back with a one-line warning
    r = run("--epochs", 3, "--dev", "cuda", "--lr", "1e-2", "--dataset", "5gaussians", "--M", "Hyperboloid",
            "--save", "--res", 40, "--out", tmp_path, *FAST)  # fmt: skip
    assert r.returncode == 0, r.stderr
    if not torch.cuda.is_available():
        assert "falling back to the CPU" in r.stderr and "Traceback" not in r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    for k in [
        "test_nll",
        "entropy",
        "kl",
        "kl_stderr",
        "epochs",
        "train_seconds",
        "nfe_forward",
        "nfe_backward",
    ]:
        assert k in m and math.isfinite(m[k]), k
    assert m["epochs"] == 3 and m["args"]["lr"] == 1e-2
    assert abs(m["kl"] - (m["test_nll"] - m["entropy"])) < 1e-9
    assert (tmp_path / "5gaussians_Hyperboloid.png").is_file() and (tmp_path / "training_curve.png").is_file()
    from flows import load_model

    model = load_model(tmp_path / "checkpoint.pt")
    x = model.manifold.random(4).to(next(model.parameters()).dtype)
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x)).all()


def _final_weights(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_resume_is_bit_exact_and_seed_deterministic(tmp_path):
    common = ["--M", "Sphere", "--dataset", "4wrapped", "--epochs", 6, "--seed", 3, "--dev", "cpu", *FAST]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(*common, "--out", a).returncode == 0
    assert run(*common, "--out", c).returncode == 0
    r = run(*common, "--out", b, "--stop_after", 3)
    assert r.returncode == 0, r.stderr
    assert _final_weights(b) and torch.load(b / "checkpoint.pt", weights_only=True)["epoch"] == 3
    r = run("--resume", b / "checkpoint.pt", "--quiet")
    assert r.returncode == 0, r.stderr
    wa, wb = _final_weights(a), _final_weights(b)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma, mc = (json.loads((d / "metrics.json").read_text()) for d in (a, c))
    assert ma["test_nll"] == mc["test_nll"] and ma["kl"] == mc["kl"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "4wrapped", "--M", "Hyperboloid"], "valid: 1wrapped, 5gaussians"),
        (["--epochs", "0"], "--epochs"),
        (["--batch_size", "-5"], "--batch_size"),
        (["--lr", "0"], "--lr"),
        (["--flow_hidden_size", "0"], "--flow_hidden_size"),
        (["--charts", "0"], "--charts"),
        (["--weight_decay", "-1"], "--weight_decay"),
        (["--num_drops", "-1"], "--num_drops"),
        (["--M", "Klein"], "--M"),
        (["--dev", "cuda:7"], "cuda:7"),
        (["--dev", "banana"], "banana"),
        (["--solver", "leapfrog"], "leapfrog"),
        (["--max_grad_norm", "0"], "--max_grad_norm"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, args, message):
    if args == ["--dev", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    r = run(*args, "--epochs" if "--epochs" not in args else "--quiet", *(["1"] if "--epochs" not in args else []),
            "--out", tmp_path / "o", "--quiet", "--test_size", 10)  # fmt: skip
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("usage")]
    assert len(lines) <= 2, r.stderr
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_unwritable_out_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run("--epochs", 1, "--out", blocker / "sub", "--quiet", "--test_size", 10, "--dev", "cpu")
    assert r.returncode == 2 and "cannot be written" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign"])
def test_bad_resume_file_is_reported_and_untouched(tmp_path, kind):
    path = tmp_path / "checkpoint.pt"
    if kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}, "args": {}}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    before = path.read_bytes() if path.exists() else None
    r = run("--resume", path, "--quiet", "--dev", "cpu")
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (path.read_bytes() if path.exists() else None) == before


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
    out = tmp_path / "run"
    # an absurd lr: the first epoch is finite and checkpointed (--stop_after), the resumed run blows up
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 30, "--lr", "1e12", "--dev", "cpu", "--stop_after", 1,
            "--out", out, "--quiet", "--test_size", 50, "--eval_freq", 1000, "--solver", "euler", "--step_size", 0.5)  # fmt: skip
    assert r.returncode == 0, r.stderr
    good = (out / "checkpoint.pt").read_bytes()
    r = run("--resume", out / "checkpoint.pt", "--quiet")
    assert r.returncode == 3 and "diverged at epoch" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (out / "checkpoint.pt").read_bytes() == good
    assert not (out / "metrics.json").exists()


def test_help_groups_reference_flags():
    r = run("--help")
    assert r.returncode == 0
    assert (
        "reference flags" in r.stdout
        and "--flow_hidden_size" in r.stdout
        and "--reference_settings" in r.stdout
    )


def test_contsave_gif_has_one_frame_per_saved_epoch(tmp_path):
    from PIL import Image

    (tmp_path / "contsave").mkdir()
    (tmp_path / "contsave" / "mine.png").write_bytes(b"a user's file, not a frame of this run")
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 4, "--contsave", "--save_freq", 2, "--res", 24,
            "--dev", "cpu", "--out", tmp_path, *FAST)  # fmt: skip
    assert r.returncode == 0, r.stderr
    frames = sorted((tmp_path / "contsave").glob("*.png"))
    assert [f.name for f in frames] == ["000002.png", "000004.png", "mine.png"]
    # the user's file is neither deleted nor shown
    assert (tmp_path / "contsave" / "mine.png").read_bytes() == b"a user's file, not a frame of this run"
    assert Image.open(tmp_path / "training.gif").n_frames == 2


def test_max_grad_norm_clips_the_update(tmp_path):
    common = ["--M", "Sphere", "--dataset", "4wrapped", "--epochs", 2, "--dev", "cpu", "--lr", "1e-2", *FAST]
    outs = {}
    for name, extra in [
        ("free", []),
        ("loose", ["--max_grad_norm", 1e6]),
        ("tight", ["--max_grad_norm", 1e-4]),
    ]:
        r = run(*common, *extra, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
        outs[name] = _final_weights(tmp_path / name)
    for k in outs["free"]:  # a bound the gradient never reaches changes nothing
        assert torch.equal(outs["free"][k], outs["loose"][k]), k
    # Adam normalizes the step size, so a tight bound still moves the weights, but differently
    assert any(not torch.equal(outs["free"][k], outs["tight"][k]) for k in outs["free"])


def test_solver_gap_script(tmp_path):
    r = run("--M", "Sphere", "--dataset", "4wrapped", "--epochs", 2, "--dev", "cpu", "--out", tmp_path, *FAST)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "scripts.solver_gap", str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if "NLL on the true samples" in ln][0]
    coarse, exact = (float(part.split()[-1]) for part in line.split(": ", 1)[1].split(", "))
    # an almost untrained model has nothing to exploit: both solvers agree closely
    assert math.isfinite(coarse) and abs(coarse - exact) < 0.02, line


def test_solver_guard_refines_a_gamed_step_and_records_it(tmp_path):
    """rk4 at step 1 (one step per unit time) is far from the exact flow after a few epochs at lr 1e-2:
    the guard must halve the step until the training NLL of its fixed points is within 0.02 nats of
    the accurate solve, log it, and keep the refined step in the checkpoint (so a resume uses it)."""
    out = tmp_path / "g"
    r = run("--M", "Hyperboloid", "--dataset", "5gaussians", "--epochs", 20, "--lr", "1e-2", "--step_size", 1,
            "--solver_guard", "0.02", "--dev", "cpu", "--out", out, "--test_size", 300, "--quiet", "--eval_freq", 10)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "solver guard:" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    events = m["guard_events"]
    assert events and events[0]["step_size"] == 1.0 and events[0]["refined_to"] <= 0.5
    assert abs(events[0]["gap"]) > 0.02 and abs(events[0]["gap_after"]) <= 0.02
    assert m["final_step_size"] == events[-1]["refined_to"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert all("guard" in h for h in history)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["args"]["step_size"] == m["final_step_size"]
    from flows import load_model

    assert load_model(out / "checkpoint.pt").train_solver.step_size == m["final_step_size"]


@pytest.mark.parametrize("extra,needle", [
    (["--solver", "dopri5"], "--solver_guard refines the step of fixed-step solvers"),
    (["--objective", "fm"], "--solver_guard only mean"),
])  # fmt: skip
def test_solver_guard_refusals(tmp_path, extra, needle):
    r = run("--M", "Sphere", "--dataset", "1wrapped", "--epochs", 2, "--solver_guard", "0.02", *extra,
            "--dev", "cpu", "--out", tmp_path / "x", *FAST)  # fmt: skip
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_help_states_every_effective_default():
    """--help shows what an unset flag means, per objective where the presets differ (issue #25)."""
    import main_density

    text = " ".join(main_density.build_parser().format_help().split())
    assert "default: None" not in text
    assert "Adam learning rate (default: 0.001 (Torus: 0.01); --objective fm: 0.002)" in text
    assert "(default: 1/3 (Sphere) / 1/4 (Hyperboloid); --reference_settings: 1/16 / none)" in text
    assert "shipped data/events" in text
