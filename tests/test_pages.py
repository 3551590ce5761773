"""The pages the scripts write: results tables read back, generated side-by-side blocks rewritten in place."""

from argparse import Namespace

from scripts import earth, reproduce


def _earth_page(path, objective, nll_by_dataset, train_s, stacked=None):
    """Write a results page with scripts.earth's own writer, from made-up metrics (``stacked``: the runs' stacked
    test NLL is their own minus this, as ``--stack`` reports it)."""
    a = Namespace(objective=objective, extra=[], dev="cpu", jobs=1, integral_samples=10, integral_centers=5,
                  res=10, integral_seeds=None, figures="", seeds=[0, 1], epochs=None, steps=100, hidden=8,
                  n_hidden=1, lr="1e-3", step_size="0.5", note="measured limits" if objective == "fm" else "")  # fmt: skip
    results = {ds: [dict(test_nll=v + d, epochs=7, args={"batch_size": 10}, n_train=70, train_seconds=train_s,
                         wall_seconds=train_s + 1, cmd="python main_density.py") for d in (-0.1, 0.1)]
               for ds, v in nll_by_dataset.items()}  # fmt: skip
    if stacked is not None:
        for ms in results.values():
            for m in ms:
                m["stack"] = dict(test_nll=m["test_nll"] - stacked, weight_flow=0.5)
    earth.write(path, results, a)


def test_side_by_side_block_is_built_from_the_pages_and_rewritten_in_place(tmp_path):
    earth_md, fm, fm_new = tmp_path / "earth.md", tmp_path / "earth_fm.md", tmp_path / "earth_fm_kde.md"
    fm_long = tmp_path / "earth_fm_kde_long.md"
    _earth_page(earth_md, "mle", {"volcano": -1.5, "fire": -0.4}, 230)
    _earth_page(fm, "fm", {"volcano": -4.5, "flood": 0.6}, 500)
    _earth_page(fm_new, "fm", {"volcano": -6.0}, 520)
    _earth_page(fm_long, "fm", {"volcano": -7.0, "flood": 0.5}, 1600, stacked=0.25)
    earth.side_by_side(earth_md, fm, fm_new, fm_long)
    earth.side_by_side(earth_md, fm, fm_new, fm_long)  # idempotent: one block, replaced in place
    text = earth_md.read_text()
    assert text.count(earth.SIDE_BEGIN) == 1
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.split(earth.SIDE_BEGIN)[1].splitlines() if line.startswith("| ") and "dataset" not in line}  # fmt: skip
    # maximum likelihood, the current flow-matching default, its long budget (train s, then stacked), the previous
    # default (mean ± std (splits), train s)
    assert rows["volcano"][1:10] == [
        "-1.500 ± 0.141 (2)",
        "230",
        "-6.000 ± 0.141 (2)",
        "520",
        "-7.000 ± 0.141 (2)",
        "1600",
        "-7.250 ± 0.141 (2)",
        "-4.500 ± 0.141 (2)",
        "500",
    ]
    assert rows["volcano"][11] == "-1.79"  # the current default's gap: -6.00 - (-4.21)
    assert rows["volcano"][12] == earth.RIEMANNIAN_DIFFUSION[0]
    assert rows["volcano"][13] == "-0.39"  # the long budget's gap: -7.00 - (-6.61)
    assert rows["volcano"][14] == "-0.64"  # the stacked density's: -7.25 - (-6.61)
    assert rows["flood"][5] == "0.500 ± 0.141 (2)" and rows["flood"][7] == "0.250 ± 0.141 (2)"
    assert rows["flood"][14] == "-0.18"  # 0.25 - 0.43
    assert (
        rows["fire"][3] == "not run"
        and rows["flood"][3] == "not run"
        and rows["fire"][7] == "not run"
        and rows["flood"][8] == "0.600 ± 0.141 (2)"
    )
    assert (
        rows["fire"][11] == "" and rows["fire"][13] == "" and rows["fire"][14] == ""
    )  # no gaps without rows
    assert "earthquake" not in rows
    assert "measured limits" in text.split(earth.SIDE_BEGIN)[1]
    assert text.index(earth.SIDE_BEGIN) < text.index("Published (")


def test_figure_names_keep_each_budget_its_own_map():
    fm = Namespace(objective="fm", extra=[])
    assert earth.figure_name(fm, "fire") == "earth_fm_fire.png"
    assert (
        earth.figure_name(Namespace(objective="fm", extra=["--budget", "long"]), "fire")
        == "earth_fm_fire_long.png"
    )
    assert (
        earth.figure_name(Namespace(objective="fm", extra=["--budget=long"]), "flood")
        == "earth_fm_flood_long.png"
    )
    assert earth.figure_name(Namespace(objective="mle", extra=[]), "fire") == "earth_fire.png"


