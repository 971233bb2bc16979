"""amortbench pipeline: prepare data -> train -> evaluate (+ figures) -> timing -> (gaps) -> report.

One generic rule per stage; {dataset} (a config entry), {method} and {seed} are wildcards, so a new method
or dataset needs no rule of its own. Every path is built here, once (RUN, TIMING, the manifest); each job
gets every file it reads as an input and writes only declared outputs, with one exception: a training
job's resumable checkpoint (results/<cell>/state/last.pt) is deliberately undeclared, because Snakemake
deletes the outputs of a failed job and the checkpoint must survive exactly that.

Inference is timed by one `timing` job per dataset that holds every core (threads: all of them), so no
other job runs beside it, and times all the dataset's trained methods round-robin in one process.
Run with a config, e.g.

    snakemake --cores 2 --configfile config/default.yaml
"""
import json
import os
import shlex
import shutil
import sys

from snakemake.utils import min_version

min_version("9.0")

ROOT = workflow.basedir
sys.path.insert(0, ROOT)

from benchmarks import forkserver  # noqa: E402
from benchmarks.datasets.core import sha256_of  # noqa: E402
from benchmarks.io import write_text  # noqa: E402
from benchmarks.runtime import verify_model_file  # noqa: E402
from benchmarks.suite import (  # noqa: E402
    STAGES,
    cells,
    data_options,
    dataset_kind,
    expected_cells,
    parse_suite,
    resolve_cell,
    stage_view,
)

if not config:
    raise ValueError("no configuration given: run `snakemake --configfile config/default.yaml` (or another config)")
SUITE = parse_suite(config)

# Rules call `python` from their environment: with --sw-deployment-method conda that is envs/amortbench.yaml's;
# otherwise the environment Snakemake itself runs in comes first on PATH.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
shell.prefix(f"export PYTHONPATH={shlex.quote(ROOT)}:$PYTHONPATH; ")


THREADS = SUITE.threads
CELLS = cells(config)
RESOLVED = {(d, m, s): resolve_cell(config, d, m, s, SUITE) for d, m, s in CELLS}
DATASETS = sorted({d for d, _, _ in CELLS})
RUN = "results/{dataset}/{method}/seed{seed}"
PUBLISHED = os.path.join(ROOT, "config", "published.csv")
TIMING = "results/{dataset}/timing"
DEFAULT_RESOURCES = {
    "prepare_data": {"mem_mb": 8000},
    "train": {"mem_mb": 4000},
    "evaluate": {"mem_mb": 4000},
    "timing": {"mem_mb": 4000},
    "gaps": {"mem_mb": 4000},
    "report": {"mem_mb": 2000},
}


def run_dir(dataset, method, seed):
    return RUN.format(dataset=dataset, method=method, seed=seed)


def resources_of(rule_name):
    """Per-rule resources: defaults above, overridden by the config's `resources:` (e.g. gpu: 1)."""
    return {**DEFAULT_RESOURCES[rule_name], **SUITE.resources.get(rule_name, {})}


def cell_of(w):
    return RESOLVED[(w.dataset, w.method, int(w.seed))]


def all_cores(wildcards=None):
    """Every core Snakemake may use (the timing job holds them all, so nothing runs beside it); 1 where no
    core count is set (`--report`, cluster executors: there the profile asks for an exclusive node)."""
    try:
        return int(workflow.cores)
    except Exception:  # noqa: BLE001 - Snakemake raises when --cores was not given
        return 1


def stage_content(w):
    """What cell/<stage>.json holds: the stage's view of the cell; for training, also the checksums of
    corrupt model files it replaced (so that finding one reruns the training)."""
    view = stage_view(cell_of(w), w.stage)
    rebuilds = REBUILDS.get((w.dataset, w.method, int(w.seed)))
    if w.stage == "train" and rebuilds:
        view["rebuilt_after_corrupt_models"] = rebuilds
    return view


def cells_of(dataset):
    return [(d, m, s) for d, m, s in CELLS if d == dataset]


RUNS = [run_dir(d, m, s) for d, m, s in CELLS]
GAP_CELLS = [c for c in CELLS if RESOLVED[c]["gaps"]["enabled"]]
GAP_DATASETS = sorted({d for d, _, _ in GAP_CELLS})


def manifest():
    """results/expected.json: the expected cells with their hashes and result files, the timing file of each
    dataset, and every job's cost files; the report checks each result against it."""
    expected = []
    for entry, key in zip(expected_cells(config, RESOLVED), CELLS):
        run = run_dir(*key)
        entry["files"] = {"metrics": f"{run}/metrics.json", "points": f"{run}/points.parquet",
                          "model_checksum": f"{run}/model.pt.sha256",
                          "gaps": f"{run}/gaps.json" if key in GAP_CELLS else None}
        expected.append(entry)
    costs = [{"rule": "prepare_data", "label": f"prepare {d}", "benchmark": f"data/prepared/{d}.benchmark.tsv",
              "cost": f"data/prepared/{d}.cost.json"} for d in DATASETS]
    for d, m, s in CELLS:
        run = run_dir(d, m, s)
        stages = ["train", "evaluate"] + (["gaps"] if (d, m, s) in GAP_CELLS else [])
        costs += [{"rule": stage, "label": f"{stage} {d}/{m}/seed{s}", "benchmark": f"{run}/{stage}.benchmark.tsv",
                   "cost": f"{run}/{stage}.cost.json"} for stage in stages]
    costs += [{"rule": "timing", "label": f"timing {d}", "benchmark": f"{TIMING.format(dataset=d)}.benchmark.tsv",
               "cost": f"{TIMING.format(dataset=d)}.cost.json"} for d in DATASETS]
    return {"cells": expected, "datasets": {d: {"timing": f"{TIMING.format(dataset=d)}.json"} for d in DATASETS},
            "costs": costs, "published": PUBLISHED}


