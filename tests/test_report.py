"""The report's statistics and checks against hand computations: paired intervals, convergence, budget
marks, and that only results of the current config count (ok / stale / missing)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.report import leaderboard, render
from benchmarks.report.collect import collect
from benchmarks.report.stats import convergence_gain, mean_interval, paired_difference

T_975_4 = 2.7764451051977987  # Student t quantile, 0.975, 4 degrees of freedom
T_975_2 = 4.302652729911275


def test_paired_interval_over_points_matches_a_hand_computation():
    ref = np.array([-10.0, -12.0, -11.0, -13.0, -9.0])  # log p(x) of the reference per point
    m = ref - np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # method m: NLL larger by 1..5 nats
    interval = paired_difference({0: (m, ref)}, 0.95)
    sd = math.sqrt(sum((d - 3.0) ** 2 for d in (1, 2, 3, 4, 5)) / 4)
    half = T_975_4 * sd / math.sqrt(5)
    assert interval.over == "points" and interval.n == 5
    assert interval.mean == pytest.approx(3.0) and interval.lo == pytest.approx(3.0 - half)
    assert interval.hi == pytest.approx(3.0 + half) and not interval.covers_zero
    # the pairing matters: the same marginals unpaired would be far wider (the per-point spread is 1.58)
    assert half < 2.0 < T_975_4 * np.std(np.r_[m, ref], ddof=1)


def test_paired_interval_over_seeds_uses_the_per_seed_means():
    rng = np.random.default_rng(0)
    per_seed = {}
    for seed, shift in enumerate([0.5, -0.1, 0.2]):
        ref = rng.normal(-100, 5, size=50)
        per_seed[seed] = (ref - shift + rng.normal(0, 0.01, size=50), ref)
    interval = paired_difference(per_seed, 0.95)
    means = [float(np.mean(-(m - r))) for m, r in per_seed.values()]
    half = T_975_2 * np.std(means, ddof=1) / math.sqrt(3)
    assert interval.over == "seeds" and interval.n == 3
    assert interval.mean == pytest.approx(np.mean(means)) and interval.hi - interval.mean == pytest.approx(half)
    assert interval.covers_zero  # seed-to-seed spread (0.5, -0.1, 0.2) swamps the mean difference


def test_a_single_value_is_a_zero_width_interval():
    interval = mean_interval([2.5], 0.95, "points")
    assert (interval.lo, interval.mean, interval.hi, interval.n) == (2.5, 2.5, 2.5, 1)


def test_convergence_gain_over_the_final_tenth():
    plateau = [-150, -130, -125, -124.0] + [-123.96] * 16  # 20 epochs: the last 2 are the window
    assert convergence_gain(plateau, 0.1) == pytest.approx(0.0)
    rising = [-150 + i for i in range(20)]  # +1 nat per epoch to the end
    assert convergence_gain(rising, 0.1) == pytest.approx(2.0)  # best of last 2 (-131) minus best before (-133)
    assert convergence_gain([-120.0], 0.1) is None  # one epoch: nothing to compare
    assert convergence_gain([-120.0, float("nan"), -119.0, -118.5], 0.1) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------- a report's inputs

def write_cell(root: Path, method: str, seed: int, log_px: np.ndarray, *, eval_hash: str = "e1",
               epochs: int = 10, planned: int = 10, history: list | None = None, resumed_with=None,
               budget: dict | None = None, fingerprint: str = "abc") -> dict:
    """A cell's result files as the pipeline writes them, and its manifest entry."""
    run = root / method / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "model.pt.sha256").write_text("sha-of-model\n")
    table = pa.table({"point": np.arange(len(log_px)), "log_px": log_px, "elbo": log_px - 1.0})
    pq.write_table(table.replace_schema_metadata({"eval_hash": eval_hash}), run / "points.parquet")
    history = history or [{"epoch": e, "valid_elbo": -100.0 + min(e, 5)} for e in range(epochs)]
    metrics = {"dataset": "toy", "method": method, "seed": seed, "hashes": {"eval": eval_hash},
               "model_sha256": "sha-of-model", "history": history,
               "test_points": {"n": len(log_px), "fingerprint": fingerprint},
               "metrics": {"test_nll": float(-log_px.mean()), "test_elbo": float(log_px.mean() - 1),
                           "test_kl": 1.0, "active_units": 2, "is_samples": 100, "n_test": len(log_px),
                           "params_inference": 10},
               "training": {"epochs_run": epochs, "epochs_planned": planned, "decoder_updates": 10 * epochs,
                            "train_seconds": 1.0, "resumed_with": resumed_with}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    policy = {"epochs": 10, "kind": "epochs", "seconds": None}
    return {"dataset": "toy", "method": method, "seed": seed, "dataset_kind": "toy",
            "hashes": {"eval": "e1", "timing": "t1", "gaps": "g1", "train": "tr"},
            "budget_policy": policy, "budget": budget or policy,
            "report": {"reference_method": "avi", "confidence": 0.95,
                       "convergence": {"window": 0.1, "tolerance": 0.1}},
            "gaps_enabled": False,
            "files": {"metrics": str(run / "metrics.json"), "points": str(run / "points.parquet"),
                      "model_checksum": str(run / "model.pt.sha256"), "gaps": None}}


@pytest.fixture
def points():
    rng = np.random.default_rng(1)
    return rng.normal(-100, 3, size=40)


def test_budget_and_convergence_are_marked_in_every_format(tmp_path, points):
    cells = [
        write_cell(tmp_path, "avi", 0, points),
        write_cell(tmp_path, "svi", 0, points - 2.0, history=[{"epoch": e, "valid_elbo": -100.0 + e} for e in range(10)]),
        write_cell(tmp_path, "savae", 0, points - 0.01 + np.random.default_rng(2).normal(0, 0.3, 40),
                   budget={"epochs": 4, "kind": "epochs", "seconds": None}, epochs=4, planned=4),
        write_cell(tmp_path, "recmix", 0, points + 0.5, planned=12, epochs=12),
        write_cell(tmp_path, "iaf", 0, points + 0.1, resumed_with={"after_epoch": 3, "lr": 1e-4}),
    ]
    board = leaderboard.build(collect({"cells": cells})).set_index("method")
    assert not board.loc["avi", "budget_deviates"] and not board.loc["svi", "budget_deviates"]
    assert board.loc["savae", "budget_deviates"] and "configured 4 epochs (policy: 10 epochs)" in board.loc["savae", "budget_note"]
    assert board.loc["recmix", "budget_deviates"] and "plans 12 epochs" in board.loc["recmix", "budget_note"]
    assert board.loc["iaf", "budget_deviates"] and "resumed after epoch 3 with lr 0.0001" in board.loc["iaf", "budget_note"]
    assert bool(board.loc["avi", "converged"]) and not bool(board.loc["svi", "converged"])
    assert board.loc["svi", "convergence_gain"] == pytest.approx(1.0)
    # svi's NLL is exactly 2 nats higher on every point: a significant difference of +2 with no spread
    assert board.loc["svi", "dnll_mean"] == pytest.approx(2.0) and board.loc["svi", "dnll_significant"]
    assert not board.loc["savae", "dnll_significant"]  # noise around zero: no ranking
    shown = render.display_table(board.reset_index()).set_index("method")
    assert shown.loc["savae", "epochs"] == "4†" and shown.loc["avi", "epochs"] == "10"
    assert shown.loc["svi", "converged"].startswith("no‡ (+1.00)") and shown.loc["avi", "converged"] == "yes"
    assert shown.loc["savae", "Δ NLL vs avi"].endswith("n.s.") and shown.loc["avi", "Δ NLL vs avi"] == "(reference)"
    notes = render.footnotes(board.reset_index())
    assert any(n.startswith("† savae: configured 4 epochs") for n in notes)
    assert "Budget policy: 10 epochs per method" in render.header(board.reset_index())


def test_only_results_of_the_current_config_count(tmp_path, points):
    cells = [write_cell(tmp_path, "avi", 0, points), write_cell(tmp_path, "iaf", 0, points, eval_hash="old"),
             write_cell(tmp_path, "svi", 0, points), write_cell(tmp_path, "savae", 0, points)]
    Path(cells[2]["files"]["model_checksum"]).write_text("sha-of-a-retrained-model\n")  # model changed since
    for name in ("metrics", "points"):
        Path(cells[3]["files"][name]).unlink()
    cells.append({**cells[0], "method": "recmix", "files": {**cells[0]["files"]}})  # files of another cell
    results = collect({"cells": cells})
    status = {c.expected["method"]: (c.status, c.reason) for c in results.cells}
    assert status["avi"] == ("ok", "")
    assert status["iaf"][0] == "stale" and "another configuration" in status["iaf"][1]
    assert status["svi"][0] == "stale" and "model file changed" in status["svi"][1]
    assert status["savae"][0] == "missing"
    assert status["recmix"][0] == "stale" and "another cell" in status["recmix"][1]
    board = leaderboard.build(results).set_index("method")
    assert board.loc["iaf", "status"] == "stale" and math.isnan(board.loc["iaf", "test_nll_mean"])
    shown = render.display_table(board.reset_index()).set_index("method")
    assert shown.loc["iaf", "test NLL"] == "stale" and shown.loc["savae", "test NLL"] == "missing"


def test_paired_statistics_need_the_same_test_points(tmp_path, points):
    cells = [write_cell(tmp_path, "avi", 0, points), write_cell(tmp_path, "iaf", 0, points + 1, fingerprint="other")]
    board = leaderboard.build(collect({"cells": cells})).set_index("method")
    assert math.isnan(board.loc["iaf", "dnll_mean"])  # different test points: no paired comparison


def test_published_numbers_join_the_rows_of_their_methods(tmp_path, points):
    from benchmarks.report.config import Published
    from benchmarks.report.published import compare, read_published

    cells = [write_cell(tmp_path, "avi", 0, points), write_cell(tmp_path, "savae", 0, points + 1.0)]
    board = leaderboard.build(collect({"cells": cells}))
    board["dataset"] = "toy"
    reference = Published(paper="kim2018_savae", table="1", setting="oracle_generator",
                          methods={"vae": "avi", "svi": "svi", "savae": "savae", "true_model": "(true model)"})
    table = compare(board, None, {"toy": reference}, read_published())
    rows = board.set_index("method")
    # the paper's numbers are -ELBO bounds: compared with the reproduced -ELBO (the fixtures' ELBO = log p - 1)
    assert rows.loc["avi", "published"] == 21.77 and rows.loc["avi", "published_metric"] == "nll_upper_bound"
    assert rows.loc["avi", "d_published"] == pytest.approx(-rows.loc["avi", "test_elbo_mean"] - 21.77)
    assert rows.loc["savae", "d_published"] == pytest.approx(-rows.loc["savae", "test_elbo_mean"] - 20.13)
    assert set(table["paper method"]) == {"vae", "svi", "savae", "true_model"}
    assert table.set_index("paper method").loc["svi", "reproduced"] != table.set_index("paper method").loc["svi", "reproduced"]  # NaN: no svi row
    assert (table["source"] == "Kim et al. 2018, Table 1").all()


def test_costs_use_a_forked_jobs_own_cpu_and_memory(tmp_path):
    """Snakemake's benchmark file of a job that ran in a fork-server child measured only the waiting client:
    the cost table takes that job's CPU seconds and peak memory from its own timers instead."""
    from benchmarks.report.collect import read_costs
    from benchmarks.report.costs import stage_costs, summary

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    entries = []
    for name, forked in (("a", True), ("b", False)):
        (tmp_path / f"{name}.tsv").write_text(header + "2.0\t0:00:02\t30.0\t0\t0\t0\t0\t0\t0\t0.05\n")
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"rule": "train", "started": 0.0, "work_started": 0.1, "finished": 2.0, "startup_s": 0.1,
             "work_s": 1.9, "cpu_s": 1.7, "max_rss_mb": 600.0, "forked": forked}))
        entries.append({"rule": "train", "label": name, "benchmark": str(tmp_path / f"{name}.tsv"),
                        "cost": str(tmp_path / f"{name}.json")})
    rows = {row["label"]: row for row in read_costs(entries)}
    assert (rows["a"]["cpu_s"], rows["a"]["max_rss_mb"]) == (1.7, 600.0)
    assert (rows["b"]["cpu_s"], rows["b"]["max_rss_mb"]) == (0.05, 30.0)
    table = stage_costs(list(rows.values()))
    assert table.loc[table["stage"] == "train", "CPU s"].item() == pytest.approx(1.75)
    assert "1 of 2 jobs ran in the fork server" in summary(table)


