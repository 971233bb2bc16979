"""Entry points used by the Snakemake rules (``python -m benchmarks.cli <stage> ...``, or ``amortbench``).

    prepare   dataset options -> data/prepared/<entry>.pt (+ .sha256)
    train     cell/train.json + prepared data -> model.pt (+ .sha256), train_log.csv (resumable: --state-dir)
    evaluate  cell/eval.json + model.pt + prepared data -> metrics.json, points.parquet, figures
    timing    every cell/timing.json + model.pt of a dataset -> timing.json (interleaved; run it alone)
    gaps      cell/gaps.json + model.pt + prepared data -> gaps.json (approximation / amortization gaps)
    report    results/expected.json (the cells and their result files) -> leaderboards, plots, index.html
    bundle    a run's results -> one checksummed archive that travels
    merge     bundles and run directories -> one leaderboard and page
    publish   a finished run's reports -> results/reference/<name>/ (with RUN.md)
    validate  check a suite config file
    schema    print the JSON schema of a suite config (generated from the option classes)

Every file a stage reads is an argument; dataset, method and seed come from the cell file it is given.
Stage modules are imported only by the subcommand that needs them, so a job starts as fast as it can;
``--cost FILE`` records the job's start-up and work seconds for the run's cost table.
Errors a user can fix print one line naming the file or option and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from .errors import AmortbenchError, DataError

STARTED = time.time()  # a job's start (refined to the process's creation time when run as a command)
FORKED = False  # True in a fork-server child (benchmarks.forkserver): its rusage is the job's own work
#: what each subcommand imports before its work clock starts (start-up = Python + these imports)
STAGE_MODULES = {"prepare": "benchmarks.datasets", "train": "benchmarks.train", "evaluate": "benchmarks.evaluate",
                 "timing": "benchmarks.timing", "gaps": "benchmarks.gaps", "report": "benchmarks.report.build",
                 "validate": "benchmarks.suite", "schema": "benchmarks.suite",
                 "bundle": "benchmarks.report.bundle", "merge": "benchmarks.report.bundle"}


def read_json(path: str | Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path} is not valid JSON ({exc}); delete it and rerun") from None


def _setup(args, cell: dict | None = None):
    """Threads, determinism and the device of a stage (the CLI's --device beats the cell's)."""
    from . import runtime

    runtime.prepare_determinism(cell["deterministic"] if cell else True)  # before anything touches CUDA
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return runtime.resolve_device(getattr(args, "device", None) or (cell or {}).get("device", "auto"))


def _load_data(path: str, cell: dict):
    from .datasets import DataSplits, dataset_class

    expect = dataset_class(cell["dataset_kind"]).parse(cell["data"], "data").provenance()
    return DataSplits.load(path, expect=expect)


def cmd_prepare(args) -> None:
    from .datasets import dataset_class

    spec = dataset_class(args.dataset).parse(json.loads(args.options), f"datasets.{args.dataset}.data")
    data = spec.build(Path(args.data_dir))
    data.save(args.out, spec.provenance())
    logging.info("prepared %s: %s", args.dataset, {s: tuple(data.split(s).shape) for s in ("train", "valid", "test")})


def cmd_train(args) -> None:
    from .train import run_training

    cell = read_json(args.cell, "cell file")
    device = _setup(args, cell)
    data = _load_data(args.data, cell)
    result = run_training(cell, data, Path(args.model), Path(args.state_dir), Path(args.history), device,
                          progress=not args.no_progress)
    logging.info("trained %s/%s seed %d on %s: best epoch %d, valid ELBO %.4f, %.1f s",
                 cell["dataset"], cell["method"], cell["seed"], device, result.best_epoch,
                 result.best_valid_elbo, result.train_seconds)


def cmd_evaluate(args) -> None:
    from .evaluate import run_evaluation
    from .io import write_json

    cell = read_json(args.cell, "cell file")
    device = _setup(args, cell)
    payload = run_evaluation(cell, Path(args.model), _load_data(args.data, cell), device, Path(args.points),
                             Path(args.reconstructions), Path(args.samples))
    write_json(args.out, payload)
    m = payload["metrics"]
    logging.info("evaluated %s/%s: test NLL %.3f, ELBO %.3f", payload["dataset"], payload["method"],
                 m["test_nll"], m["test_elbo"])


def cmd_timing(args) -> None:
    from .io import write_json
    from .timing import run_timing

    cells = [read_json(path, "cell file") for path in args.cells]
    if len(cells) != len(args.models):
        raise AmortbenchError(f"timing: {len(cells)} cell files but {len(args.models)} model files")
    device = _setup(args, cells[0])
    payload = run_timing(cells, [Path(m) for m in args.models], _load_data(args.data, cells[0]), device)
    write_json(args.out, payload)
    logging.info("timed %d cells of %s in %.1f s", len(cells), payload["dataset"],
                 payload["measured"]["finished"] - payload["measured"]["started"])


def cmd_gaps(args) -> None:
    from .gaps import run_gaps
    from .io import write_json

    cell = read_json(args.cell, "cell file")
    device = _setup(args, cell)
    payload = run_gaps(cell, Path(args.model), _load_data(args.data, cell), device)
    write_json(args.out, payload)
    test = payload["splits"].get("test", {}).get("metrics", {})
    if test:
        logging.info("gaps of %s/%s on test: approximation %.3f, q* - q %.3f nats", payload["dataset"],
                     payload["method"], test["approximation_gap_ffg"]["mean"], test["amortization_gap_ffg"]["mean"])


def cmd_report(args) -> None:
    from .report.build import build_report

    board = build_report(read_json(args.manifest, "manifest"), args.out_dir)
    logging.info("leaderboard of %d rows written to %s", len(board), args.out_dir)


def cmd_bundle(args) -> None:
    from .report.bundle import write_bundle

    index = write_bundle(Path(args.manifest), Path(args.out), models=args.models)
    print(f"bundled {len(index['manifest']['cells'])} cells ({len(index['files'])} files) into {args.out}")


def cmd_merge(args) -> None:
    from .report.bundle import merge

    board, conflicts = merge([Path(s) for s in args.sources], Path(args.out), args.pool_code_versions)
    print(f"merged {len(args.sources)} sources into {args.out}: {len(board)} leaderboard rows, "
          f"{len(conflicts)} conflicts (see {Path(args.out) / 'merge.md'})")


def cmd_publish(args) -> None:
    """Copy a finished run's reports into a committed reference folder, with how it was made."""
    import datetime as dt
    import shutil

    from . import provenance
    from .io import write_text

    source, target = Path(args.results), Path(args.target)
    patterns = ["leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.parquet", "pareto_*.png",
                "curves_*.png", "gaps.md", "gaps.csv", "gaps.tex", "gaps_*.png", "published.md", "published.csv",
                "costs.md", "costs.csv", "ENVIRONMENT.md", "index.html", "plotly.min.js"]
    files = [f for pattern in patterns for f in sorted(source.glob(pattern))]
    if not any(f.name == "leaderboard.md" for f in files):
        raise AmortbenchError(f"{source} holds no leaderboard.md: run the pipeline first")
    # the reference is replaced as a whole: no file of an earlier publication survives beside the new ones
    staging = target.with_name(f".{target.name}.publishing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, staging / f.name)
    minutes = args.seconds / 60 if args.seconds else None
    costs = (source / "costs.md").read_text().split("\n", 2)[-1] if (source / "costs.md").exists() else ""
    lines = ["# How this reference was made", "",
             f"- config: `{args.config}`",
             f"- command: `{args.command}`" if args.command else "",
             f"- wall time: {minutes:.1f} minutes" if minutes is not None else "",
             f"- cores: {args.cores}" if args.cores else "",
             f"- hardware: {provenance.cpu_name()}",
             f"- git commit: {provenance.git_commit()}",
             f"- finished: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}", "",
             "Per-run versions and devices: ENVIRONMENT.md. Everything here is regenerated by `make reproduce`.", ""]
    if costs:
        lines += ["## Cost per stage", "", costs.strip(), ""]
    write_text(staging / "RUN.md", "\n".join(lines) + "\n")
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    print(f"published {len(files)} files to {target}")


def cmd_validate(args) -> None:
    from .options import load_yaml
    from .suite import cells, validate

    config = validate(load_yaml(args.configfile), where=str(args.configfile))
    print(f"{args.configfile}: valid, {len(cells(config))} cells")


def cmd_schema(args) -> None:
    from .suite import SuiteConfig

    print(json.dumps(SuiteConfig.model_json_schema(), indent=2))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amortbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--cost", default=None, help="write the job's own timers here (JSON)")
        s.set_defaults(func=func)
        return s

    def stage(name: str, func, help_text: str, *files: str) -> argparse.ArgumentParser:
        s = add(name, func, help_text)
        s.add_argument("--cell", required=True, help="the cell's resolved config for this stage (cell/<stage>.json)")
        s.add_argument("--data", required=True, help="prepared data file")
        for f in files:
            s.add_argument(f"--{f}", required=True)
        s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="overrides the cell's device")
        s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        return s

    s = add("prepare", cmd_prepare, "fetch, verify and split a dataset")
    s.add_argument("dataset", help="a registered dataset")
    s.add_argument("--options", default="{}", help="the dataset's data: options as JSON")
    s.add_argument("--data-dir", default="data")
    s.add_argument("--out", required=True)

    s = stage("train", cmd_train, "train one cell", "model", "history", "state-dir")
    s.add_argument("--no-progress", action="store_true")
    stage("evaluate", cmd_evaluate, "evaluate one trained cell (metrics, per-point estimates, figures)", "model",
          "out", "points", "reconstructions", "samples")
    stage("gaps", cmd_gaps, "inference-gap decomposition of one trained cell", "model", "out")

    s = add("timing", cmd_timing, "time every trained cell of a dataset, interleaved (run it alone)")
    s.add_argument("--cells", nargs="+", required=True, help="the cells' cell/timing.json files")
    s.add_argument("--models", nargs="+", required=True, help="their model.pt files, in the same order")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    s.add_argument("--threads", type=int, default=None)

    s = add("report", cmd_report, "check results against the config; leaderboards, plots, index.html")
    s.add_argument("--manifest", required=True, help="results/expected.json: the cells and their result files")
    s.add_argument("--out-dir", default="results")

    s = add("bundle", cmd_bundle, "pack a run's results into one archive that travels (checksummed)")
    s.add_argument("--manifest", default="results/expected.json", help="the run's results/expected.json")
    s.add_argument("--out", required=True, help="the bundle to write (.tar.gz)")
    s.add_argument("--models", action="store_true", help="include the trained models (safe format)")

    s = add("merge", cmd_merge, "merge bundles and run directories into one leaderboard and page")
    s.add_argument("sources", nargs="+", help="bundles (.tar.gz) or run directories (holding results/)")
    s.add_argument("--out", required=True, help="the folder for the merged leaderboard")
    s.add_argument("--pool-code-versions", action="store_true",
                   help="pool results of different code versions (default: separate rows)")

    s = add("publish", cmd_publish, "copy a run's reports into a reference folder (make reproduce)")
    s.add_argument("results", help="the run's results/ directory")
    s.add_argument("target", help="e.g. results/reference/fashion_cpu")
    s.add_argument("--config", required=True)
    s.add_argument("--seconds", type=float, default=None, help="wall time of the run")
    s.add_argument("--cores", type=int, default=None)
    s.add_argument("--command", default=None)

    s = add("validate", cmd_validate, "check a config file")
    s.add_argument("configfile")

    add("schema", cmd_schema, "print the JSON schema of a suite config")
    return p


