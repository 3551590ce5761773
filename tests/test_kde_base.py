"""The data-informed base of the Earth runs (``--base kde``, issue #26) and ``--budget``."""

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from flows import load_model
from manifolds import integrate
from manifolds.distributions import MultiscaleKDE
from train.tasks import EarthTask

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "main_density.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_multiscale_kde_is_a_density_and_pairs_with_its_centres():
    g = torch.Generator().manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(40, 3, generator=g, dtype=torch.float64), dim=-1)
    kde = MultiscaleKDE(c, [3.0, 30.0, 300.0], eps=0.05)
    assert integrate(kde.log_prob, kde.manifold, n_radial=800, n_angular=1600) == pytest.approx(1.0, abs=1e-5)
    # very sharp kernels keep their precision: at its centre a kernel of concentration 1e7 has density
    # kappa / (2 pi), and 1e-4 rad away it has lost kappa (1 - cos 1e-4) = 50 nats
    sharp = MultiscaleKDE(c[:1], [1e7], eps=1e-9)
    near = torch.stack(
        [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([math.cos(1e-4), math.sin(1e-4), 0.0])]
    ).double()
    e0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    v = e0 - c[0]
    x = near - 2 * (near @ v)[:, None] * v / (v @ v)  # the reflection that maps e_0 to c[0]
    lp = sharp.log_prob(x)
    assert float(lp[0]) == pytest.approx(math.log(1e7 / (2 * math.pi)), abs=1e-6)
    assert float(lp[0] - lp[1]) == pytest.approx(1e7 * (1 - math.cos(1e-4)), rel=1e-6)
    # paired draws at uniformly chosen centres have the KDE as their marginal: mean -log p agrees with
    # that of the KDE's own samples (two independent estimates of its entropy)
    idx = torch.randint(0, len(c), (40_000,), generator=g)
    a = -kde.log_prob(kde.sample_around(c[idx], g))
    b = -kde.log_prob(kde.sample(40_000, generator=g))
    assert abs(float(a.mean() - b.mean())) < 4 * math.sqrt(float(a.var() + b.var()) / 40_000)


def test_kde_base_run_scores_its_base_as_epoch_0_and_reloads(tmp_path):
    out = tmp_path / "v"
    r = run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--base", "kde", "--epochs", 20,
            "--eval_freq", 10, "--dev", "cpu", "--quiet", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    t = EarthTask("volcano", split_seed=0)
    centers, kappas, val = t.kde_base()
    assert hist[0]["epoch"] == 0 and hist[0]["val_nll"] == pytest.approx(val, abs=1e-6)
    m = json.loads((out / "metrics.json").read_text())
    assert m["args"]["coupling"] == "paired" and m["args"]["base_kappas"] == pytest.approx(kappas)
    model = load_model(out / "best.pt").double()
    torch.testing.assert_close(model.base_centers, centers.double())
    with torch.no_grad():
        lp = model.log_prob(t.data.test.double())
    assert -float(lp.mean()) == pytest.approx(m["test_nll"], abs=1e-6)


@pytest.mark.parametrize("args,needle", [
    (["--M", "Sphere", "--dataset", "4wrapped", "--base", "kde"], "finite training split"),
    (["--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--base", "default", "--coupling", "paired"],
     "needs --base kde"),
    (["--M", "Sphere", "--dataset", "volcano", "--base", "kde", "--coupling", "paired"], "--coupling pairs"),
    (["--M", "Sphere", "--dataset", "4wrapped", "--budget", "long"], "--budget long sets"),
    (["--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--base", "default", "--kde_kappas", "100"],
     "add --base kde"),
    (["--M", "Sphere", "--dataset", "volcano", "--kde_kappas", "100"], "add --base kde"),
    (["--M", "Sphere", "--dataset", "volcano", "--base", "kde", "--kde_kappas", "0"], "--kde_kappas"),
])  # fmt: skip
def test_refusals(tmp_path, args, needle):
    r = run(*args, "--epochs", 2, "--dev", "cpu", "--out", tmp_path / "x")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_budget_sets_the_steps_of_earth_flow_matching():
    from train.config import fill_objective

    def resolved(**flags):
        base = dict(objective="fm", M="Sphere", dim=2, lr_schedule=None, epochs=10, eval_freq=1, conc=None,
                    contsave=False, amp="off", budget="default", dataset="volcano")  # fmt: skip
        a = types.SimpleNamespace(**{**base, **flags}, explicit=set(flags) - {"budget", "dataset"})
        fill_objective(a, earth=True)
        return a.epochs, a.eval_freq

    assert resolved() == (60_000, 6_000)
    assert resolved(budget="long") == (180_000, 18_000)
    assert resolved(budget="long", epochs=500) == (500, 18_000)
    # the catalogues that overfit sooner take a fraction of either budget
    assert resolved(dataset="fire") == (60_000, 6_000)
    assert resolved(dataset="earthquake") == (30_000, 3_000)
    assert resolved(dataset="flood") == (9_000, 900)
    assert resolved(dataset="flood", epochs=500) == (500, 900)


