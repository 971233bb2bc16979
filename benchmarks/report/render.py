"""Human-readable leaderboards: the rows of leaderboard.py as text, with the header and footnotes that the
comparison protocol asks every format to carry (budget policy, estimator, intervals, timing protocol)."""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from .leaderboard import TRUE_MODEL

BUDGET_MARK = "†"
CONVERGENCE_MARK = "‡"


def _num(value, digits: int, signed: bool = False) -> Optional[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mean_std(mean, std, digits: int) -> str:
    text = _num(mean, digits)
    if text is None:
        return "—"
    std_text = _num(std, digits)
    return text if std_text is None else f"{text} ± {std_text}"


def interval(row: pd.Series) -> str:
    if row.get("dnll_over") == "reference":
        return "(reference)"
    if pd.isna(row.get("dnll_mean")):
        return "—"
    text = f"{row['dnll_mean']:+.2f} [{row['dnll_lo']:+.2f}, {row['dnll_hi']:+.2f}]"
    return text if row.get("dnll_significant") else text + " n.s."


def timing(row: pd.Series, prefix: str) -> str:
    median = row.get(f"{prefix}_median")
    if median is None or pd.isna(median):
        return "—"
    digits = 4 if median < 1 else 2
    return f"{median:.{digits}f} [{row[f'{prefix}_q1']:.{digits}f}–{row[f'{prefix}_q3']:.{digits}f}]"


def still_improving(value) -> bool:
    """A row's ``converged`` value is a definite no (None / NaN: not applicable, nothing was trained)."""
    return value is not None and not pd.isna(value) and not bool(value)


def converged(row: pd.Series) -> str:
    if row.get("converged") is None or pd.isna(row.get("converged")):
        return "—"
    if bool(row["converged"]):
        return "yes"
    gain = row.get("convergence_gain")
    return f"no{CONVERGENCE_MARK} (+{gain:.2f})" if gain is not None and not pd.isna(gain) else f"no{CONVERGENCE_MARK}"


def display_table(board: pd.DataFrame) -> pd.DataFrame:
    """The rows of one dataset as strings (Markdown, LaTeX and html show the same table)."""
    out = pd.DataFrame({"method": board["method"]})
    ok = board["status"].isin(["ok", "partial", "reference"])
    out["test NLL"] = [mean_std(m, s, 2) if k else status for m, s, k, status in
                       zip(board["test_nll_mean"], board.get("test_nll_std"), ok, board["status"])]
    reference = board["reference_method"].dropna().iloc[0] if board["reference_method"].notna().any() else "avi"
    out[f"Δ NLL vs {reference}"] = [interval(row) for _, row in board.iterrows()]
    out["seeds"] = [f"{int(s)}/{int(e)}" if not pd.isna(e) else "" for s, e in
                    zip(board["seeds"], board.get("seeds_expected", board["seeds"]))]
    spec = [("ELBO", "test_elbo", 2), ("KL", "test_kl", 2), ("AU", "active_units", 1),
            ("exact NLL", "exact_nll", 2), ("PPL", "ppl", 2), ("bits/dim", "bpd", 3)]
    for title, column, digits in spec:
        if f"{column}_mean" in board and board[f"{column}_mean"].notna().any():
            out[title] = [mean_std(m, s, digits) for m, s in zip(board[f"{column}_mean"], board.get(f"{column}_std"))]
    batch = board["timing_batch_size"].dropna()
    batch_label = f"{int(batch.iloc[0])}" if len(batch) else "B"
    out["ms/ex @1 [IQR]"] = [timing(row, "infer_ms_b1") for _, row in board.iterrows()]
    out[f"ms/ex @{batch_label} [IQR]"] = [timing(row, "infer_ms_bB") for _, row in board.iterrows()]
    out["epochs"] = [("—" if pd.isna(e) else f"{e:.0f}") + (BUDGET_MARK if d is True else "")
                     for e, d in zip(board["epochs"], board["budget_deviates"])]
    out["decoder updates"] = ["—" if pd.isna(v) else f"{v:,.0f}" for v in board["decoder_updates"]]
    out["train s"] = ["—" if pd.isna(v) else f"{v:.1f}" for v in board["train_s"]]
    out["converged"] = [converged(row) for _, row in board.iterrows()]
    if board["published"].notna().any():
        out["published"] = ["" if pd.isna(v) else f"{v:.2f} ({m})" for v, m in
                            zip(board["published"], board["published_metric"])]
        out["Δ published"] = ["" if pd.isna(d) else f"{d:+.2f}" + ("" if c is True else " (not comparable)")
                               for d, c in zip(board["d_published"], board["published_comparable"])]
    if "params_inference_mean" in board:
        out["inference params"] = ["—" if pd.isna(v) else f"{int(v):,}" for v in board["params_inference_mean"]]
    for title in list(out.columns)[1:]:  # the true model's row shows only its NLL
        if title != "test NLL":
            out.loc[board["method"].eq(TRUE_MODEL).values, title] = ""
    return out


def header(board: pd.DataFrame) -> str:
    """What every table of a dataset states: budget policy, estimator, pairing, timing protocol."""
    rows = board[~board["method"].eq(TRUE_MODEL)]
    parts = []
    policies = rows["budget_policy"].dropna().unique()
    if len(policies):
        parts.append(f"Budget policy: {policies[0]} per method (rows marked {BUDGET_MARK} differ).")
    samples, points = rows["is_samples"].dropna(), rows["n_test"].dropna()
    if len(samples):
        parts.append(f"Test NLL in nats per datapoint, importance sampling with S = {int(samples.iloc[0])} samples "
                     f"on {int(points.iloc[0])} test points; mean ± std over seeds.")
    reference = rows["reference_method"].dropna()
    over = rows["dnll_over"].dropna() if "dnll_over" in rows else pd.Series(dtype=str)
    if len(reference):
        spread = {"points": "over test points (one seed)", "seeds": "over seeds"}.get(
            over.iloc[0] if len(over) else "", "over test points, or over seeds when there are several")
        parts.append(f"Δ: paired difference to {reference.iloc[0]} on the same test points, 95% interval {spread}; "
                     "n.s.: the interval covers zero (no ranking).")
    hardware = rows["timing_hardware"].dropna()
    hardware = [h for h in hardware if h]
    if hardware:
        parts.append(f"Inference time per example (posterior + one sample), median [IQR] over interleaved rounds "
                     f"with nothing else running, on {'; '.join(sorted(set(hardware)))}.")
    parts.append(f"Converged: validation ELBO gain over the last epochs within tolerance ({CONVERGENCE_MARK} still "
                 "improving: the gain is shown).")
    sources = sorted({s for s in rows["data_source"].dropna() if s})
    if sources:
        parts.append(f"Data: {'; '.join(sources)}.")
    if rows["published"].notna().any():
        parts.append("Published: the paper's number for the method (metric in brackets; nll_upper_bound is -ELBO), "
                     "Δ = reproduced - published; every published number of the table is in published.md.")
    return " ".join(parts)


def footnotes(board: pd.DataFrame) -> list[str]:
    notes = [f"{BUDGET_MARK} {m}: {n}" for m, n, d in zip(board["method"], board["budget_note"], board["budget_deviates"])
             if d is True and n]
    notes += [f"{m}: {s} ({n})" for m, s, n in zip(board["method"], board["status"], board["status_note"])
              if s in ("stale", "missing", "partial", "conflict") and n]
    notes += [f"{m}: timing {n}" for m, n in zip(board["method"], board.get("timing_note", []))
              if isinstance(n, str) and n]
    return notes
