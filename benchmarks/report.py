"""Reports: merge every metrics.json into one long table, then leaderboards and Pareto plots.

* ``metrics_long.{csv,parquet}``: one row per (dataset, method, seed, metric) with provenance columns.
* ``leaderboard.{md,csv,tex,parquet}``: per dataset, rows = methods; test NLL mean ± std over seeds
  (n seeds shown), ELBO, KL, active units, inference ms/example, train time, parameters. Cells the
  config expects but that have no result are listed as missing; a known true NLL is a row of its own.
* ``pareto_<dataset>.png``: test NLL against inference time per example (log x), the Pareto front drawn.
* ``curves_<dataset>.png``: validation ELBO per epoch of every run.
* ``index.html``: one self-contained page with all of the above (images embedded), for a browser.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tabulate import tabulate  # noqa: E402

from .errors import DataError  # noqa: E402
from .io import atomic_path, write_text  # noqa: E402

TRUE_MODEL = "(true model)"
PROVENANCE_COLUMNS = ["git_commit", "device_name", "date", "config_hash", "torch"]
LEADERBOARD_METRICS = {  # column -> (metric, aggregation shown)
    "test_nll": "test_nll",
    "test_elbo": "test_elbo",
    "test_kl": "test_kl",
    "active_units": "active_units",
    "infer_ms": "infer_ms_per_example",
    "train_s": "train_seconds",
    "params_inference": "params_inference",
    "exact_nll": "exact_nll",
    "ppl": "test_ppl",
    "bpd": "test_bits_per_dim",
}


def read_metrics(paths: Iterable[str | Path]) -> list[dict]:
    records = []
    for path in paths:
        try:
            records.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read results file {path}: {exc}; rerun its evaluate job") from None
    return records


def long_table(records: list[dict]) -> pd.DataFrame:
    """One row per (dataset, method, seed, metric) with provenance."""
    rows = []
    for rec in records:
        prov = rec.get("provenance", {})
        base = {
            "dataset": rec["dataset"],
            "method": rec["method"],
            "seed": rec["seed"],
            "notes": rec.get("notes", ""),
            "git_commit": prov.get("git_commit"),
            "device_name": prov.get("device_name"),
            "date": prov.get("date"),
            "config_hash": prov.get("config_hash"),
            "torch": prov.get("versions", {}).get("torch"),
        }
        for metric, value in rec["metrics"].items():
            rows.append({**base, "metric": metric, "value": float(value)})
    columns = ["dataset", "method", "seed", "metric", "value", "notes", *PROVENANCE_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def leaderboard(long: pd.DataFrame, expected: list[tuple[str, str, int]] | None = None) -> pd.DataFrame:
    """Numeric leaderboard: one row per (dataset, method), means and stds over seeds."""
    rows = []
    wide = long.pivot_table(index=["dataset", "method", "seed"], columns="metric", values="value")
    for (dataset, method), group in wide.groupby(level=["dataset", "method"]):
        row = {"dataset": dataset, "method": method, "seeds": len(group), "status": "ok"}
        for column, metric in LEADERBOARD_METRICS.items():
            if metric in group:
                values = group[metric].dropna()
                row[f"{column}_mean"] = values.mean() if len(values) else float("nan")
                row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        for metric in ("is_samples", "timing_batch_size", "true_nll"):
            if metric in group:
                row[metric] = group[metric].iloc[0]
        rows.append(row)
    board = pd.DataFrame(rows)
    present = {(r["dataset"], r["method"]) for r in rows}
    missing_rows = []
    for dataset, method, _seed in expected or []:
        if (dataset, method) not in present:
            present.add((dataset, method))
            missing_rows.append({"dataset": dataset, "method": method, "seeds": 0, "status": "missing"})
    if missing_rows:
        board = pd.concat([board, pd.DataFrame(missing_rows)], ignore_index=True)
    if board.empty:
        return board
    if "true_nll" in board:
        truths = board.dropna(subset=["true_nll"]).groupby("dataset")["true_nll"].first()
        extra = [{"dataset": d, "method": TRUE_MODEL, "seeds": 0, "status": "reference",
                  "test_nll_mean": v} for d, v in truths.items()]
        board = pd.concat([board, pd.DataFrame(extra)], ignore_index=True)
    board["_order"] = board["method"].eq(TRUE_MODEL).astype(int)
    board = board.sort_values(["dataset", "_order", "test_nll_mean"], na_position="last")
    return board.drop(columns="_order").reset_index(drop=True)


def _fmt(mean, std, digits: int) -> str:
    if pd.isna(mean):
        return "—"
    text = f"{mean:.{digits}f}"
    return text if pd.isna(std) else f"{text} ± {std:.{digits}f}"


def display_table(board: pd.DataFrame) -> pd.DataFrame:
    """Human-readable leaderboard (strings) for Markdown and LaTeX."""
    out = pd.DataFrame()
    out["method"] = board["method"]
    out["test NLL"] = [_fmt(m, s, 2) for m, s in zip(board["test_nll_mean"], board.get("test_nll_std"))]
    out["seeds"] = board["seeds"].astype(int)
    spec = [("ELBO", "test_elbo", 2), ("KL", "test_kl", 2), ("AU", "active_units", 1),
            ("infer ms/ex", "infer_ms", 4), ("train s", "train_s", 1), ("exact NLL", "exact_nll", 2),
            ("PPL", "ppl", 2), ("bits/dim", "bpd", 3)]
    for title, column, digits in spec:
        if f"{column}_mean" in board and board[f"{column}_mean"].notna().any():
            out[title] = [_fmt(m, s, digits) for m, s in zip(board[f"{column}_mean"], board.get(f"{column}_std"))]
    if "params_inference_mean" in board:
        out["inference params"] = [
            "—" if pd.isna(v) else f"{int(v):,}" for v in board["params_inference_mean"]
        ]
    out.loc[board["status"].eq("missing").values, "test NLL"] = "missing"
    return out


def write_leaderboard(board: pd.DataFrame, long: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"leaderboard.{ext}" for ext in ("md", "csv", "tex", "parquet")}
    sections, latex = ["# amortbench leaderboard", ""], []
    for dataset, group in board.groupby("dataset", sort=True):
        shown = display_table(group)
        info = _dataset_info(group, long, dataset)
        sections += [f"## {dataset}", "", info, "", tabulate(shown, headers="keys", tablefmt="github",
                                                             showindex=False), ""]
        latex.append(
            shown.to_latex(index=False, caption=f"{dataset}: {info}", label=f"tab:{dataset}",
                           escape=True)
        )
    write_text(paths["md"], "\n".join(sections))
    write_text(paths["tex"], "\n".join(latex))
    with atomic_path(paths["csv"]) as tmp:
        board.to_csv(tmp, index=False)
    with atomic_path(paths["parquet"]) as tmp:
        board.to_parquet(tmp, index=False)
    with atomic_path(out_dir / "metrics_long.csv") as tmp:
        long.to_csv(tmp, index=False)
    with atomic_path(out_dir / "metrics_long.parquet") as tmp:
        long.to_parquet(tmp, index=False)
    return paths


def _dataset_info(group: pd.DataFrame, long: pd.DataFrame, dataset: str) -> str:
    sub = long[long["dataset"] == dataset]
    parts = []
    if "is_samples" in group and group["is_samples"].notna().any():
        parts.append(f"test NLL by importance sampling with S = {int(group['is_samples'].dropna().iloc[0])}")
    if "timing_batch_size" in group and group["timing_batch_size"].notna().any():
        parts.append(f"inference time at batch {int(group['timing_batch_size'].dropna().iloc[0])}")
    devices = sorted(sub["device_name"].dropna().unique())
    if devices:
        parts.append("on " + "; ".join(devices))
    commits = sorted(sub["git_commit"].dropna().unique())
    if commits:
        parts.append("commit " + ", ".join(c[:12] for c in commits))
    return "Nats per datapoint, mean ± std over seeds; " + ", ".join(parts) + "."


def pareto_front(times: list[float], nlls: list[float]) -> list[int]:
    """Indices of points no other point beats in both time and NLL, sorted by time."""
    order = sorted(range(len(times)), key=lambda i: (times[i], nlls[i]))
    front, best = [], float("inf")
    for i in order:
        if nlls[i] < best:
            front.append(i)
            best = nlls[i]
    return front


def pareto_plot(board: pd.DataFrame, dataset: str, path: Path) -> Path:
    group = board[(board["dataset"] == dataset) & board["status"].eq("ok")].dropna(
        subset=["test_nll_mean", "infer_ms_mean"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    times, nlls = list(group["infer_ms_mean"]), list(group["test_nll_mean"])
    stds = group.get("test_nll_std", pd.Series([float("nan")] * len(group))).fillna(0.0)
    ax.errorbar(times, nlls, yerr=list(stds), fmt="o", color="tab:blue", ecolor="tab:gray", capsize=3)
    for t, v, name in zip(times, nlls, group["method"]):
        ax.annotate(name, (t, v), textcoords="offset points", xytext=(5, 5), fontsize=9)
    front = pareto_front(times, nlls)
    if front:
        ax.step([times[i] for i in front], [nlls[i] for i in front], where="post", color="tab:red",
                label="Pareto front")
    truth = board[(board["dataset"] == dataset) & board["method"].eq(TRUE_MODEL)]
    if len(truth):
        ax.axhline(float(truth["test_nll_mean"].iloc[0]), ls="--", color="k", lw=1, label="true model NLL")
    ax.set_xscale("log")
    ax.set_xlabel("inference time per example (ms, log scale)")
    ax.set_ylabel("test NLL (nats, IS estimate)")
    ax.set_title(f"{dataset}: test NLL vs inference time")
    ax.grid(True, which="both", alpha=0.3)
    if front or len(truth):
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_html(board: pd.DataFrame, long: pd.DataFrame, out_dir: Path, datasets: list[str],
               gaps: pd.DataFrame | None = None) -> Path:
    """index.html: leaderboards and figures of every dataset, PNGs embedded as data URIs."""
    import base64
    import html

    def image(path: Path, alt: str) -> str:
        if not path.exists():
            return ""
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>amortbench leaderboard</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;"
             "margin:1em 0} td,th{border:1px solid #bbb;padding:4px 8px;text-align:right} "
             "td:first-child,th:first-child{text-align:left} img{max-width:48%;margin:4px}</style></head><body>",
             "<h1>amortbench leaderboard</h1>"]
    for dataset in datasets:
        group = board[board["dataset"] == dataset]
        parts.append(f"<h2 id='{html.escape(dataset)}'>{html.escape(dataset)}</h2>")
        parts.append(f"<p>{html.escape(_dataset_info(group, long, dataset))}</p>")
        parts.append(display_table(group).to_html(index=False, classes="leaderboard", escape=True, border=0))
        parts.append(image(out_dir / f"pareto_{dataset}.png", f"Pareto plot {dataset}"))
        parts.append(image(out_dir / f"curves_{dataset}.png", f"training curves {dataset}"))
        if gaps is not None and not gaps.empty and (gaps["dataset"] == dataset).any():
            for split, group in gaps[gaps["dataset"] == dataset].groupby("split"):
                shown = pd.DataFrame({"method": group["method"]})
                for title in GAP_COLUMNS:
                    shown[title] = [_fmt(m, e, 2) for m, e in zip(group[f"{title} mean"], group[f"{title} sem"])]
                parts.append(f"<h3>Inference gaps, {html.escape(split)} points (nats, mean ± s.e.)</h3>")
                parts.append(shown.to_html(index=False, classes="gaps", escape=True, border=0))
            parts.append(image(out_dir / f"gaps_{dataset}.png", f"inference gaps {dataset}"))
    parts.append("</body></html>")
    path = out_dir / "index.html"
    write_text(path, "\n".join(parts))
    return path


GAP_COLUMNS = {  # column title -> per-point quantity in gaps.json
    "L[q]": "elbo_q",
    "L[q*]": "elbo_qstar_ffg",
    "log p(x)": "log_px",
    "approximation gap": "approximation_gap_ffg",
    "amortization gap": "amortization_gap_ffg",
    "inference gap": "inference_gap",
}


def gaps_table(gap_files: list[str | Path]) -> pd.DataFrame:
    """One row per (dataset, method, split): each quantity's mean over points and its standard error.

    Several seeds: the mean of the per-seed means, with standard error sqrt(sum sem^2) / n_seeds."""
    rows = []
    for rec in read_metrics(gap_files):
        for split, result in rec["splits"].items():
            row = {"dataset": rec["dataset"], "method": rec["method"], "seed": rec["seed"], "split": split,
                   "points": result["n_points"], "log_px_source": result["log_px_source"]}
            for title, key in GAP_COLUMNS.items():
                stats = result["metrics"].get(key, {"mean": float("nan"), "sem": float("nan")})
                row[f"{title} mean"], row[f"{title} sem"] = stats["mean"], stats["sem"]
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    aggregated = []
    for (dataset, method, split), group in frame.groupby(["dataset", "method", "split"]):
        row = {"dataset": dataset, "method": method, "split": split, "seeds": len(group),
               "points": int(group["points"].iloc[0])}
        for title in GAP_COLUMNS:
            row[f"{title} mean"] = group[f"{title} mean"].mean()
            row[f"{title} sem"] = (group[f"{title} sem"] ** 2).sum() ** 0.5 / len(group)
        aggregated.append(row)
    return pd.DataFrame(aggregated).sort_values(["dataset", "split", "inference gap mean"])


def write_gaps(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """gaps.{md,csv,tex} (one section per dataset and split) and gaps_<dataset>.png (test split)."""
    sections, latex = ["# Inference gaps (nats, mean ± s.e. over points)", ""], []
    for (dataset, split), group in table.groupby(["dataset", "split"], sort=True):
        shown = pd.DataFrame({"method": group["method"], "seeds": group["seeds"], "points": group["points"]})
        for title in GAP_COLUMNS:
            shown[title] = [_fmt(m, e, 2) for m, e in zip(group[f"{title} mean"], group[f"{title} sem"])]
        caption = f"{dataset}, {split} points: q* = best diagonal Gaussian per datapoint"
        sections += [f"## {dataset} ({split})", "", tabulate(shown, headers="keys", tablefmt="github",
                                                             showindex=False), ""]
        latex.append(shown.to_latex(index=False, caption=caption, label=f"tab:gaps-{dataset}-{split}"))
    paths = [out_dir / "gaps.md", out_dir / "gaps.tex", out_dir / "gaps.csv"]
    write_text(paths[0], "\n".join(sections))
    write_text(paths[1], "\n".join(latex))
    with atomic_path(paths[2]) as tmp:
        table.to_csv(tmp, index=False)
    for dataset, group in table.groupby("dataset"):
        test = group[group["split"] == "test"] if (group["split"] == "test").any() else group
        paths.append(gaps_plot(test, dataset, out_dir / f"gaps_{dataset}.png"))
    return paths


def gaps_plot(group: pd.DataFrame, dataset: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    methods = list(group["method"])
    approx = group["approximation gap mean"].clip(lower=0).to_numpy()
    amort = group["amortization gap mean"].clip(lower=0).to_numpy()
    ax.bar(methods, approx, label="approximation gap", color="tab:blue")
    ax.bar(methods, amort, bottom=approx, label="amortization gap", color="tab:orange")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(f"{dataset}: inference gap = approximation + amortization ({group['split'].iloc[0]})")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def build_report(metric_files: list[str | Path], out_dir: str | Path,
                 expected: list[dict] | None = None,
                 gap_files: list[str | Path] | None = None) -> pd.DataFrame:
    """Merge results; write the leaderboard files, Pareto plots, training curves, gap tables and
    plots (if gaps ran) and index.html. `expected`: the cells of the config (expected.json)."""
    out_dir = Path(out_dir)
    records = read_metrics(metric_files)
    long = long_table(records)
    board = leaderboard(long, [(c["dataset"], c["method"], c["seed"]) for c in expected or []])
    write_leaderboard(board, long, out_dir)
    datasets = sorted(set(board["dataset"])) if len(board) else []
    for dataset in datasets:
        pareto_plot(board, dataset, out_dir / f"pareto_{dataset}.png")
        curves = {f"{r['method']} / seed{r['seed']}": r.get("history") or [] for r in records
                  if r["dataset"] == dataset}
        training_curves(curves, out_dir / f"curves_{dataset}.png", f"{dataset}: validation ELBO")
    gaps = gaps_table(gap_files or [])
    if not gaps.empty:
        write_gaps(gaps, out_dir)
    write_html(board, long, out_dir, datasets, gaps)
    write_environment(long, out_dir / "ENVIRONMENT.md")
    return board


def write_environment(long: pd.DataFrame, path: Path) -> Path:
    """What produced the numbers: each distinct (commit, device, torch) with the runs it covers."""
    runs = long.drop_duplicates(["dataset", "method", "seed"])
    groups = runs.groupby(["git_commit", "device_name", "torch"], dropna=False)
    rows = [{"git commit": c, "device": d, "torch": t, "runs": len(g),
             "first": g["date"].min(), "last": g["date"].max()} for (c, d, t), g in groups]
    text = "# Environment of the results\n\n" + tabulate(pd.DataFrame(rows), headers="keys", tablefmt="github",
                                                           showindex=False) + "\n"
    write_text(path, text)
    return path


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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
