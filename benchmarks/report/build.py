"""Write a run's reports: check every result against the current config, then leaderboards, gap tables,
plots and pages.

``build_report(manifest, out_dir)`` reads the manifest the Snakefile writes (results/expected.json: the
expected cells, their hashes and result files, the per-dataset timing files, the job cost files) and
writes, all or nothing (into a staging folder, moved into place at the end):

* leaderboard.{md,csv,tex,parquet}: one row per (dataset, method), see leaderboard.py and render.py;
  metrics_long.{csv,parquet}: one row per (dataset, method, seed, metric) with provenance columns;
* pareto_<dataset>.png, curves_<dataset>.png; gaps.{md,csv,tex} and gaps_<dataset>.png when gaps ran;
* costs.{md,csv}: the per-stage cost of the run; ENVIRONMENT.md: what produced the numbers;
* index.html (+ plotly.min.js): the interactive page (sortable tables, Pareto plots with hover).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from ..io import atomic_path, write_text
from . import costs as cost_tables
from . import gaps_table, leaderboard, plots, render
from .collect import Results, collect
from .config import ReportConfig
from .page import table_spec, write_page
from .published import PUBLISHED_CSV, compare, read_published

__all__ = ["build_report", "collect"]
REPORT_FILES = ("leaderboard.*", "metrics_long.*", "pareto_*.png", "curves_*.png", "gaps.*", "gaps_*.png",
                "costs.*", "published.*", "ENVIRONMENT.md", "index.html")
GAP_COLUMNS = ["L[q]", "ELBO subset (eval)", "ELBO all test (eval)", "L[q*]", "log p(x)", "approximation gap",
               "amortization gap", "optimization gap", "inference gap"]


def _markdown(frame: pd.DataFrame) -> str:
    return tabulate(frame, headers="keys", tablefmt="github", showindex=False)


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)


def write_leaderboard(board: pd.DataFrame, long: pd.DataFrame, out: Path) -> None:
    sections, latex = ["# amortbench leaderboard", ""], []
    for dataset, group in board.groupby("dataset", sort=True):
        group = group.reset_index(drop=True)
        shown, notes = render.display_table(group), render.footnotes(group)
        sections += [f"## {dataset}", "", render.header(group), "", _markdown(shown), ""]
        sections += [f"- {note}" for note in notes] + ([""] if notes else [])
        caption = f"{dataset}. {render.header(group)} " + " ".join(notes)
        latex.append(shown.to_latex(index=False, caption=caption, label=f"tab:{dataset}", escape=True))
    write_text(out / "leaderboard.md", "\n".join(sections))
    write_text(out / "leaderboard.tex", "\n".join(latex))
    for name, frame in (("leaderboard", board), ("metrics_long", long)):
        for ext in ("csv", "parquet"):
            _write_frame(frame, out / f"{name}.{ext}")


def gap_display(group: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({"method": group["method"], "q* family": group["q_star_family"],
                          "seeds": group["seeds"], "points": group["points"]})
    for title in GAP_COLUMNS:
        if f"{title} mean" in group:
            shown[title] = [render.mean_std(m, e, 2) for m, e in zip(group[f"{title} mean"], group[f"{title} sem"])]
        elif title in group:
            shown[title] = ["—" if pd.isna(v) else f"{v:.2f}" for v in group[title]]
    shown["stopped by rule"] = ["—" if pd.isna(v) else f"{100 * v:.0f}%" for v in group["stopped_by_rule"]]
    shown["log p(x) from"] = group["log_px_source"]
    return shown


GAP_NOTE = ("Nats per point, mean ± s.e. over points (several seeds: mean of the seeds' means). q* is the best "
            "member of the named family per point, by local optimization; log p(x) is the best of IWAE and AIS. "
            "Negative gaps are shown as they are. A method without an encoder (svi) has an optimization gap "
            "(its test-time steps against a converged optimization), not an amortization gap. 'ELBO subset' and "
            "'ELBO all test' are the evaluation's ELBO on the gap points and on the whole test set. 'stopped by "
            "rule': share of points whose local optimization stopped by the stopping rule rather than max_steps.")


def write_gaps(table: pd.DataFrame, out: Path) -> dict[str, list[dict]]:
    sections, latex, specs = ["# Inference gaps", "", GAP_NOTE, ""], [], {}
    for (dataset, split), group in table.groupby(["dataset", "split"], sort=True):
        shown = gap_display(group)
        sections += [f"## {dataset} ({split} points)", "", _markdown(shown), ""]
        latex.append(shown.to_latex(index=False, caption=f"{dataset}, {split} points. {GAP_NOTE}",
                                    label=f"tab:gaps-{dataset}-{split}"))
        numeric = group.rename(columns={f"{t} mean": t for t in GAP_COLUMNS}).reset_index(drop=True)
        specs.setdefault(dataset, []).append(
            table_spec(f"gaps-{dataset}-{split}", f"{dataset}: inference gaps on {split} points",
                       shown.reset_index(drop=True), numeric, [GAP_NOTE]))
    write_text(out / "gaps.md", "\n".join(sections))
    write_text(out / "gaps.tex", "\n".join(latex))
    _write_frame(table, out / "gaps.csv")
    for dataset, group in table.groupby("dataset"):
        test = group[group["split"] == "test"] if (group["split"] == "test").any() else group
        plots.gaps_plot(test.reset_index(drop=True), dataset, out / f"gaps_{dataset}.png")
    return specs


def write_published(table: pd.DataFrame, out: Path) -> dict[str, list[dict]]:
    """published.{md,csv}: every published number of the tables the config names, beside the reproduced one;
    returns the page's table per dataset."""
    specs: dict[str, list[dict]] = {}
    sections = ["# Published beside reproduced", "",
                "Every number of the published tables this config names (config/published.csv, with where each was "
                "read), the reproduced value of the same quantity and the difference. A new random oracle or a "
                "CPU-sized budget differs from the paper's setting: read the differences with the config's notes.", ""]
    for dataset, group in table.groupby("dataset", sort=True):
        shown = group[["paper", "table", "setting", "paper method", "method", "metric", "published", "reproduced",
                       "Δ (reproduced - published)", "comparable", "source"]].copy()
        for column in ("published", "reproduced", "Δ (reproduced - published)"):
            shown[column] = ["—" if pd.isna(v) else f"{v:.2f}" for v in shown[column]]
        sections += [f"## {dataset}", "", _markdown(shown), ""]
        notes = sorted({n for n in group["why not comparable"] if n})
        sections += [f"Not comparable: {n}" for n in notes] + ([""] if notes else [])
        specs[dataset] = [table_spec(f"published-{dataset}", f"{dataset}: published beside reproduced",
                                     shown.reset_index(drop=True).astype(str), group.reset_index(drop=True),
                                     [f"Not comparable: {n}" for n in notes])]
    write_text(out / "published.md", "\n".join(sections))
    _write_frame(table, out / "published.csv")
    return specs