def test_a_budget_of_its_own_for_one_catalogue():
    """Flood's long budget is three fields of its default steps averaged (``--ensemble 3``), not one field
    trained three times as long; an explicit flag still wins, and the other budgets and catalogues keep one."""
    from train.config import fill_objective

    def resolved(**flags):
        base = dict(objective="fm", M="Sphere", dim=2, lr_schedule=None, epochs=10, eval_freq=1, conc=None,
                    contsave=False, amp="off", budget="default", dataset="flood", ensemble=1)  # fmt: skip
        a = types.SimpleNamespace(**{**base, **flags}, explicit=set(flags) - {"budget", "dataset"})
        fill_objective(a, earth=True)
        return a.epochs, a.eval_freq, a.ensemble, a.fourier_scale

    assert resolved() == (9_000, 900, 1, 15.0)
    assert resolved(budget="long") == (9_000, 900, 3, 15.0)
    assert resolved(budget="long", ensemble=2) == (9_000, 900, 2, 15.0)
    assert resolved(budget="long", epochs=300) == (300, 900, 3, 15.0)
    assert resolved(budget="long", dataset="earthquake") == (30_000, 3_000, 3, 15.0)
    assert resolved(budget="long", dataset="fire") == (180_000, 18_000, 1, 30.0)


def test_flood_s_long_budget_trains_three_fields(tmp_path):
    """The command line resolves flood's ``--budget long`` to a model of three fields (saved, loaded, scored)."""
    out = tmp_path / "fl"
    r = run("--M", "Sphere", "--dataset", "flood", "--objective", "fm", "--budget", "long", "--epochs", 2,
            "--eval_freq", 2, "--flow_hidden_size", 16, "--fourier", 8, "--dev", "cpu", "--out", out, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["args"]["ensemble"] == 3 and m["args"]["budget"] == "long" and math.isfinite(m["test_nll"])
    assert len(load_model(out / "checkpoint.pt").field.members) == 3


def test_a_catalogue_s_own_settings_replace_the_earth_preset_and_flags_win(monkeypatch):
    import train.config as config

    monkeypatch.setitem(config.EARTH_DATASETS, "flood", dict(steps=0.5, fourier_scale=15.0))

    def resolved(**flags):
        base = dict(objective="fm", M="Sphere", dim=2, lr_schedule=None, epochs=10, eval_freq=1, conc=None,
                    contsave=False, amp="off", budget="default", dataset="flood", fourier_scale=1.0)  # fmt: skip
        a = types.SimpleNamespace(
            **{**base, **flags}, explicit=set(flags) - {"budget", "dataset", "objective"}
        )
        config.fill_objective(a, earth=True)
        return a.epochs, a.eval_freq, a.fourier_scale, a.fourier

    assert resolved() == (30_000, 3_000, 15.0, 256)
    assert resolved(fourier_scale=30.0) == (30_000, 3_000, 30.0, 256)  # an explicit flag wins
    assert resolved(budget="long") == (90_000, 9_000, 15.0, 256)
    assert resolved(dataset="volcano") == (60_000, 6_000, 30.0, 256)  # the others keep the preset
    assert resolved(objective="mle")[2] == 1.0  # maximum likelihood has no Earth preset
    assert "flood 15" in config.effective_default("fourier_scale", 1.0)


def test_given_kde_kappas_are_the_base_and_its_epoch_0_score(tmp_path):
    out = tmp_path / "k"
    r = run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--base", "kde", "--kde_kappas", 100, 400,
            "--epochs", 2, "--eval_freq", 2, "--dev", "cpu", "--quiet", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["args"]["base_kappas"] == [100.0, 400.0]
    first = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    _, _, val = EarthTask("volcano").kde_base([100.0, 400.0])
    assert first["epoch"] == 0 and first["val_nll"] == pytest.approx(val, abs=1e-6)


def test_the_earth_pages_tolerance_check_scores_the_best_model_at_two_tolerances(tmp_path):
    """scripts.earth's trust check (issue #26, item 6): the split-0 model's test NLL at its evaluation
    tolerance and at a 100x tighter one, the first equal to what the run itself reported."""
    from scripts import earth

    out = tmp_path / "v"
    r = run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--epochs", 2, "--eval_freq", 2,
            "--dev", "cpu", "--quiet", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rec = earth.tight_check(out, "volcano", None, 0)
    reported = json.loads((out / "metrics.json").read_text())["test_nll"]
    assert rec["score_tol"] == 1e-5
    assert rec["test_nll_score"] == pytest.approx(reported, abs=1e-9)
    assert abs(rec["test_nll_tight"] - rec["test_nll_score"]) < 0.01