MANIFEST = manifest()
REPORT_FILES = expand("results/leaderboard.{ext}", ext=["md", "csv", "tex", "parquet"])
PARETO_PLOTS = expand("results/pareto_{dataset}.png", dataset=DATASETS)
CURVES = expand("results/curves_{dataset}.png", dataset=DATASETS)

# A model file that no longer matches its checksum (or has none: an older version) is never read: a copy is
# kept as model.pt.corrupt and its checksum is appended to model.pt.rebuilds, a list that the cell's
# cell/train.json carries. The changed training input makes Snakemake retrain the cell (resuming from its
# checkpoint where there is one) and rerun everything computed from it. (Deleting or touching the model
# would not do: Snakemake does not rebuild a missing intermediate file whose dependants are complete, and
# compares checksums, not only times.)
REBUILDS = {}
for key in CELLS:
    model = f"{run_dir(*key)}/model.pt"
    seen = open(model + ".rebuilds").read().split() if os.path.exists(model + ".rebuilds") else []
    if os.path.exists(model) and (problem := verify_model_file(model)):
        shutil.copyfile(model, model + ".corrupt")
        if (digest := sha256_of(model)) not in seen:
            seen.append(digest)
            write_text(model + ".rebuilds", "\n".join(seen) + "\n")
        print(f"amortbench: {problem}: kept a copy as {model}.corrupt; the cell will be trained again",
              file=sys.stderr)
    if seen:
        REBUILDS[key] = seen


report: "report/workflow.rst"


FORK_SERVER = {}  # its socket, once onstart has started it


onstart:
    # Local runs: one process imports torch and the suite once and forks every job from there (about 1.5 s
    # of start-up saved per job; benchmarks/forkserver.py). onstart runs only when jobs will run (not for a
    # dry run); a cluster executor's jobs run themselves.
    if workflow.local_exec:
        FORK_SERVER["socket"] = forkserver.start_for_local_run(ROOT)


onsuccess:
    forkserver.stop(FORK_SERVER.get("socket"))


onerror:
    # With --keep-going the other cells finish first; compile what exists, so the leaderboard marks the
    # failed cells as missing and results of other configurations as stale (never as ok).
    if os.path.exists("results/expected.json"):
        shell("python -m benchmarks.cli report --manifest results/expected.json --out-dir results"
              " > results/report.partial.log 2>&1 || true")
    forkserver.stop(FORK_SERVER.get("socket"))


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    seed=r"\d+",


localrules:
    all,
    cell,
    manifest,


rule all:
    """The reports and every result they are made from: after a failed run the partial report (onerror) exists,
    so listing the results here is what makes the rerun finish the missing ones."""
    input:
        REPORT_FILES,
        PARETO_PLOTS,
        CURVES,
        "results/index.html",
        [f"{run}/{name}" for run in RUNS for name in ("metrics.json", "points.parquet", "samples.png")],
        [TIMING.format(dataset=d) + ".json" for d in DATASETS],
        [f"{run_dir(*c)}/gaps.json" for c in GAP_CELLS],


rule manifest:
    output:
        "results/expected.json",
    params:
        content=json.dumps(MANIFEST, sort_keys=True),
    shell:
        "printf '%s\\n' {params.content:q} > {output:q}.part && mv {output:q}.part {output:q}"


rule cell:
    """The resolved configuration of one cell as one stage reads it (cell/train.json, cell/eval.json, ...)."""
    output:
        RUN + "/cell/{stage}.json",
    params:
        content=lambda w: json.dumps(stage_content(w), sort_keys=True),
    wildcard_constraints:
        stage="|".join(STAGES),
    shell:
        "printf '%s\\n' {params.content:q} > {output:q}.part && mv {output:q}.part {output:q}"


