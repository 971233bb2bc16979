"""Entry points used by the Snakemake rules (``python -m benchmarks.cli <stage> ...``).

    prepare   dataset options -> data/prepared/<dataset>.pt
    train     cell config + prepared data -> model.pt (resumable via --state-dir)
    evaluate  model.pt + prepared data -> metrics.json
    figures   model.pt + prepared data -> reconstructions.png, samples.png
    gaps      model.pt + prepared data -> gaps.json (approximation / amortization gaps)
    report    metrics.json files -> leaderboard.{md,csv,tex,parquet}, pareto_<dataset>.png
    publish   a finished run's reports -> results/reference/<name>/ (with RUN.md)
    validate  check a suite config file against the schema and registries

Errors a user can fix print one line naming the file or option and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import AmortbenchError


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AmortbenchError(f"argument is not valid JSON ({exc}): {text[:200]!r}") from None
    return value


def _setup_torch(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def cmd_prepare(args) -> None:
    from .datasets import prepare

    options = _json_arg(args.options)
    data = prepare(args.dataset, options, args.data_dir)
    data.save(args.out, options)
    logging.info("prepared %s: %s", args.dataset, {s: tuple(data.split(s).shape) for s in ("train", "valid", "test")})


def cmd_train(args) -> None:
    from .datasets import DataSplits
    from .io import write_json
    from .train import resolve_device, run_training

    _setup_torch(args.threads)
    cell = _json_arg(args.cell)
    device = resolve_device(args.device or cell.get("device", "auto"))
    data = DataSplits.load(args.data)
    out = Path(args.out)
    state_dir = Path(args.state_dir) if args.state_dir else out.parent / "state"
    write_json(out.parent / "cell.json", cell)
    result = run_training(cell, data, out, state_dir, Path(args.log_csv or out.parent / "train_log.csv"),
                          device, progress=not args.no_progress)
    logging.info("trained %s/%s seed %d on %s: best epoch %d, valid ELBO %.4f, %.1f s",
                 cell["dataset"], cell["method"], cell["seed"], device, result.best_epoch,
                 result.best_valid_elbo, result.train_seconds)


def cmd_evaluate(args) -> None:
    import torch

    from .datasets import DataSplits
    from .evaluate import run_evaluation
    from .io import write_json
    from .train import resolve_device

    _setup_torch(args.threads)
    saved_cell = torch.load(args.model, map_location="cpu", weights_only=False)["cell"]
    device = resolve_device(args.device or saved_cell.get("device", "auto"))
    payload = run_evaluation(args.model, DataSplits.load(args.data), device, _json_arg(args.eval))
    write_json(args.out, payload)
    m = payload["metrics"]
    logging.info("evaluated %s/%s: test NLL %.3f, ELBO %.3f, %.4f ms/example", payload["dataset"],
                 payload["method"], m["test_nll"], m["test_elbo"], m["infer_ms_per_example"])


def cmd_figures(args) -> None:
    from .datasets import DataSplits
    from .evaluate import load_trained
    from .figures import draw
    from .train import resolve_device

    data = DataSplits.load(args.data)
    method, _ = load_trained(args.model, data, resolve_device("cpu"))
    draw(method, data, Path(args.out_dir))


def cmd_gaps(args) -> None:
    import torch

    from .config import from_dict
    from .datasets import DataSplits
    from .gaps import GapConfig, run_gaps
    from .io import write_json
    from .train import resolve_device

    _setup_torch(args.threads)
    cell = torch.load(args.model, map_location="cpu", weights_only=False)["cell"]
    section = _json_arg(args.options)
    points = section.pop("points", {"train": 1000, "test": None})
    section.pop("enabled", None)
    cfg = from_dict(GapConfig, section, "gaps")
    device = resolve_device(args.device or cell.get("device", "auto"))
    payload = run_gaps(args.model, DataSplits.load(args.data), cfg, device, splits=points)
    write_json(args.out, payload)
    test = payload["splits"].get("test", {}).get("metrics", {})
    if test:
        logging.info("gaps of %s/%s on test: approximation %.3f, amortization %.3f nats", payload["dataset"],
                     payload["method"], test["approximation_gap_ffg"]["mean"], test["amortization_gap_ffg"]["mean"])


def cmd_report(args) -> None:
    from .report import build_report

    expected = [tuple(c) for c in _json_arg(args.expected)] if args.expected else None
    files = list(args.metrics)
    if not files and expected is not None:  # a partial report: the expected cells that finished
        candidates = [Path(args.results_dir) / d / m / f"seed{s}" / "metrics.json" for d, m, s in expected]
        files = [f for f in candidates if f.exists()]
    elif not files:
        files = sorted(Path(args.results_dir).glob("*/*/seed*/metrics.json"))
    if not files:
        raise AmortbenchError(f"no metrics.json files to report under {args.results_dir}")
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
    from .config import cells, load_yaml, validate

    config = validate(load_yaml(args.configfile))
    print(f"{args.configfile}: valid, {len(cells(config))} cells")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amortbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="fetch, verify and split a dataset")
    s.add_argument("dataset", help="a registered dataset")
    s.add_argument("--options", default="{}", help="the dataset's data: options as JSON")
    s.add_argument("--data-dir", default="data")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare)

    for name, func, help_text in (("train", cmd_train, "train one cell"),
                                  ("evaluate", cmd_evaluate, "evaluate one trained cell")):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--data", required=True, help="prepared data file")
        s.add_argument("--out", required=True)
        s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
        s.add_argument("--threads", type=int, default=None)
        s.set_defaults(func=func)
        if name == "train":
            s.add_argument("--cell", required=True, help="the cell's resolved config as JSON")
            s.add_argument("--state-dir", default=None, help="resumable checkpoints (default: <out dir>/state)")
            s.add_argument("--log-csv", default=None)
            s.add_argument("--no-progress", action="store_true")
        else:
            s.add_argument("--model", required=True)
            s.add_argument("--eval", default="{}", help="the cell's eval: options as JSON")

    s = sub.add_parser("figures", help="reconstruction and sample figures of one trained cell")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("gaps", help="inference-gap decomposition of one trained cell (config: gaps:)")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--options", default="{}", help="the cell's gaps: options as JSON")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=cmd_gaps)

    s = sub.add_parser("report", help="merge metrics into leaderboards and Pareto plots")
    s.add_argument("metrics", nargs="*", help="metrics.json files (default: all under --results-dir)")
    s.add_argument("--results-dir", default="results")
    s.add_argument("--out-dir", default="results")
    s.add_argument("--expected", default=None, help="JSON list of expected [dataset, method, seed]")
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
