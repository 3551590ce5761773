"""The frozen settings a run is built from (train/settings.py), and the training step's one home."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import main_density
from train.config import fill_objective, fill_settings
from train.settings import Settings, resolve

ROOT = Path(__file__).resolve().parents[1]


def resolved(*argv):
    args = main_density.build_parser().parse_args(list(argv))
    args.explicit = {
        a.dest for a in main_density.build_parser()._actions if any(o in argv for o in a.option_strings)
    }
    fill_objective(args, earth=False)
    fill_settings(args)
    return resolve(args)


def test_settings_are_frozen_groups_of_the_resolved_flags():
    s = resolved("--M", "Sphere", "--dataset", "4wrapped", "--objective", "fm")
    assert isinstance(s, Settings)
    assert (s.model.manifold, s.model.hidden, s.model.activation) == ("Sphere", 128, "silu")  # the fm preset
    assert (s.optim.optimizer, s.optim.lr, s.optim.ema, s.optim.epochs) == ("adamw", 2e-3, 0.999, 5000)
    # the sphere's default step
    assert s.solver.method == "rk4" and s.solver.step_size == 1 / 3 and s.run.dataset == "4wrapped"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.optim.lr = 1.0
    t = resolved("--M", "Hyperboloid", "--dataset", "5gaussians", "--lr", "1e-2", "--flow_hidden_size", "16")
    assert (t.optim.lr, t.optim.optimizer, t.model.hidden, t.model.kind) == (1e-2, "adam", 16, "mcnf")
    assert t.solver.guard_tol == 0.005  # the solver guard's default for mle with a fixed step


def test_the_refined_step_is_the_models_and_is_what_the_run_saves(tmp_path):
    """The solver guard refines the model's own step; metrics.json and the checkpoint save that one.
    (One refinement, 1 -> 1/2, at the check of epoch 10: a gap of 0.013 nats against the tolerance 1e-3.)"""
    out = tmp_path / "g"
    r = subprocess.run([sys.executable, str(ROOT / "main_density.py"), "--M", "Hyperboloid", "--dataset", "5gaussians",
                        "--epochs", "10", "--lr", "1e-2", "--step_size", "1", "--solver_guard", "1e-3",
                        "--guard_freq", "10", "--eval_freq", "10", "--test_size", "300", "--dev", "cpu", "--quiet",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["final_step_size"] < 1 and m["args"]["step_size"] == m["final_step_size"]
    from flows import read_checkpoint

    ck = read_checkpoint(out / "checkpoint.pt")
    assert ck["args"]["step_size"] == m["final_step_size"] == ck["model_config"]["train_solver"]["step_size"]
