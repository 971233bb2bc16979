"""Entry points used by the Snakemake rules (``python -m benchmarks.cli <stage> ...``, or ``amortbench``).

    prepare   dataset options -> data/prepared/<entry>.pt (+ .sha256)
    train     cell.json + prepared data -> model.pt (+ .sha256), train_log.csv (resumable via --state-dir)
    evaluate  cell.json + model.pt + prepared data -> metrics.json
    figures   cell.json + model.pt + prepared data -> reconstructions.png, samples.png
    gaps      cell.json + model.pt + prepared data -> gaps.json (approximation / amortization gaps)
    report    metrics.json files -> leaderboard.{md,csv,tex,parquet}, plots, index.html
    publish   a finished run's reports -> results/reference/<name>/ (with RUN.md)
    validate  check a suite config file
    schema    print the JSON schema of a suite config (generated from the option classes)

Every file a stage reads is an argument; dataset, method and seed come from the cell.json it is given.
Errors a user can fix print one line naming the file or option and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import AmortbenchError, DataError


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

    deterministic = cell["deterministic"] if cell else True
    runtime.prepare_determinism(deterministic)  # before anything touches CUDA
    import torch

    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    return runtime.resolve_device(getattr(args, "device", None) or (cell or {}).get("device", "auto"))


def _load_data(path: str, cell: dict):
    from .datasets import DataSplits
    from .suite import data_provenance

    return DataSplits.load(path, expect=data_provenance(cell))


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
    payload = run_evaluation(cell, Path(args.model), _load_data(args.data, cell), device)
    write_json(args.out, payload)
    m = payload["metrics"]
    logging.info("evaluated %s/%s: test NLL %.3f, ELBO %.3f, %.4f ms/example", payload["dataset"],
                 payload["method"], m["test_nll"], m["test_elbo"], m["infer_ms_per_example"])


def cmd_figures(args) -> None:
    from .figures import draw
    from .runtime import build_trained

    cell = read_json(args.cell, "cell file")
    device = _setup(args, cell)
    data = _load_data(args.data, cell)
    method, _ = build_trained(cell, data, device, Path(args.model))
    draw(method, data, Path(args.reconstructions), Path(args.samples))


def cmd_gaps(args) -> None:
    from .gaps import run_gaps
    from .io import write_json

    cell = read_json(args.cell, "cell file")
    device = _setup(args, cell)
    payload = run_gaps(cell, Path(args.model), _load_data(args.data, cell), device)
    write_json(args.out, payload)
    test = payload["splits"].get("test", {}).get("metrics", {})
    if test:
        logging.info("gaps of %s/%s on test: approximation %.3f, amortization %.3f nats", payload["dataset"],
                     payload["method"], test["approximation_gap_ffg"]["mean"], test["amortization_gap_ffg"]["mean"])


def cmd_report(args) -> None:
    from .report import build_report

    expected = read_json(args.expected, "expected-cells file") if args.expected else None
    files = list(args.metrics)
    if not files:
        raise AmortbenchError("no metrics.json files to report")
    board = build_report(files, args.out_dir, expected, gap_files=args.gaps)
    logging.info("leaderboard of %d rows written to %s", len(board), args.out_dir)


def cmd_publish(args) -> None:
    """Copy a finished run's reports into a committed reference folder, with how it was made."""
    import datetime as dt
    import shutil

    from . import provenance
    from .io import write_text

    source, target = Path(args.results), Path(args.target)
    patterns = ["leaderboard.md", "leaderboard.csv", "leaderboard.tex", "pareto_*.png", "curves_*.png",
                "gaps.md", "gaps.csv", "gaps.tex", "gaps_*.png", "ENVIRONMENT.md", "index.html"]
    files = [f for pattern in patterns for f in sorted(source.glob(pattern))]
    if not any(f.name == "leaderboard.md" for f in files):
        raise AmortbenchError(f"{source} holds no leaderboard.md: run the pipeline first")
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, target / f.name)
    minutes = args.seconds / 60 if args.seconds else None
    lines = ["# How this reference was made", "",
             f"- config: `{args.config}`",
             f"- command: `{args.command}`" if args.command else "",
             f"- wall time: {minutes:.1f} minutes" if minutes is not None else "",
             f"- cores: {args.cores}" if args.cores else "",
             f"- hardware: {provenance.cpu_name()}",
             f"- git commit: {provenance.git_commit()}",
             f"- finished: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}", "",
             "Per-run versions and devices: ENVIRONMENT.md. Everything here is regenerated by `make reproduce`."]
    write_text(target / "RUN.md", "\n".join(line for line in lines if line is not None) + "\n")
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

    def stage(name: str, func, help_text: str, *files: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--cell", required=True, help="the cell's resolved config (cell.json)")
        s.add_argument("--data", required=True, help="prepared data file")
        for f in files:
            s.add_argument(f"--{f}", required=True)
        s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                       help="overrides the cell's device")
        s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        s.set_defaults(func=func)
        return s

    s = sub.add_parser("prepare", help="fetch, verify and split a dataset")
    s.add_argument("dataset", help="a registered dataset")
    s.add_argument("--options", default="{}", help="the dataset's data: options as JSON")
    s.add_argument("--data-dir", default="data")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare)

    s = stage("train", cmd_train, "train one cell", "model", "history", "state-dir")
    s.add_argument("--no-progress", action="store_true")
    stage("evaluate", cmd_evaluate, "evaluate one trained cell", "model", "out")
    stage("figures", cmd_figures, "reconstructions and samples of one trained cell", "model",
          "reconstructions", "samples")
    stage("gaps", cmd_gaps, "inference-gap decomposition of one trained cell", "model", "out")

    s = sub.add_parser("report", help="merge metrics into leaderboards and Pareto plots")
    s.add_argument("metrics", nargs="*", help="metrics.json files")
    s.add_argument("--out-dir", default="results")
    s.add_argument("--expected", default=None, help="the expected cells (expected.json)")
    s.add_argument("--gaps", nargs="*", default=[], help="gaps.json files for the gaps tables")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("publish", help="copy a run's reports into a reference folder (make reproduce)")
    s.add_argument("results", help="the run's results/ directory")
    s.add_argument("target", help="e.g. results/reference/fashion_cpu")
    s.add_argument("--config", required=True)
    s.add_argument("--seconds", type=float, default=None, help="wall time of the run")
    s.add_argument("--cores", type=int, default=None)
    s.add_argument("--command", default=None)
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("validate", help="check a config file")
    s.add_argument("configfile")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="print the JSON schema of a suite config")
    s.set_defaults(func=cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except AmortbenchError as exc:
        print(f"amortbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
