"""Results that travel: a run's results as one archive, and several runs merged into one leaderboard.

A bundle (``amortbench bundle``) is a .tar.gz holding ``bundle.json`` and, per cell, the files the report
reads (metrics.json, points.parquet, gaps.json, train_log.csv, the cell's resolved config, the model's
sha256, and with ``--models`` the model file in its safe format), per dataset its timing.json, and the run's
cost records. ``bundle.json`` lists every file with its sha256 and carries the run's manifest with paths
inside the bundle.

Reading a bundle never executes anything from it: only regular files listed in bundle.json, under a
relative path without '..', of the known kinds (.json, .parquet, .csv, .tsv, .sha256, and model.pt) are
extracted; each must match its sha256; JSON is parsed as JSON, parquet by pyarrow, and a model file only
by torch.load(weights_only=True), which refuses a pickled object. Anything else refuses the bundle.

Merging (``amortbench merge SRC ... --out DIR``; a source is a bundle or a run's working directory):
* cells with the same resolved configuration (the same eval hash) pool their seeds into one row;
* the same cell and seed twice: identical results (same model checksum and metrics) count once; different
  numbers are a conflict, reported in merge.md, and that seed counts in neither;
* results of different code versions (git commit of the run) stay in separate rows, labelled
  "method @commit", unless ``--pool-code-versions``; different configurations of a method likewise
  ("method [config abc123]");
* inference times are pooled only within one hardware: a row timed on several machines shows no pooled
  time (its per-machine times are in metrics_long), and Pareto fronts are drawn per machine;
* paired differences are taken only between cells scored on the same test points (the report checks the
  test-set fingerprint).
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import json
import platform
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from ..errors import DataError
from ..io import atomic_path, write_text
from ..provenance import git_commit
from ..runtime import safe_load
from .build import build_report

BUNDLE_FORMAT = "amortbench.bundle/1"
ALLOWED_SUFFIXES = (".json", ".parquet", ".csv", ".tsv", ".sha256", ".pt")
CELL_FILES = ("metrics.json", "points.parquet", "gaps.json", "train_log.csv", "model.pt.sha256",
              "cell/train.json", "cell/eval.json", "cell/gaps.json", "cell/timing.json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cell_dir(entry: dict) -> str:
    return f"cells/{entry['dataset']}/{entry['method']}/seed{entry['seed']}"


# --------------------------------------------------------------------------------------------------
# writing


def write_bundle(manifest_path: Path, out: Path, models: bool = False, workdir: Path | None = None) -> dict:
    """Bundle the run whose manifest (results/expected.json) is `manifest_path`; paths in it are relative to
    `workdir` (default: the folder holding results/). Returns the bundle's index (bundle.json)."""
    manifest_path = Path(manifest_path)
    workdir = Path(workdir) if workdir is not None else manifest_path.parent.parent
    manifest = json.loads(manifest_path.read_text())
    payload: dict[str, bytes] = {}
    cells = []
    for entry in manifest["cells"]:
        files = entry["files"]
        run = (workdir / files["metrics"]).parent
        inside = _cell_dir(entry)
        names = list(CELL_FILES) + (["model.pt"] if models else [])
        mapped = {}
        for name in names:
            path = run / name
            if path.is_file():
                payload[f"{inside}/{name}"] = path.read_bytes()
                mapped[name] = f"{inside}/{name}"
        cells.append({**entry, "files": {"metrics": mapped.get("metrics.json", f"{inside}/metrics.json"),
                                         "points": mapped.get("points.parquet", f"{inside}/points.parquet"),
                                         "model_checksum": f"{inside}/model.pt.sha256",
                                         "gaps": mapped.get("gaps.json") if files.get("gaps") else None}})
    datasets = {}
    for dataset, files in manifest.get("datasets", {}).items():
        path = workdir / files["timing"]
        if path.is_file():
            payload[f"timing/{dataset}.json"] = path.read_bytes()
        datasets[dataset] = {"timing": f"timing/{dataset}.json"}
    costs = []
    for i, entry in enumerate(manifest.get("costs", [])):
        mapped = {"rule": entry["rule"], "label": entry["label"]}
        for key in ("benchmark", "cost"):
            path = workdir / entry[key] if entry.get(key) else None
            if path is not None and path.is_file():
                mapped[key] = f"costs/{i}-{key}{path.suffix}"
                payload[mapped[key]] = path.read_bytes()
        costs.append(mapped)
    index = {"format": BUNDLE_FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "source": {"hostname": platform.node(), "git_commit": git_commit(), "workdir": str(workdir.resolve())},
             "manifest": {"cells": cells, "datasets": datasets, "costs": costs},
             "files": {name: _sha256(data) for name, data in sorted(payload.items())}}
    payload["bundle.json"] = json.dumps(index, indent=1, sort_keys=True).encode()
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for name, data in sorted(payload.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return index


# --------------------------------------------------------------------------------------------------
# reading


def _safe_name(name: str, bundle: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DataError(f"bundle {bundle}: refused: the member {name!r} is not a plain relative path")
    if name != "bundle.json" and not name.endswith(ALLOWED_SUFFIXES):
        raise DataError(f"bundle {bundle}: refused: {name!r} is not a kind of file a bundle holds "
                        f"({', '.join(ALLOWED_SUFFIXES)})")
    return path


def read_bundle(bundle: Path, into: Path) -> dict:
    """Extract a bundle into `into` after checking every member (module docstring); returns the run's
    manifest with its paths pointing into `into`."""
    bundle = Path(bundle)
    try:
        tar = tarfile.open(bundle, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"bundle {bundle} is not a readable .tar.gz ({exc})") from None
    with tar:
        members = {}
        for member in tar.getmembers():
            if not member.isfile():
                raise DataError(f"bundle {bundle}: refused: {member.name!r} is not a regular file")
            members[member.name] = member
        if "bundle.json" not in members:
            raise DataError(f"bundle {bundle} has no bundle.json: not an amortbench bundle")
        raw_index = tar.extractfile(members["bundle.json"]).read()
        index = json.loads(raw_index)
        if index.get("format") != BUNDLE_FORMAT:
            raise DataError(f"bundle {bundle} has format {index.get('format')!r}, expected {BUNDLE_FORMAT}")
        listed = index["files"]
        unlisted = sorted(set(members) - set(listed) - {"bundle.json"})
        if unlisted:
            raise DataError(f"bundle {bundle}: refused: files not in its index: {unlisted}")
        for name, checksum in listed.items():
            path = _safe_name(name, bundle)
            if name not in members:
                raise DataError(f"bundle {bundle}: {name} is listed but missing")
            data = tar.extractfile(members[name]).read()
            if _sha256(data) != checksum:
                raise DataError(f"bundle {bundle}: {name} does not match its sha256 (corrupt or altered)")
            target = Path(into, *path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            _check_content(target, name, bundle)
    Path(into, "bundle.json").write_bytes(raw_index)
    manifest = copy.deepcopy(index["manifest"])
    manifest["source"] = {**index.get("source", {}), "bundle": str(bundle)}
    return _rooted(manifest, Path(into))


def _check_content(path: Path, name: str, bundle: Path) -> None:
    """Parse each file the way the report will, so a bad one is refused here, naming it."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pq.read_schema(path)
        elif path.suffix == ".pt":
            safe_load(path, "model file")
    except DataError as exc:
        raise DataError(f"bundle {bundle}: refused: {exc}") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"bundle {bundle}: refused: {name} cannot be read ({exc})") from None


def _rooted(manifest: dict, root: Path) -> dict:
    """The manifest with every relative file path made absolute under `root`."""
    for cell in manifest["cells"]:
        cell["files"] = {k: (str(root / v) if v else v) for k, v in cell["files"].items()}
    for files in manifest.get("datasets", {}).values():
        files["timing"] = str(root / files["timing"])
    for entry in manifest.get("costs", []):
        for key in ("benchmark", "cost"):
            if entry.get(key):
                entry[key] = str(root / entry[key])
    return manifest


def read_source(source: Path, scratch: Path) -> dict:
    """A source of results: a bundle, or a run's working directory (holding results/expected.json)."""
    source = Path(source)
    if source.is_file():
        return read_bundle(source, scratch)
    for candidate in (source / "results" / "expected.json", source / "expected.json"):
        if candidate.is_file():
            workdir = candidate.parent.parent
            manifest = _rooted(json.loads(candidate.read_text()), workdir)
            manifest["source"] = {"workdir": str(workdir.resolve()), "git_commit": _run_commit(manifest)}
            return manifest
    raise DataError(f"{source} is neither a bundle nor a run directory (no results/expected.json)")


def _run_commit(manifest: dict) -> str | None:
    for cell in manifest["cells"]:
        path = Path(cell["files"]["metrics"])
        if path.is_file():
            return json.loads(path.read_text()).get("provenance", {}).get("git_commit")
    return None


# --------------------------------------------------------------------------------------------------
# merging


def _fingerprint(cell: dict) -> tuple | None:
    path = Path(cell["files"]["metrics"])
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record.get("model_sha256"), json.dumps(record.get("metrics"), sort_keys=True)


def _commit(cell: dict) -> str:
    path = Path(cell["files"]["metrics"])
    if not path.is_file():
        return "unknown"
    return json.loads(path.read_text()).get("provenance", {}).get("git_commit") or "unknown"


def merge_manifests(manifests: list[dict], scratch: Path, pool_code_versions: bool = False) -> tuple[dict, list[dict]]:
    """One manifest from several runs' (module docstring; merged timing files go to `scratch`); returns it
    and the conflicts found."""
    by_key: dict[tuple, list[tuple[int, dict]]] = defaultdict(list)
    for i, manifest in enumerate(manifests):
        for cell in manifest["cells"]:
            experiment = cell["hashes"].get("config", cell["hashes"]["eval"])
            by_key[(cell["dataset"], cell["method"], experiment, cell["seed"])].append((i, cell))
    conflicts, chosen = [], []
    for key, copies in sorted(by_key.items(), key=lambda kv: kv[0]):
        fingerprints = {_fingerprint(cell) for _, cell in copies} - {None}
        if len(fingerprints) > 1:
            sources = [manifests[i]["source"].get("bundle") or manifests[i]["source"].get("workdir") for i, _ in copies]
            conflicts.append({"dataset": key[0], "method": key[1], "seed": key[3], "config": key[2][:8],
                              "sources": sources})
            i, cell = copies[0]
            chosen.append((i, {**cell, "conflict": f"different results in {', '.join(map(str, sources))}"}))
            continue
        present = [c for c in copies if _fingerprint(c[1]) is not None] or copies
        chosen.append(present[0])
    # labels: a (dataset, method) with several configurations or code versions keeps them apart
    versions: dict[tuple, set] = defaultdict(set)
    configs: dict[tuple, set] = defaultdict(set)
    for _, cell in chosen:
        versions[(cell["dataset"], cell["method"])].add(_commit(cell))
        configs[(cell["dataset"], cell["method"])].add(cell["hashes"].get("config", cell["hashes"]["eval"]))
    cells = []
    for i, cell in chosen:
        cell = copy.deepcopy(cell)
        key = (cell["dataset"], cell["method"])
        suffix = ""
        if len(configs[key]) > 1:
            suffix += f" [config {cell['hashes'].get('config', cell['hashes']['eval'])[:6]}]"
        if len(versions[key]) > 1 and not pool_code_versions:
            suffix += f" @{_commit(cell)[:8]}"
        cell["base_method"] = cell["method"]
        if suffix:
            cell["method"] += suffix
            report = cell.setdefault("report", {})
            reference = report.get("reference_method", "avi")
            report["reference_method"] = reference + suffix
        cell["source"] = manifests[i]["source"]
        cells.append(cell)
    timings = _merged_timings(manifests, cells, scratch)
    merged = {"cells": cells, "datasets": timings, "costs": [c for m in manifests for c in m.get("costs", [])]}
    return merged, conflicts


def _merged_timings(manifests: list[dict], cells: list[dict], scratch: Path) -> dict:
    """Per dataset one timing file (in `scratch`) holding the entries of every source (each carries its
    hardware)."""
    scratch.mkdir(parents=True, exist_ok=True)
    out = {}
    for dataset in sorted({c["dataset"] for c in cells}):
        entries = []
        for manifest in manifests:
            path = manifest.get("datasets", {}).get(dataset, {}).get("timing")
            if path and Path(path).is_file():
                record = json.loads(Path(path).read_text())
                entries += [{**e, "hardware": record.get("hardware")} for e in record.get("cells", [])]
        target = scratch / f"{dataset}.json"
        target.write_text(json.dumps({"dataset": dataset, "cells": entries, "merged": True}))
        out[dataset] = {"timing": str(target)}
    return out


def merge(sources: list[Path], out_dir: Path, pool_code_versions: bool = False):
    """Read every source (bundles are checked and extracted under out_dir/.sources), merge them, and write
    the combined leaderboard and site into `out_dir`, with merge.md listing the sources and conflicts."""
    out_dir = Path(out_dir)
    scratch = out_dir / ".sources"
    shutil.rmtree(scratch, ignore_errors=True)
    manifests = [read_source(Path(s), scratch / str(i)) for i, s in enumerate(sources)]
    merged, conflicts = merge_manifests(manifests, scratch / "timings", pool_code_versions)
    board = build_report(merged, out_dir)
    lines = ["# Merged results", "", "| source | code version | cells |", "|---|---|---|"]
    for manifest in manifests:
        src = manifest["source"]
        lines.append(f"| {src.get('bundle') or src.get('workdir')} | {(src.get('git_commit') or 'unknown')[:12]} | "
                     f"{len(manifest['cells'])} |")
    lines += ["", f"Rule: same configuration (eval hash) pools seeds; code versions are "
                  f"{'pooled' if pool_code_versions else 'kept apart (method @commit)'}; timings are pooled only "
                  "within one hardware.", ""]
    lines += ["## Conflicts", ""] + ([f"- {c['dataset']}/{c['method']} seed {c['seed']} (config {c['config']}): "
                                      f"different results in {', '.join(map(str, c['sources']))}; counted in none"
                                      for c in conflicts] or ["none"])
    write_text(out_dir / "merge.md", "\n".join(lines) + "\n")
    return board, conflicts