def test_a_page_rebuilt_without_a_note_keeps_its_own(tmp_path):
    page = tmp_path / "earth_fm.md"
    _earth_page(page, "fm", {"volcano": -4.5}, 500)  # its note: "measured limits"
    a = Namespace(objective="fm", extra=[], dev="cpu", jobs=1, integral_samples=10, integral_centers=5, res=10,
                  integral_seeds=None, figures="", seeds=[0, 1], note=None)  # fmt: skip
    results = {"volcano": [dict(test_nll=-4.5, epochs=7, args={"batch_size": 10}, n_train=70, train_seconds=500,
                                wall_seconds=501, cmd="python main_density.py")] * 2}  # fmt: skip
    earth.write(page, results, a)
    assert "measured limits" in page.read_text()
    earth.write(page, results, Namespace(**{**vars(a), "note": ""}))  # --note '' removes it
    assert "measured limits" not in page.read_text()


def _repro_page(path, objective, kl_by_key, train_s):
    """Write a reproduction page with scripts.reproduce's own writer, from made-up metrics."""
    a = Namespace(objective=objective, epochs=50, lr="1e-2" if objective == "mle" else None, dev="cpu",
                  antipodal_epochs=10)  # fmt: skip
    rows = []
    for (M, ds), kl in kl_by_key.items():
        m = None if kl is None else dict(test_nll=1 + kl, entropy=1.0, kl=kl, kl_stderr=0.01, nfe_forward=16,
                                         nfe_backward=0, train_seconds=train_s)  # fmt: skip
        rows.append((M, ds, 50, m, None if kl is None else 1.0, ["python", "main_density.py"],
                     None if kl is not None else "not run (--assemble)"))  # fmt: skip
    reproduce.write_markdown(path, rows, [], a)


def test_reproduction_side_by_side_block(tmp_path):
    mle_md, fm_md = tmp_path / "reproduction.md", tmp_path / "reproduction_fm.md"
    _repro_page(mle_md, "mle", {("Sphere", "4wrapped"): 0.023, ("Hyperboloid", "1wrapped"): 0.0001}, 400)
    _repro_page(fm_md, "fm", {("Sphere", "4wrapped"): 0.05, ("Hyperboloid", "1wrapped"): None}, 60)
    reproduce.side_by_side(mle_md, fm_md)
    reproduce.side_by_side(mle_md, fm_md)
    block = mle_md.read_text().split(reproduce.SIDE_BEGIN)
    assert len(block) == 2
    rows = [line for line in block[1].split(reproduce.SIDE_END)[0].splitlines() if line.startswith("| Sphere")
            or line.startswith("| Hyperboloid")]  # fmt: skip
    assert rows == ["| Hyperboloid | 1wrapped | 50 | 0.0001 +- 0.0100 | 400 | - | not run |  |",
                    "| Sphere | 4wrapped | 50 | 0.0230 +- 0.0100 | 400 | 50 | 0.0500 +- 0.0100 | 60 |"]  # fmt: skip


def test_earth_page_tabulates_each_maps_step_grid_and_error(tmp_path):
    page = tmp_path / "earth_fm.md"
    a = Namespace(objective="fm", extra=[], dev="cpu", jobs=1, integral_samples=10, integral_centers=5, res=10,
                  integral_seeds=None, figures=str(tmp_path), seeds=[0], epochs=None, steps=100, hidden=8, n_hidden=1,
                  lr="1e-3", step_size="0.5", note="")  # fmt: skip
    run = dict(test_nll=-5.0, epochs=7, args={"batch_size": 10}, n_train=70, train_seconds=5, wall_seconds=6,
               cmd="python main_density.py", map_res=150, map_err_val=0.0024, map_err_test=0.0029, map_seconds=99)  # fmt: skip
    results = {
        "volcano": [dict(run, map_step=1 / 32, map_warp=2.0, map_cells_rescored=412, map_rescore_err=44.1)],
        "earthquake": [
            dict(
                run,
                map_step=1 / 8,
                map_warp=2.0,
                map_cells_rescored=56,
                map_rescore_err=251.0,
                map_cells_refined=549,
                map_err_test_drawn=0.00012,
            )
        ],  # fmt: skip
        "fire": [
            dict(run, map_step=1 / 16, map_warp=2.0, map_peaks_rescored=36, map_peak_err=3.5)
        ],  # only its peaks
        "flood": [dict(run, map_step=1 / 8, map_warp=1.0)],  # a map drawn before its peak cells were scored
    }
    earth.write(page, results, a)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in page.read_text().splitlines() if line.startswith("| ") and "150 x 150" in line}  # fmt: skip
    assert rows["volcano"][2:] == ["1/32 (t = s^2)", "0.0024", "0.0029", "-", "-", "412 (44.1)", "99"]
    assert rows["earthquake"][2:] == ["1/8 (t = s^2)", "0.0024", "0.0029", "0.0001", "549", "56 (251)", "99"]
    assert rows["fire"][7] == "36 peaks (3.5)"
    assert rows["flood"][2] == "1/8" and rows["flood"][7] == "-"


