"""Static figures for papers: Pareto plots, training curves, inference-gap bars (PNG)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .leaderboard import TRUE_MODEL  # noqa: E402
from .render import still_improving  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def pareto_front(times: list[float], nlls: list[float]) -> list[int]:
    """Indices of the points that no other point beats in both time and NLL (no worse in both, better in
    one), sorted by time."""
    points = list(zip(times, nlls))

    def dominated(i: int) -> bool:
        t, v = points[i]
        return any(t2 <= t and v2 <= v and (t2 < t or v2 < v) for t2, v2 in points)

    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: points[i])


def pareto_plot(board: pd.DataFrame, dataset: str, path: Path, published: list[dict] | None = None) -> Path:
    """Test NLL against inference time per example (log x): x bars the IQR over timing rounds, y bars
    the paired 95% interval of the difference to the reference method; hollow markers: not converged.
    One front per timing hardware (timings from different machines are never mixed)."""
    rows = board[(board["dataset"] == dataset) & board["status"].isin(["ok", "partial"])]
    rows = rows.dropna(subset=["test_nll_mean", "infer_ms_bB_median"])
    fig, ax = plt.subplots(figsize=(6.6, 4.6), dpi=120)
    for color, (hardware, group) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"],
                                        rows.groupby("timing_hardware", sort=True)):
        times, nlls = list(group["infer_ms_bB_median"]), list(group["test_nll_mean"])
        xerr = [np.subtract(times, group["infer_ms_bB_q1"]), np.subtract(group["infer_ms_bB_q3"], times)]
        lo = (group["dnll_mean"] - group["dnll_lo"]).fillna(0.0) if "dnll_lo" in group else 0 * group["test_nll_mean"]
        hi = (group["dnll_hi"] - group["dnll_mean"]).fillna(0.0) if "dnll_hi" in group else 0 * group["test_nll_mean"]
        ax.errorbar(times, nlls, xerr=xerr, yerr=[lo, hi], fmt="none", ecolor="tab:gray", capsize=3, lw=1)
        converged = ~group["converged"].map(still_improving).to_numpy(dtype=bool)  # hollow: still improving
        ax.scatter(np.array(times)[converged], np.array(nlls)[converged], color=color, zorder=3,
                   label=f"{hardware}" if hardware else None)
        ax.scatter(np.array(times)[~converged], np.array(nlls)[~converged], facecolors="white",
                   edgecolors=color, zorder=3, label="not converged" if (~converged).any() else None)
        for t, v, name in zip(times, nlls, group["method"]):
            ax.annotate(name, (t, v), textcoords="offset points", xytext=(5, 5), fontsize=9)
        front = pareto_front(times, nlls)
        if front:
            ax.step([times[i] for i in front], [nlls[i] for i in front], where="post", color=color, alpha=0.6,
                    label="Pareto front")
    truth = board[(board["dataset"] == dataset) & board["method"].eq(TRUE_MODEL)]
    if len(truth):
        ax.axhline(float(truth["test_nll_mean"].iloc[0]), ls="--", color="k", lw=1, label="true model NLL")
    for item in published or []:
        ax.axhline(item["value"], ls=":", color="tab:purple", lw=1)
        ax.annotate(f"{item['label']} (published)", (0.01, item["value"]), xycoords=("axes fraction", "data"),
                    fontsize=7, color="tab:purple", va="bottom")
    if len(rows):
        ax.set_xscale("log")
    batch = rows["timing_batch_size"].dropna()
    ax.set_xlabel(f"inference ms per example at batch {int(batch.iloc[0]) if len(batch) else '?'} (log)")
    ax.set_ylabel("test NLL (nats, IS estimate)")
    ax.set_title(f"{dataset}: test NLL vs inference time", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def training_curves(histories: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Validation ELBO per epoch, one line per run label (method / seed)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, rows in sorted(histories.items()):
        rows = [r for r in rows if r.get("valid_elbo") is not None and math.isfinite(r["valid_elbo"])]
        if rows:
            ax.plot([int(r["epoch"]) for r in rows], [float(r["valid_elbo"]) for r in rows], label=label, lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation ELBO (nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if histories:
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def gaps_plot(table: pd.DataFrame, dataset: str, path: Path) -> Path:
    """Approximation and amortization (or optimization) gaps per method, side by side, negative values
    drawn below zero; hatched bars: q* from the method's own family instead of the diagonal Gaussian."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    labels = [f"{m}\n({'own' if own else 'FFG'})" for m, own in zip(table["method"], table["own_family"])]
    x = np.arange(len(table))
    approx = table["approximation gap mean"].to_numpy(float)
    second = np.where(table["amortized"].to_numpy(bool), table["amortization gap mean"].to_numpy(float),
                      table["optimization gap mean"].to_numpy(float))
    hatches = ["//" if own else None for own in table["own_family"]]
    colors = ["tab:orange" if amortized else "tab:green" for amortized in table["amortized"]]
    for i in range(len(table)):
        ax.bar(x[i] - 0.2, approx[i], 0.4, color="tab:blue", hatch=hatches[i])
        ax.bar(x[i] + 0.2, second[i], 0.4, color=colors[i], hatch=hatches[i])
    legend = [Patch(color="tab:blue", label="approximation gap"), Patch(color="tab:orange", label="amortization gap")]
    if not table["amortized"].all():
        legend.append(Patch(color="tab:green", label="optimization gap (no encoder)"))
    if table["own_family"].any():
        legend.append(Patch(facecolor="white", edgecolor="k", hatch="//", label="q* in the method's own family"))
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("nats per datapoint")
    split = table["split"].iloc[0]
    ax.set_title(f"{dataset} ({split} subset): q* = best diagonal Gaussian (FFG) or, hatched, the method's own family",
                 fontsize=8)
    ax.legend(handles=legend, fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
