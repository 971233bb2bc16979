"""The interactive index.html: the leaderboards and gap tables as sortable, filterable tables, the Pareto
plots with hover details (Plotly, its JS written beside the page), one view per dataset (site.py)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import render
from .leaderboard import TRUE_MODEL
from .site import write_site


def _cell(text: str, sort) -> dict:
    if sort is None or (isinstance(sort, float) and math.isnan(sort)):
        sort = None
    return {"display": text, "sort": sort}


SORT_KEYS = {  # display column (prefix) -> numeric column that orders it
    "test NLL": "test_nll_mean", "Δ NLL": "dnll_mean", "ELBO": "test_elbo_mean", "KL": "test_kl_mean",
    "AU": "active_units_mean", "exact NLL": "exact_nll_mean", "PPL": "ppl_mean", "bits/dim": "bpd_mean",
    "ms/ex @1": "infer_ms_b1_median", "ms/ex @": "infer_ms_bB_median", "epochs": "epochs",
    "decoder updates": "decoder_updates", "train s": "train_s", "converged": "convergence_gain",
    "inference params": "params_inference_mean", "seeds": "seeds",
}


def _sort_column(title: str) -> str | None:
    for prefix in sorted(SORT_KEYS, key=len, reverse=True):
        if title.startswith(prefix):
            return SORT_KEYS[prefix]
    return None


def table_spec(table_id: str, caption: str, shown: pd.DataFrame, numeric: pd.DataFrame,
               footnotes: list[str], row_classes: list[str] | None = None) -> dict:
    columns, rows = [], []
    for title in shown.columns:
        key = _sort_column(title)
        columns.append({"key": title, "label": title, "type": "number" if key else "text"})
    for i in range(len(shown)):
        row = {}
        for title in shown.columns:
            key = _sort_column(title)
            value = numeric.iloc[i][key] if key and key in numeric else None
            row[title] = _cell(str(shown.iloc[i][title]), None if value is None else float(value)) if key \
                else str(shown.iloc[i][title])
        rows.append(row)
    spec = {"id": table_id, "caption": caption, "columns": columns, "rows": rows, "footnotes": footnotes}
    if row_classes is not None:
        spec["row_classes"] = row_classes
    return spec


def pareto_spec(board: pd.DataFrame, dataset: str, published: list[dict]) -> dict:
    rows = board[(board["dataset"] == dataset) & board["status"].isin(["ok", "partial"])]
    rows = rows.dropna(subset=["test_nll_mean", "infer_ms_bB_median"])
    series = []
    for hardware, group in rows.groupby("timing_hardware", sort=True):
        points = []
        for _, r in group.iterrows():
            interval = render.interval(r)
            lo = r["test_nll_mean"] + (r["dnll_lo"] - r["dnll_mean"]) if not pd.isna(r.get("dnll_lo")) else None
            hi = r["test_nll_mean"] + (r["dnll_hi"] - r["dnll_mean"]) if not pd.isna(r.get("dnll_hi")) else None
            points.append({
                "x": float(r["infer_ms_bB_median"]), "x_lo": float(r["infer_ms_bB_q1"]), "x_hi": float(r["infer_ms_bB_q3"]),
                "y": float(r["test_nll_mean"]), "y_lo": lo, "y_hi": hi, "label": r["method"],
                "hollow": render.still_improving(r["converged"]),
                "hover": {"method": r["method"], "seeds": int(r["seeds"]),
                          "test NLL": render.mean_std(r["test_nll_mean"], r.get("test_nll_std"), 2),
                          f"Δ vs {r['reference_method']}": interval,
                          "budget": f"{r['epochs']:.0f} epochs, {r['train_s']:.0f} s" + (
                              f" (deviates: {r['budget_note']})" if r["budget_deviates"] else ""),
                          "converged": render.converged(r),
                          "ms/ex @1": render.timing(r, "infer_ms_b1"),
                          "config": r.get("config") or ""}})
        series.append({"name": hardware or "unknown hardware", "points": points})
    truth = board[(board["dataset"] == dataset) & board["method"].eq(TRUE_MODEL)]
    batch = rows["timing_batch_size"].dropna()
    return {
        "id": f"pareto-{dataset}", "kind": "pareto", "title": f"{dataset}: test NLL vs inference time",
        "x_label": f"inference ms per example at batch {int(batch.iloc[0]) if len(batch) else '?'}",
        "y_label": "test NLL (nats)", "log_x": True, "series": series,
        "published": [{"y": p["value"], "label": p["label"], "x": None} for p in published],
        "reference_lines": [{"y": float(truth["test_nll_mean"].iloc[0]), "label": "true model NLL"}] if len(truth) else [],
    }


def write_page(out_dir: Path, board: pd.DataFrame, datasets: list[str], gap_tables: dict[str, list[dict]],
               published: dict[str, list[dict]], costs: dict | None, images: dict[str, list[dict]]) -> Path:
    sections = []
    for dataset in datasets:
        group = board[board["dataset"] == dataset].reset_index(drop=True)
        classes = [{"ok": "", "partial": "partial", "reference": "reference"}.get(s, s) or None for s in group["status"]]
        sections.append({
            "id": dataset, "title": dataset, "notes": [render.header(group)],
            "tables": [table_spec(f"leaderboard-{dataset}", f"{dataset}: leaderboard", render.display_table(group),
                                  group, render.footnotes(group), classes)] + gap_tables.get(dataset, []),
            "plots": [pareto_spec(board, dataset, published.get(dataset, []))],
            "images": images.get(dataset, []),
        })
    spec = {"title": "amortbench leaderboard", "sections": sections,
            "subtitle": "Every number follows the comparison protocol: one stated budget per dataset, paired "
                        "intervals on the same test points, timing interleaved with nothing else running."}
    if costs:
        spec["extra_tables"], spec["extra_title"] = [costs], "cost of this run"
    return write_site(spec, out_dir)