def write_cost(path: str, rule: str, work_started: float) -> None:
    """The job's own timers: start-up (process creation to the stage's first line of work: Python and the
    CLI's imports) and work (the stage itself, its imports included), CPU seconds and peak memory."""
    from .io import write_json

    finished = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    write_json(path, {"rule": rule, "started": STARTED, "work_started": work_started, "finished": finished,
                      "startup_s": work_started - STARTED, "work_s": finished - work_started,
                      "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024.0,
                      "forked": FORKED})


def process_age() -> float:
    """Seconds since this process was created (Linux: /proc, exact to a clock tick; else 0)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    try:
        if args.command in STAGE_MODULES:
            importlib.import_module(STAGE_MODULES[args.command])
        work_started = time.time()
        args.func(args)
        if args.cost:
            write_cost(args.cost, args.command, work_started)
    except AmortbenchError as exc:
        print(f"amortbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    STARTED = time.time() - process_age()  # the job's start-up counts from the process's creation
    from benchmarks import forkserver  # a local run's jobs go through its fork server when there is one

    status = forkserver.run_through_server("benchmarks.cli", sys.argv[1:], STARTED)
    if status is None:
        status = main()
    # Skip the interpreter's teardown (unloading torch costs ~0.4 s a job): every output is already
    # written atomically and closed; flush what is buffered, then leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
