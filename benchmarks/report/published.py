"""Published numbers beside reproduced ones.

config/published.csv holds the papers' tables as data: paper, table, dataset, setting, method, metric, value,
source (where the number was read), note. A dataset entry names its table with `report: {published: ...}`
(config.Published); the report then gives every leaderboard row the published value of its method and the
difference, and lists every published number of the table with the reproduced one (published.md).

A published metric is compared with the reproduced quantity of the same meaning:
* nll: test NLL (IS estimate);  nll_upper_bound: -ELBO;  ppl, bits_per_dim: as evaluated;
* log_px, elbo_q, elbo_qstar_ffg, elbo_qstar_flow / elbo_qstar_family, approximation_gap,
  amortization_gap, inference_gap: the gaps of the configured split, q* in the method's own family.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from ..provenance import REPO_ROOT

PUBLISHED_CSV = REPO_ROOT / "config" / "published.csv"
COLUMNS = ("paper", "table", "dataset", "setting", "method", "metric", "value", "source", "note")


def read_published(path: str | Path = PUBLISHED_CSV) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["value"] = float(row["value"])
    return rows


def published_rows(reference, rows: list[dict] | None = None) -> list[dict]:
    """The rows a `Published` reference selects; a reference that selects none is a ValueError listing the
    tables there are."""
    rows = read_published() if rows is None else rows
    settings = [reference.setting] if isinstance(reference.setting, str) else reference.setting
    chosen = [r for r in rows if r["paper"] == reference.paper and r["table"] == str(reference.table)
              and (reference.dataset is None or r["dataset"] == reference.dataset)
              and (settings is None or r["setting"] in settings)]
    if not chosen:
        tables = sorted({(r["paper"], r["table"], r["dataset"], r["setting"]) for r in rows})
        raise ValueError(f"no published rows for {reference.to_dict()}; (paper, table, dataset, setting) in "
                         f"{PUBLISHED_CSV.name}: {tables}")
    unknown = sorted({r["method"] for r in chosen} - set(reference.methods))
    if reference.methods and unknown:
        raise ValueError(f"published methods {unknown} have no suite method in `methods:` {reference.methods}")
    return chosen


def reproduced(metric: str, row, gaps: dict | None) -> float:
    """The reproduced value of a published metric for one leaderboard row (and its gap rows, if any)."""
    def value(column):
        v = row.get(column) if hasattr(row, "get") else None
        return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else math.nan

    if metric == "nll":
        return value("test_nll_mean")
    if metric == "nll_upper_bound":
        return -value("test_elbo_mean")
    if metric == "ppl":
        return value("ppl_mean")
    if metric == "bits_per_dim":
        return value("bpd_mean")
    if not gaps:
        return math.nan
    own, ffg = gaps.get("own"), gaps.get("ffg")
    gap_columns = {"log_px": "log p(x)", "elbo_q": "L[q]", "inference_gap": "inference gap",
                   "approximation_gap": "approximation gap", "amortization_gap": "amortization gap"}
    if metric in gap_columns:
        source = own if own is not None else ffg
        return float(source.get(f"{gap_columns[metric]} mean", math.nan)) if source is not None else math.nan
    if metric == "elbo_qstar_ffg":
        return float(ffg["L[q*] mean"]) if ffg is not None else math.nan
    if metric in ("elbo_qstar_flow", "elbo_qstar_family"):
        return float(own["L[q*] mean"]) if own is not None and own.get("own_family") else math.nan
    return math.nan


PRIMARY = ("nll", "nll_upper_bound", "log_px", "ppl", "bits_per_dim")


def compare(board, gaps, references: dict, rows: list[dict]):
    """Fill the leaderboard's published columns and return the table of every published number beside the
    reproduced one (a pandas DataFrame; empty if no dataset names a published table)."""
    import pandas as pd

    out = []
    for dataset, reference in references.items():
        chosen = published_rows(reference, rows)
        for published in chosen:
            method = reference.methods.get(published["method"], published["method"])
            match = board[(board["dataset"] == dataset) & (board["method"] == method)]
            row = match.iloc[0] if len(match) else {}
            gap_rows = {}
            if gaps is not None and not gaps.empty:
                mine = gaps[(gaps["dataset"] == dataset) & (gaps["method"] == method) & (gaps["split"] == reference.split)]
                for _, g in mine.iterrows():
                    gap_rows["own" if g["own_family"] else "ffg"] = g
                if "own" not in gap_rows and "ffg" in gap_rows and str(gap_rows["ffg"]["q_star_family"]).endswith("(= own family)"):
                    gap_rows["own"] = gap_rows["ffg"]
            value = reproduced(published["metric"], row, gap_rows)
            out.append({"dataset": dataset, "paper": published["paper"], "table": published["table"],
                        "paper dataset": published["dataset"], "setting": published["setting"],
                        "paper method": published["method"], "method": method, "metric": published["metric"],
                        "published": published["value"], "reproduced": value,
                        "Δ (reproduced - published)": value - published["value"],
                        "comparable": reference.comparable, "why not comparable": reference.why_not_comparable,
                        "source": published["source"], "note": published["note"]})
    table = pd.DataFrame(out)
    for column in ("published_metric", "published_comparable"):
        board[column] = board[column].astype(object)
    for index, row in board.iterrows():
        if table.empty:
            break
        mine = table[(table["dataset"] == row["dataset"]) & (table["method"] == row["method"])]
        for metric in PRIMARY:
            hit = mine[mine["metric"] == metric]
            if len(hit):
                board.loc[index, ["published", "published_metric", "d_published", "published_comparable"]] = [
                    hit["published"].iloc[0], metric, hit["Δ (reproduced - published)"].iloc[0],
                    bool(hit["comparable"].iloc[0])]
                break
    return table