rule prepare_data:
    output:
        data="data/prepared/{dataset}.pt",
        checksum="data/prepared/{dataset}.pt.sha256",
        cost="data/prepared/{dataset}.cost.json",
    params:
        kind=lambda w: dataset_kind(config, w.dataset),
        options=lambda w: json.dumps(data_options(config, w.dataset), sort_keys=True),
        data_dir="data",
    log:
        "data/prepared/{dataset}.log",
    benchmark:
        "data/prepared/{dataset}.benchmark.tsv"
    resources:
        **resources_of("prepare_data"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "python -m benchmarks.cli prepare {params.kind} --options {params.options:q}"
        " --data-dir {params.data_dir:q} --out {output.data:q} --cost {output.cost:q} > {log:q} 2>&1"


rule train:
    input:
        data="data/prepared/{dataset}.pt",
        cell=RUN + "/cell/train.json",
    output:
        model=RUN + "/model.pt",
        checksum=RUN + "/model.pt.sha256",
        history=RUN + "/train_log.csv",
        cost=RUN + "/train.cost.json",
    params:
        state_dir=RUN + "/state",
    log:
        RUN + "/train.log",
    benchmark:
        RUN + "/train.benchmark.tsv"
    threads: THREADS
    resources:
        **resources_of("train"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "python -m benchmarks.cli train --cell {input.cell:q} --data {input.data:q} --model {output.model:q}"
        " --history {output.history:q} --state-dir {params.state_dir:q} --threads {threads} --no-progress"
        " --cost {output.cost:q} > {log:q} 2>&1"


rule evaluate:
    input:
        data="data/prepared/{dataset}.pt",
        model=RUN + "/model.pt",
        cell=RUN + "/cell/eval.json",
    output:
        metrics=RUN + "/metrics.json",
        points=RUN + "/points.parquet",
        reconstructions=report(
            RUN + "/reconstructions.png",
            caption="report/reconstructions.rst",
            category="Reconstructions",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
        samples=report(
            RUN + "/samples.png",
            caption="report/samples.rst",
            category="Samples",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
        cost=RUN + "/evaluate.cost.json",
    log:
        RUN + "/evaluate.log",
    benchmark:
        RUN + "/evaluate.benchmark.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "python -m benchmarks.cli evaluate --cell {input.cell:q} --data {input.data:q} --model {input.model:q}"
        " --out {output.metrics:q} --points {output.points:q} --reconstructions {output.reconstructions:q}"
        " --samples {output.samples:q} --threads {threads} --cost {output.cost:q} > {log:q} 2>&1"


rule timing:
    """All trained cells of a dataset, timed round-robin in one process. `threads: workflow.cores` reserves
    every core, so the local scheduler runs nothing beside it (the torch threads stay the config's)."""
    input:
        data="data/prepared/{dataset}.pt",
        cells=lambda w: [f"{run_dir(*c)}/cell/timing.json" for c in cells_of(w.dataset)],
        models=lambda w: [f"{run_dir(*c)}/model.pt" for c in cells_of(w.dataset)],
    output:
        timing=TIMING + ".json",
        cost=TIMING + ".cost.json",
    log:
        TIMING + ".log",
    benchmark:
        TIMING + ".benchmark.tsv"
    threads: all_cores
    resources:
        **resources_of("timing"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "python -m benchmarks.cli timing --cells {input.cells:q} --models {input.models:q} --data {input.data:q}"
        f" --out {{output.timing:q}} --threads {THREADS} --cost {{output.cost:q}} > {{log:q}} 2>&1"


rule gaps:
    input:
        data="data/prepared/{dataset}.pt",
        model=RUN + "/model.pt",
        cell=RUN + "/cell/gaps.json",
    output:
        gaps=RUN + "/gaps.json",
        cost=RUN + "/gaps.cost.json",
    log:
        RUN + "/gaps.log",
    benchmark:
        RUN + "/gaps.benchmark.tsv"
    threads: THREADS
    resources:
        **resources_of("gaps"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "python -m benchmarks.cli gaps --cell {input.cell:q} --data {input.data:q} --model {input.model:q}"
        " --out {output.gaps:q} --threads {threads} --cost {output.cost:q} > {log:q} 2>&1"


rule report:
    input:
        manifest="results/expected.json",
        published=PUBLISHED,
        metrics=[f"{run}/metrics.json" for run in RUNS],
        points=[f"{run}/points.parquet" for run in RUNS],
        samples=[f"{run}/samples.png" for run in RUNS],
        timings=[TIMING.format(dataset=d) + ".json" for d in DATASETS],
        gaps=[f"{run_dir(*c)}/gaps.json" for c in GAP_CELLS],
        costs=[c[k] for c in MANIFEST["costs"] for k in ("benchmark", "cost")],
    output:
        REPORT_FILES,
        [report(p, caption="report/pareto.rst", category="Pareto plots") for p in PARETO_PLOTS],
        [report(p, caption="report/curves.rst", category="Training curves") for p in CURVES],
        page=report("results/index.html", caption="report/leaderboard.rst", category="Leaderboards"),
        plotly="results/plotly.min.js",
        long=expand("results/metrics_long.{ext}", ext=["csv", "parquet"]),
        costs=expand("results/costs.{ext}", ext=["md", "csv"]),
        environment="results/ENVIRONMENT.md",
        gap_tables=expand("results/gaps.{ext}", ext=["md", "csv", "tex"]) if GAP_CELLS else [],
        gap_plots=[
            report(p, caption="report/gaps.rst", category="Inference gaps")
            for p in expand("results/gaps_{dataset}.png", dataset=GAP_DATASETS)
        ],
    params:
        out_dir="results",
    log:
        "results/report.log",
    resources:
        **resources_of("report"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "python -m benchmarks.cli report --manifest {input.manifest:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