def test_a_cell_with_nothing_to_train_is_not_marked_as_still_improving(tmp_path, points):
    """svi under a fixed generator trains nothing (0 epochs): its convergence is not applicable, so it is
    neither 'yes' nor 'still improving', and its Pareto marker is filled."""
    cells = [write_cell(tmp_path, "avi", 0, points), write_cell(tmp_path, "svi", 0, points - 1.0, epochs=0)]
    metrics = Path(cells[1]["files"]["metrics"])
    payload = json.loads(metrics.read_text())
    payload["history"], payload["training"]["stopped_by"] = [], "nothing_to_train"
    metrics.write_text(json.dumps(payload))
    board = leaderboard.build(collect({"cells": cells})).set_index("method")
    assert board.loc["svi", "converged"] is None and not render.still_improving(board.loc["svi", "converged"])
    assert render.display_table(board.reset_index()).set_index("method").loc["svi", "converged"] == "—"
    assert render.still_improving(False) and not render.still_improving(True)


def test_a_published_reference_can_select_several_settings():
    """SA-VAE's Yahoo table files the VAE row under no setting and the SVI rows under K=10/20/40: a list of
    settings joins the VAE row and the K=20 rows in one entry, and no other K."""
    from benchmarks.report.config import Published
    from benchmarks.report.published import published_rows

    names = {"lstm_lm": "(not regenerated)", "vae": "avi", "vae_init": "(not regenerated)",
             "vae_word_drop_25": "(not regenerated)", "vae_word_drop_50": "(not regenerated)", "svi": "svi",
             "vae_svi": "(see other)", "vae_svi_kl": "(see other)", "savae": "savae"}
    rows = published_rows(Published(paper="kim2018_savae", table="2", dataset="yahoo", setting=["", "K=20"],
                                    methods=names))
    chosen = {(r["method"], r["setting"]): r["value"] for r in rows}
    assert chosen[("vae", "")] == 330.2 and chosen[("svi", "K=20")] == 330.8 and chosen[("savae", "K=20")] == 327.5
    assert not any(setting in ("K=10", "K=40") for _, setting in chosen)
    only_k20 = published_rows(Published(paper="kim2018_savae", table="2", dataset="yahoo", setting="K=20",
                                        methods=names))
    assert {r["setting"] for r in only_k20} == {"K=20"}


