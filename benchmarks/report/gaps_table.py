"""The inference-gap tables: per (dataset, method, split) and q* family, means ± s.e. over the points.

Each method gets a row with q* = the best diagonal Gaussian per point (FFG, Cremer et al.'s q*_FFG)
and, where its own family is richer and `gaps.family` is on, a row with q* from that family. A method
without an encoder (svi) has no amortization gap: L[q*] - L[q] is then its optimization gap (its K SVI
steps against a converged per-point optimization), in a column of its own. Beside L[q] on the gap points
the table shows the evaluation's ELBO on the same points and on all test points, so it says how
representative the subset is; and the local optimizer's diagnostics: the share of points stopped by the
rule rather than by max_steps, and which estimate gave log p(x).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from .collect import Results

QUANTITIES = {  # column title -> (FFG key, own-family key) of the per-point quantities in gaps.json
    "L[q]": ("elbo_q", "elbo_q"),
    "L[q*]": ("elbo_qstar_ffg", "elbo_qstar_family"),
    "log p(x)": ("log_px", "log_px"),
    "approximation gap": ("approximation_gap_ffg", "approximation_gap_family"),
    "q* - q gap": ("amortization_gap_ffg", "amortization_gap_family"),
    "inference gap": ("inference_gap", "inference_gap"),
}
SOURCES = {"log_px_ais": "AIS", "log_px_iwae_q": "IWAE with q", "log_px_iwae_qstar_ffg": "IWAE with q*_FFG"}


def build(results: Results) -> pd.DataFrame:
    per_seed = []
    for cell in results.cells:
        if cell.gaps is None:
            continue
        for split, result in cell.gaps["splits"].items():
            families = result.get("families", {"ffg": "diagonal Gaussian"})
            variants = [("ffg", False)] + ([("family", True)] if "elbo_qstar_family" in result["metrics"] else [])
            for variant, own in variants:
                index = 1 if own else 0
                row = {"dataset": cell.expected["dataset"], "method": cell.expected["method"],
                       "seed": cell.expected["seed"], "split": split, "points": result["n_points"],
                       "q_star_family": families["family" if own else "ffg"] + (
                           "" if own or families.get("family", families["ffg"]) != families["ffg"] else
                           " (= own family)"),
                       "own_family": own, "amortized": result.get("amortized", True),
                       "log_px_source": SOURCES.get(result["log_px_source"], result["log_px_source"]),
                       "stopped_by_rule": result.get("diagnostics", {}).get(f"stopped_by_rule_{variant}", np.nan)}
                for title, keys in QUANTITIES.items():
                    stats = result["metrics"].get(keys[index], {"mean": np.nan, "sem": np.nan})
                    row[f"{title} mean"], row[f"{title} sem"] = stats["mean"], stats["sem"]
                if split == "test" and cell.elbo is not None and "indices" in result \
                        and max(result["indices"], default=0) < len(cell.elbo):
                    row["ELBO subset (eval)"] = float(np.mean(cell.elbo[result["indices"]]))
                    row["ELBO all test (eval)"] = float(np.mean(cell.elbo))
                per_seed.append(row)
    frame = pd.DataFrame(per_seed)
    if frame.empty:
        return frame
    out = []
    keys = ["dataset", "method", "split", "own_family"]
    for key, group in frame.groupby(keys, sort=True):
        row = dict(zip(keys, key))
        first = group.iloc[0]
        row.update(seeds=len(group), points=int(first["points"]), q_star_family=first["q_star_family"],
                   amortized=bool(first["amortized"]), log_px_source=", ".join(sorted(set(group["log_px_source"]))),
                   stopped_by_rule=float(group["stopped_by_rule"].mean()))
        for title in QUANTITIES:
            row[f"{title} mean"] = group[f"{title} mean"].mean()
            row[f"{title} sem"] = float(np.sqrt((group[f"{title} sem"] ** 2).sum()) / len(group))
        for column in ("ELBO subset (eval)", "ELBO all test (eval)"):
            if column in group:
                row[column] = group[column].mean()
        out.append(row)
    table = pd.DataFrame(out)
    gap = table.pop("q* - q gap mean"), table.pop("q* - q gap sem")
    for name in ("amortization gap", "optimization gap"):
        keep = table["amortized"] if name == "amortization gap" else ~table["amortized"]
        table[f"{name} mean"] = gap[0].where(keep)
        table[f"{name} sem"] = gap[1].where(keep)
    return table.sort_values(["dataset", "split", "method", "own_family"]).reset_index(drop=True)