def test_earth_page_takes_runs_of_an_earlier_session_from_its_record_only_under_the_same_settings(
    tmp_path, monkeypatch
):
    """A page's run records let a later session (without the run folders; results/ is not committed)
    rebuild the page, but never for a command whose presets have changed since."""
    import json
    import shutil

    import pytest

    from scripts.runs import resolved_settings

    runs, md = tmp_path / "runs", tmp_path / "page.md"
    out = runs / "volcano_split0"
    cmd = ["--M", "Sphere", "--dataset", "volcano", "--split_seed", "0", "--objective", "fm", "--dev", "cpu",
           "--out", str(out), "--quiet"]  # fmt: skip
    args = {**resolved_settings(cmd), "out": str(out), "base_n": 662, "explicit": ["M", "dataset"]}
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(dict(test_nll=-5.5, test_nll_stderr=0.5, val_nll=-6.0, epochs=30000,
                                                      best_epoch=27000, train_seconds=499.0, args=args)))  # fmt: skip
    argv = ["--objective", "fm", "--dev", "cpu", "--assemble", "--runs", str(runs), "--md", str(md),
            "--datasets", "volcano", "--seeds", "0", "--integral_seeds", "--figures", ""]  # fmt: skip
    assert earth.main(argv) == 0
    first = md.read_text()
    rec = json.loads(earth.records_path(md).read_text())
    assert len(rec) == 1 and rec[0]["test_nll"] == -5.5 and "args" not in rec[0]
    assert rec[0]["settings"]["fourier"] == 256  # the presets it ran with, not only the command
    assert "| volcano | 662 | 1 | 30000 (30000) | -5.500 (one split) |" in first

    shutil.rmtree(runs)  # a new checkout: the run folder is gone, the record is committed
    assert earth.main(argv) == 0
    again = md.read_text()
    trained = []  # without --assemble too: a recorded run is not trained again
    monkeypatch.setattr(earth, "run_one", lambda *a, **k: trained.append(a) or (None, None, "not run"))
    assert earth.main([x for x in argv if x != "--assemble"]) == 0 and not trained
    assert md.read_text() == again
    assert "| volcano | 662 | 1 | 30000 (30000) | -5.500 (one split) |" in again
    assert "1 of these runs were trained by an earlier session" in again

    rec[0]["settings"]["lr"] = 1e-3  # the preset changed since: the record no longer describes the command
    earth.records_path(md).write_text(json.dumps(rec))
    assert earth.main(argv) == 1  # nothing to tabulate; the page stays as it was
    assert md.read_text() == again

    # the trust check of the split-0 model, as the page shows it
    a = Namespace(objective="fm", extra=[], dev="cpu", jobs=1, integral_samples=10, integral_centers=5, res=10,
                  integral_seeds=[0], figures="", seeds=[0], note="")  # fmt: skip
    tight = dict(rec[0], score_tol=1e-5, test_nll_score=-1.2559, test_nll_tight=-1.2561)
    earth.write(tmp_path / "trust.md", {"volcano": [tight]}, a)
    assert "| volcano | 1e-05 | -1.2559 | -1.2561 | -0.0002 |" in (tmp_path / "trust.md").read_text()

    earth.records_path(md).write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="list of run records"):
        earth.main(argv)


def test_an_ensemble_s_steps_are_shown_per_field(tmp_path):
    """A catalogue trained with --ensemble K (flood's and earthquake's long budget) shows its steps as K fields
    of that many steps each, not as one field's."""
    a = Namespace(objective="fm", extra=["--budget", "long"], dev="cpu", jobs=2, integral_samples=10,
                  integral_centers=5, res=10, integral_seeds=None, figures="", seeds=[0, 1], note="")  # fmt: skip
    results = {ds: [dict(test_nll=0.5 + d, epochs=9000, batch_size=512, n_train=70, train_seconds=600.0,
                         settings={"ensemble": k}, cmd="python main_density.py") for d in (-0.1, 0.1)]
               for ds, k in (("flood", 3), ("fire", 1))}  # fmt: skip
    earth.write(tmp_path / "p.md", results, a)
    rows = {line.split("|")[1].strip(): line for line in (tmp_path / "p.md").read_text().splitlines()
            if line.startswith("| flood") or line.startswith("| fire")}  # fmt: skip
    assert "| 9000 (9000 x 3 fields) |" in rows["flood"] and "| 9000 (9000) |" in rows["fire"]


def test_a_dataset_s_own_map_resolution_is_parsed_and_named_in_the_page_s_command(tmp_path):
    import argparse

    import pytest

    assert earth.dataset_res("flood=120") == ("flood", 120)
    for bad in ("flood", "mars=100", "flood=1", "flood=1e2"):
        with pytest.raises(argparse.ArgumentTypeError, match="DATASET=RES"):
            earth.dataset_res(bad)
    a = Namespace(objective="fm", extra=[], dev="cpu", jobs=2, integral_samples=10, integral_centers=5, res=150,
                  res_of={"flood": 120, "earthquake": 100}, integral_seeds=None, figures="", seeds=[0], note="")  # fmt: skip
    results = {ds: [dict(test_nll=0.5, epochs=10, batch_size=8, n_train=70, train_seconds=1.0, cmd="python x")]
               for ds in ("flood", "fire")}  # fmt: skip
    earth.write(tmp_path / "p.md", results, a)
    # only the datasets on the page, in a fixed order
    text = (tmp_path / "p.md").read_text()
    assert "--res 150 --res_of flood=120 " in text and "--datasets flood fire" in text
