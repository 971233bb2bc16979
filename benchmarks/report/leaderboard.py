"""The leaderboard: one row per (dataset, method) from the checked cell results (collect.py).

Numeric columns (leaderboard.csv / .parquet; the Markdown, LaTeX and html tables show the same rows):
* status: ok | partial (some seeds) | stale | missing, with the reason; seeds = seeds with a valid result
* test_nll_mean / _std over seeds (each seed: the mean over test points of the IS estimate, S stated)
* dnll_mean, dnll_lo, dnll_hi, dnll_over, dnll_significant: test NLL minus the reference method's,
  paired on the same test points (stats.paired_difference), its interval and whether it excludes zero
* test_elbo, test_kl, active_units, exact_nll, ppl, bpd: means over seeds
* infer_ms_b1_* and infer_ms_bB_*: median, q1, q3 of inference ms per example at batch 1 and at the
  configured batch B over the interleaved timing rounds (all seeds' rounds pooled)
* epochs, epochs_planned, decoder_updates, train_s: the training budget actually used (mean over seeds);
  budget_deviates and budget_note: whether the row's budget differs from the dataset's policy
* converged, convergence_gain: whether validation had stopped improving (stats.convergence_gain)
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional

import numpy as np
import pandas as pd

from .collect import CellResult, Results
from .config import ReportConfig
from .stats import convergence_gain, paired_difference

TRUE_MODEL = "(true model)"
COLUMNS = ["status", "status_note", "seeds", "seeds_expected", "reference_method", "config",
           *(f"{c}_{s}" for c in ("test_nll", "test_elbo", "test_kl", "active_units", "exact_nll", "ppl", "bpd",
                                  "params_inference") for s in ("mean", "std")),
           "is_samples", "n_test", "true_nll", "dnll_mean", "dnll_lo", "dnll_hi", "dnll_over", "dnll_n",
           "dnll_significant", *(f"infer_ms_{b}_{s}" for b in ("b1", "bB") for s in ("median", "q1", "q3")),
           "timing_batch_size", "timing_hardware", "timing_note", "epochs", "epochs_planned", "decoder_updates",
           "train_s", "budget_deviates", "budget_note", "budget_policy", "convergence_gain", "converged",
           "data_source", "published", "published_metric", "d_published", "published_comparable"]
MEANS = {  # column -> metric of metrics.json, averaged over seeds
    "test_nll": "test_nll", "test_elbo": "test_elbo", "test_kl": "test_kl", "active_units": "active_units",
    "exact_nll": "exact_nll", "ppl": "test_ppl", "bpd": "test_bits_per_dim", "params_inference": "params_inference",
}


def _status(group: list[CellResult]) -> tuple[str, str]:
    ok = [c for c in group if c.status == "ok"]
    if len(ok) == len(group):
        return "ok", ""
    bad = [c for c in group if c.status != "ok"]
    reasons = "; ".join(sorted({f"seed {c.expected['seed']}: {c.status} ({c.reason})" for c in bad}))
    if ok:
        return "partial", reasons
    for status in ("conflict", "stale"):
        if any(c.status == status for c in bad):
            return status, reasons
    return "missing", reasons


def _budget(group: list[CellResult], ok: list[CellResult]) -> tuple[bool, str]:
    e = group[0].expected
    policy, own = e["budget_policy"], e["budget"]
    notes = []
    if own != policy:
        notes.append(f"configured {describe_budget(own)} (policy: {describe_budget(policy)})")
    for cell in ok:
        t = cell.metrics.get("training", {})
        planned = t.get("epochs_planned")
        if policy["kind"] == "epochs" and planned not in (None, policy["epochs"]) and own == policy:
            notes.append(f"its schedule plans {planned} epochs (policy: {policy['epochs']})")
        if t.get("resumed_with"):
            notes.append(f"seed {cell.expected['seed']} resumed after epoch {t['resumed_with']['after_epoch']} with "
                         + ", ".join(f"{k} {v}" for k, v in t["resumed_with"].items() if k != "after_epoch"))
    notes = list(dict.fromkeys(notes))
    return bool(notes), "; ".join(notes)


def describe_budget(budget: dict) -> str:
    if budget.get("kind") == "wall_clock":
        return f"{budget['seconds']:g} s of training (at most {budget['epochs']} epochs)"
    return f"{budget['epochs']} epochs"


def _timing(ok: list[CellResult], batch: Optional[str]) -> dict:
    rounds = [v for c in ok if c.timing and batch in c.timing["per_example"]
              for v in c.timing["per_example"][batch]["rounds_ms"]]
    if not rounds:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan}
    q1, median, q3 = np.quantile(rounds, [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def _paired(group: list[CellResult], reference: list[CellResult], confidence: float):
    refs = {c.expected["seed"]: c for c in reference if c.status == "ok"}
    pairs = {}
    for cell in group:
        ref = refs.get(cell.expected["seed"])
        if cell.status != "ok" or ref is None:
            continue
        if cell.metrics["test_points"] != ref.metrics["test_points"]:
            continue  # different test points: no paired comparison
        pairs[cell.expected["seed"]] = (cell.log_px, ref.log_px)
    return paired_difference(pairs, confidence)


def build(results: Results) -> pd.DataFrame:
    """The numeric leaderboard (see the module docstring), rows sorted by dataset, then test NLL."""
    groups: dict[tuple[str, str], list[CellResult]] = defaultdict(list)
    for cell in results.cells:
        groups[(cell.expected["dataset"], cell.expected["method"])].append(cell)
    rows = []
    for (dataset, method), group in groups.items():
        config = ReportConfig.parse(group[0].expected["report"], "report")
        ok = [c for c in group if c.status == "ok"]
        status, reason = _status(group)
        row = {"dataset": dataset, "method": method, "status": status, "status_note": reason,
               "seeds": len(ok), "seeds_expected": len(group), "reference_method": config.reference_method,
               "config": ", ".join(sorted({c.expected["hashes"].get("config", "")[:8] for c in group} - {""}))}
        for column, metric in MEANS.items():
            values = [c.metrics["metrics"][metric] for c in ok if metric in c.metrics["metrics"]]
            row[f"{column}_mean"] = float(np.mean(values)) if values else math.nan
            row[f"{column}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        if ok:
            first = ok[0].metrics["metrics"]
            row["is_samples"] = first["is_samples"]
            row["n_test"] = first["n_test"]
            if "true_nll" in first:
                row["true_nll"] = first["true_nll"]
        interval = _paired(group, groups.get((dataset, config.reference_method), []), config.confidence)
        if method == config.reference_method and ok:
            row.update(dnll_mean=0.0, dnll_lo=0.0, dnll_hi=0.0, dnll_over="reference", dnll_n=0,
                       dnll_significant=False)
        elif interval is not None:
            row.update(dnll_mean=interval.mean, dnll_lo=interval.lo, dnll_hi=interval.hi, dnll_over=interval.over,
                       dnll_n=interval.n, dnll_significant=not interval.covers_zero)
        batches = sorted({int(b) for c in ok if c.timing for b in c.timing["per_example"]})
        configured = str(max(batches)) if batches else None
        for prefix, batch in (("infer_ms_b1", "1"), ("infer_ms_bB", configured)):
            for stat, value in _timing(ok, batch).items():
                row[f"{prefix}_{stat}"] = value
        row["timing_batch_size"] = int(configured) if configured else math.nan
        row["data_source"] = "; ".join(sorted({c.metrics.get("data_source", "") for c in ok} - {""}))
        row["timing_hardware"] = "; ".join(sorted({c.timing_hardware["device_name"] for c in ok if c.timing_hardware}))
        row["timing_note"] = "; ".join(sorted({c.timing_note for c in ok if c.timing_note}))
        training = [c.metrics.get("training", {}) for c in ok]
        for column, key in (("epochs", "epochs_run"), ("epochs_planned", "epochs_planned"),
                            ("decoder_updates", "decoder_updates"), ("train_s", "train_seconds")):
            values = [t[key] for t in training if t.get(key) is not None]
            row[column] = float(np.mean(values)) if values else math.nan
        row["budget_deviates"], row["budget_note"] = _budget(group, ok)
        row["budget_policy"] = describe_budget(group[0].expected["budget_policy"])
        gains = [convergence_gain([h["valid_elbo"] for h in c.metrics.get("history", [])], config.convergence.window)
                 for c in ok]
        known = [g for g in gains if g is not None]
        row["convergence_gain"] = max(known) if known else math.nan
        row["converged"] = (all(g <= config.convergence.tolerance for g in known) and len(known) == len(ok)) if ok \
            else None
        if ok and all(t.get("stopped_by") == "nothing_to_train" for t in training):
            row["converged"] = None  # no parameters to train (svi under a fixed generator): not applicable
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    for column in COLUMNS:  # the same columns whatever finished (a failed run's report too)
        if column not in board:
            board[column] = math.nan
    if board["true_nll"].notna().any():  # the data-generating model's NLL, a row of its own
        truths = board.dropna(subset=["true_nll"]).groupby("dataset")["true_nll"].first()
        board = pd.concat([board, pd.DataFrame([{"dataset": d, "method": TRUE_MODEL, "status": "reference",
                                                 "seeds": 0, "test_nll_mean": v} for d, v in truths.items()])],
                          ignore_index=True)
    board["_order"] = board["method"].eq(TRUE_MODEL).astype(int)
    board = board.sort_values(["dataset", "_order", "test_nll_mean"], na_position="last")
    return board.drop(columns="_order").reset_index(drop=True)


def long_table(results: Results) -> pd.DataFrame:
    """One row per (dataset, method, seed, metric) of the valid cells, with provenance columns."""
    rows = []
    for cell in results.cells:
        if cell.status != "ok":
            continue
        rec, prov = cell.metrics, cell.metrics.get("provenance", {})
        base = {"dataset": rec["dataset"], "method": rec["method"], "seed": rec["seed"], "notes": rec.get("notes", ""),
                "git_commit": prov.get("git_commit"), "device_name": prov.get("device_name"),
                "date": prov.get("date"), "config_hash": prov.get("config_hash"),
                "torch": prov.get("versions", {}).get("torch")}
        for metric, value in rec["metrics"].items():
            rows.append({**base, "metric": metric, "value": float(value)})
        for batch, stats in (cell.timing or {}).get("per_example", {}).items():
            rows.append({**base, "metric": f"infer_ms_batch{batch}", "value": stats["median_ms"],
                         "device_name": (cell.timing_hardware or {}).get("device_name")})
    columns = ["dataset", "method", "seed", "metric", "value", "notes", "git_commit", "device_name", "date",
               "config_hash", "torch"]
    return pd.DataFrame(rows, columns=columns)