def write_environment(long: pd.DataFrame, path: Path) -> None:
    """What produced the numbers: each distinct (commit, device, torch) with the runs it covers."""
    runs = long.drop_duplicates(["dataset", "method", "seed"])
    groups = runs.groupby(["git_commit", "device_name", "torch"], dropna=False)
    rows = [{"git commit": c, "device": d, "torch": t, "runs": len(g), "first": g["date"].min(),
             "last": g["date"].max()} for (c, d, t), g in groups]
    write_text(path, "# Environment of the results\n\n" + _markdown(pd.DataFrame(rows)) + "\n")


def write_costs(results: Results, out: Path) -> dict | None:
    table = cost_tables.stage_costs(results.costs)
    if table.empty:
        return None
    shown = table.copy()
    for column in ("wall s", "CPU s", "start-up s", "work s", "its wall s", "peak MB"):
        shown[column] = ["" if pd.isna(v) else f"{v:.1f}" for v in table[column]]
    shown["start-up share"] = ["" if pd.isna(v) else f"{100 * v:.0f}%" for v in table["start-up share"]]
    shown = shown.fillna("")
    text = cost_tables.summary(table)
    write_text(out / "costs.md", "# Cost of this run, per stage\n\n" + text + "\n\n" + _markdown(shown) + "\n")
    _write_frame(table, out / "costs.csv")
    return table_spec("costs", "Cost per stage (Snakemake benchmark files and the jobs' own timers)",
                      shown.astype(str), table, [text])


def build_report(manifest: dict, out_dir: str | Path) -> pd.DataFrame:
    """Write every report file of a run (see the module docstring); returns the numeric leaderboard."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".report-*"):  # left by a report that was killed outright
        shutil.rmtree(stale, ignore_errors=True)
    results = collect(manifest)
    board = leaderboard.build(results)
    long = leaderboard.long_table(results)
    gaps = gaps_table.build(results)
    references = {}
    for cell in results.cells:
        reference = ReportConfig.parse(cell.expected["report"], "report").published
        if reference is not None:
            references[cell.expected["dataset"]] = reference
    comparison = compare(board, gaps, references, read_published(manifest.get("published", PUBLISHED_CSV))) \
        if references and len(board) else None
    marks = {d: [{"value": (-1 if m == "log_px" else 1) * v, "label": f"{meth}: {m}"}
                 for d, meth, m, v in zip(comparison["dataset"], comparison["paper method"], comparison["metric"],
                                          comparison["published"]) if m in ("nll", "nll_upper_bound", "log_px")]
             for d in references} if comparison is not None and not comparison.empty else {}
    datasets = sorted(set(board["dataset"])) if len(board) else []
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    try:
        write_leaderboard(board, long, staging)
        published_specs = write_published(comparison, staging) if comparison is not None and not comparison.empty \
            else {}
        images = {}
        for dataset in datasets:
            plots.pareto_plot(board, dataset, staging / f"pareto_{dataset}.png", marks.get(dataset))
            histories = {f"{c.expected['method']} / seed{c.expected['seed']}": c.metrics.get("history") or []
                         for c in results.cells if c.expected["dataset"] == dataset and c.status == "ok"}
            plots.training_curves(histories, staging / f"curves_{dataset}.png", f"{dataset}: validation ELBO")
            images[dataset] = [{"title": "Pareto plot (static)", "src": f"pareto_{dataset}.png"},
                               {"title": "training curves", "src": f"curves_{dataset}.png"}]
        gap_specs = write_gaps(gaps, staging) if not gaps.empty else {}
        tables = {d: published_specs.get(d, []) + gap_specs.get(d, []) for d in datasets}
        for dataset in gap_specs:
            images.setdefault(dataset, []).append({"title": "inference gaps", "src": f"gaps_{dataset}.png"})
        costs = write_costs(results, staging)
        write_environment(long, staging / "ENVIRONMENT.md")
        write_page(staging, board, datasets, tables, marks, costs, images)
        produced = {path.name for path in staging.iterdir()}
        for pattern in REPORT_FILES:  # a file of an earlier report that this config no longer produces
            for old in out_dir.glob(pattern):
                if old.name not in produced:
                    old.unlink()
        for path in sorted(staging.iterdir()):  # the whole set at once: a killed report changes nothing
            path.replace(out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return board
