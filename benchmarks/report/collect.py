"""Gather a run's results and check each against the cell the current config resolves.

The manifest (results/expected.json, written by the Snakefile, which builds every path) lists the
expected cells with their hashes and the files that should hold their results. A cell's numbers count
only if they were produced from that cell's configuration: its metrics carry the same eval hash, the
model file they were computed from is still the one on disk (sha256), and the per-point estimates belong
to the same evaluation. Otherwise the cell is ``missing`` (no result) or ``stale`` (a result from another
configuration, or from a model that has since changed), and the leaderboard says so. Timings and gaps
are checked the same way against the timing and gaps hashes.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from ..errors import DataError


@dataclass
class CellResult:
    expected: dict
    status: str = "missing"  # ok | missing | stale
    reason: str = "no result (not run yet, or its job failed)"
    metrics: Optional[dict] = None  # the metrics.json record
    log_px: Optional[np.ndarray] = None  # per test point
    elbo: Optional[np.ndarray] = None
    timing: Optional[dict] = None  # this cell's entry of the dataset's timing.json
    timing_hardware: Optional[dict] = None
    timing_note: str = ""
    gaps: Optional[dict] = None
    gaps_note: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        e = self.expected
        return e["dataset"], e["method"], e["seed"]


@dataclass
class Results:
    cells: list[CellResult]
    costs: list[dict] = field(default_factory=list)  # one per job: rule, label, benchmark row, own timers
    problems: list[str] = field(default_factory=list)


def read_json(path: str | Path) -> Optional[dict]:
    """A JSON file's content, None if it does not exist; a corrupt file is a DataError naming it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read results file {path}: {exc}; delete it and rerun its job") from None


def _identity_matches(record: dict, expected: dict) -> bool:
    """Whether a result file belongs to the expected cell (a merged cell keeps its method's own name in
    base_method; its `method` may carry a label such as "avi @commit")."""
    return (record.get("dataset"), record.get("method"), record.get("seed")) == \
        (expected["dataset"], expected.get("base_method", expected["method"]), expected["seed"])


def _check_metrics(cell: CellResult, files: dict) -> None:
    e = cell.expected
    try:
        record = read_json(files["metrics"])
    except DataError as exc:
        cell.status, cell.reason = "stale", str(exc)
        return
    if record is None:
        return
    if not _identity_matches(record, e):
        cell.status, cell.reason = "stale", f"{files['metrics']} holds the result of another cell"
        return
    if record.get("hashes", {}).get("eval") != e["hashes"]["eval"]:
        cell.status, cell.reason = "stale", "result of another configuration (its eval hash differs)"
        return
    checksum = Path(files["model_checksum"])
    current = checksum.read_text().strip() if checksum.exists() else None
    if current is None or record.get("model_sha256") != current:
        cell.status, cell.reason = "stale", "its model file changed or is missing since it was evaluated"
        return
    try:
        table = pq.read_table(files["points"])
    except (OSError, ValueError) as exc:
        cell.status, cell.reason = "stale", f"per-point estimates {files['points']} unreadable ({exc})"
        return
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("eval_hash") != e["hashes"]["eval"] or table.num_rows != record["metrics"]["n_test"]:
        cell.status, cell.reason = "stale", f"per-point estimates {files['points']} belong to another evaluation"
        return
    cell.metrics = record
    cell.log_px = table.column("log_px").to_numpy()
    cell.elbo = table.column("elbo").to_numpy()
    cell.status, cell.reason = "ok", ""


def _attach_timing(cell: CellResult, timing: Optional[dict]) -> None:
    if timing is None:
        cell.timing_note = "not timed yet"
        return
    method = cell.expected.get("base_method", cell.expected["method"])
    matches = [e for e in timing.get("cells", []) if (e["method"], e["seed"]) == (method, cell.expected["seed"])]
    for entry in matches:
        if entry["hashes"].get("timing") == cell.expected["hashes"]["timing"]:
            cell.timing, cell.timing_hardware = entry, entry.get("hardware") or timing.get("hardware")
            return
    cell.timing_note = "timing of another configuration" if matches else "not in the dataset's timing run"


def _attach_gaps(cell: CellResult, path: Optional[str]) -> None:
    if not path:
        return
    try:
        record = read_json(path)
    except DataError as exc:
        cell.gaps_note = str(exc)
        return
    if record is None:
        cell.gaps_note = "gaps not computed yet"
    elif not _identity_matches(record, cell.expected) or \
            record.get("hashes", {}).get("gaps") != cell.expected["hashes"]["gaps"]:
        cell.gaps_note = "gaps of another configuration"
    else:
        cell.gaps = record


def collect(manifest: dict) -> Results:
    """Read every result the manifest lists and check it against its expected cell."""
    timings = {}
    for dataset, files in manifest.get("datasets", {}).items():
        try:
            timings[dataset] = read_json(files["timing"]) if files.get("timing") else None
        except DataError:
            timings[dataset] = None
    cells = []
    for expected in manifest["cells"]:
        cell = CellResult(expected)
        if expected.get("conflict"):  # merged runs disagree on this cell and seed: neither counts
            cell.status, cell.reason = "conflict", expected["conflict"]
            cells.append(cell)
            continue
        _check_metrics(cell, expected["files"])
        if cell.status == "ok":
            _attach_timing(cell, timings.get(expected["dataset"]))
            _attach_gaps(cell, expected["files"].get("gaps"))
        cells.append(cell)
    return Results(cells, read_costs(manifest.get("costs", [])))


def read_costs(entries: list[dict]) -> list[dict]:
    """Per job: the Snakemake benchmark row (wall s, CPU s, peak memory) and the job's own timers (whose CPU s
    and peak memory replace the benchmark's when the job ran in a fork-server child)."""
    rows = []
    for entry in entries:
        row = {"rule": entry["rule"], "label": entry["label"]}
        bench = Path(entry["benchmark"]) if entry.get("benchmark") else None
        if bench is not None and bench.exists():
            with open(bench) as fh:
                records = list(csv.DictReader(fh, delimiter="\t"))
            if records:
                last = records[-1]
                row.update(wall_s=float(last["s"]), cpu_s=float(last["cpu_time"]), max_rss_mb=float(last["max_rss"]))
        try:
            own = read_json(entry["cost"]) if entry.get("cost") else None
        except DataError:
            own = None
        if own:
            row.update(startup_s=own["startup_s"], work_s=own["work_s"], started=own["started"],
                       finished=own["finished"])
            row["forked"] = bool(own.get("forked"))
            if own.get("forked"):  # the job ran in a child of the fork server: Snakemake measured only the
                row.update(cpu_s=own["cpu_s"], max_rss_mb=own["max_rss_mb"])  # waiting client; use the child's
        if len(row) > 2:
            rows.append(row)
    return rows