def test_publishing_a_reference_replaces_it_whole_and_keeps_the_published_table(tmp_path):
    """`make reproduce`'s last step: the reference folder gets the run's reports (the published-vs-reproduced
    table too) and RUN.md with the cost table; a file of an earlier publication does not survive."""
    import subprocess
    import sys

    from benchmarks.provenance import REPO_ROOT

    results, target = tmp_path / "results", tmp_path / "reference" / "demo"
    results.mkdir()
    (results / "leaderboard.md").write_text("| method |\n")
    (results / "published.md").write_text("| paper | published | reproduced |\n")
    (results / "costs.md").write_text("# Cost\n\n| stage | jobs |\n|---|---|\n| train | 7 |\n")
    (results / "unrelated.txt").write_text("not a report")
    target.mkdir(parents=True)
    (target / "pareto_old_dataset.png").write_text("from an earlier publication")
    subprocess.run([sys.executable, "-m", "benchmarks.cli", "publish", str(results), str(target), "--config",
                    "config/demo.yaml", "--cores", "2", "--seconds", "90"], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    assert sorted(p.name for p in target.iterdir()) == ["RUN.md", "costs.md", "leaderboard.md", "published.md"]
    run = (target / "RUN.md").read_text()
    assert "wall time: 1.5 minutes" in run and "| train | 7 |" in run and "config/demo.yaml" in run
    assert not any(p.name.startswith(".") for p in target.parent.iterdir())
    with pytest.raises(subprocess.CalledProcessError):  # nothing to publish: the old reference stays
        subprocess.run([sys.executable, "-m", "benchmarks.cli", "publish", str(tmp_path / "empty"), str(target)],
                       cwd=REPO_ROOT, check=True, capture_output=True)
    assert (target / "published.md").is_file()
