"""scripts.mix_kde: a flow mixed with a KDE of its training split, the weight chosen on validation."""

import math

import pytest
import torch

from scripts import mix_kde as mk
from utils import run_cli


def test_mixture_log_prob_is_the_weighted_sum():
    a = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    b = torch.tensor([0.0, -3.0, 30.0], dtype=torch.float64)
    assert torch.equal(mk.mixture_log_prob(a, b, 0.0), a)
    assert torch.equal(mk.mixture_log_prob(a, b, 1.0), b)
    w = 0.3
    want = torch.log((1 - w) * a.exp() + w * b.exp())
    assert torch.allclose(mk.mixture_log_prob(a, b, w), want, rtol=0, atol=1e-12)


def test_best_weight_minimizes_the_nll():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, generator=g, dtype=torch.float64)
    b = torch.randn(500, generator=g, dtype=torch.float64)

    def nll(w):
        return -float(mk.mixture_log_prob(a, b, w).mean())

    w = mk.best_weight(a, b)
    assert 0.0 < w < 1.0
    assert all(nll(w) <= nll(i / 1000) + 1e-12 for i in range(1001))
    # one density better at every point: all weight on it
    assert mk.best_weight(a, a + 1.0) == 1.0
    assert mk.best_weight(a + 1.0, a) == 0.0


def test_a_broad_ladder_cap_keeps_sharp_kernels_out():
    from train.tasks import EarthTask

    tk = EarthTask("flood", split_seed=0)
    kde, kappas = mk.kde_for(tk, 1.1e5)
    assert max(kappas) <= 1.1e5
    with pytest.raises(mk.UserError, match="no ladder"):
        mk.kde_for(tk, 10.0)


def test_refuses_a_folder_that_is_not_a_run_and_an_existing_json(tmp_path, capsys):
    assert run_cli(mk.main, "scripts.mix_kde", [str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    out = tmp_path / "old.json"
    out.write_text("keep")
    assert run_cli(mk.main, "scripts.mix_kde", [str(tmp_path), "--json", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_text() == "keep"
    assert (
        run_cli(mk.main, "scripts.mix_kde", [str(tmp_path), "--json", str(tmp_path / "no" / "r.json")]) == 2
    )
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_mixture_nll_is_between_the_parts_bound(w):
    # the mixture's density is at least (1 - w) p_flow and w p_kde at every point
    a = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    b = torch.tensor([0.5, -4.0], dtype=torch.float64)
    lp = mk.mixture_log_prob(a, b, w)
    if 0 < w:
        assert torch.all(lp >= b + math.log(w) - 1e-12)
    if w < 1:
        assert torch.all(lp >= a + math.log1p(-w) - 1e-12)


def test_a_tiny_run_mixed_scored_checked_drawn_and_paged(tmp_path, capsys):
    """End to end on a small volcano run: the mixture's validation NLL is at most both parts' (its weight is
    the validation optimum over [0, 1], endpoints included), the flow's log-densities are cached beside the
    run and reused, the checks run (integral near 1, the two tolerances agree) and the page's block is
    written between its markers with the rest of the page kept."""
    import json

    from tests.test_earth import _run

    out = tmp_path / "volcano_split0"
    r = _run("--M", "Sphere", "--dataset", "volcano", "--objective", "fm", "--epochs", 4, "--eval_freq", 2,
             "--flow_hidden_size", "8", "--n_hidden", "2", "--fourier", "4", "--dev", "cpu", "--out", out,
             "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    page = tmp_path / "page.md"
    page.write_text("# kept title\n\nkept notes\n")
    js = tmp_path / "recs.json"
    args = [str(out), "--json", str(js), "--md", str(page), "--integral_samples", "2000",
            "--integral_centers", "200", "--figures", str(tmp_path / "figs"), "--res", "12"]  # fmt: skip
    assert run_cli(mk.main, "scripts.mix_kde", args) == 0
    (rec,) = json.loads(js.read_text())
    assert rec["mixture"]["val"] <= min(rec["flow"]["val"], rec["kde"]["val"]) + 1e-9
    assert 0.0 <= rec["weight"] <= 1.0
    assert abs(rec["integral"] - 1) < 5 * rec["integral_stderr"] + 0.05
    assert abs(rec["test_nll_tol"] - rec["test_nll_tight"]) < 0.01
    assert (tmp_path / "figs" / "earth_mix_volcano.png").is_file() and rec["map_err_test_drawn"] < 0.05
    text = page.read_text()
    assert text.startswith("# kept title\n\nkept notes") and all(m in text for m in mk.markers())
    assert (
        "| volcano | 0 |" in text
        and "![volcano](figs/earth_mix_volcano.png)" in text
        and f"{rec['mixture']['test']:.3f}" in text
    )
    # the flow's log-densities are kept beside the run and read back (not solved again)
    assert (out / "mix_kde_flow.json").is_file()
    capsys.readouterr()
    assert run_cli(mk.main, "scripts.mix_kde", [str(out), "--checks", "-1"]) == 0
    assert "flow scored in 0 s" in capsys.readouterr().out


def test_fixed_kernels_and_weight_are_printed_not_paged(tmp_path, capsys):
    for bad, msg in ((["--weight", "1.5"], "must be in [0, 1]"), (["--kappas", "0"], "positive and finite"),
                     (["--weight", "0.5", "--md", str(tmp_path / "p.md")], "for comparisons")):  # fmt: skip
        assert run_cli(mk.main, "scripts.mix_kde", [str(tmp_path), *bad]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "p.md").exists()
