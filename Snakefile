"""amortbench pipeline: prepare data -> train -> evaluate -> report.

One generic rule per stage; {dataset}, {method} and {seed} are wildcards, so a new method or dataset
needs no rule of its own. Run with a config, e.g.

    snakemake --cores 2 --configfile config/default.yaml
"""
import json
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

ROOT = workflow.basedir
sys.path.insert(0, ROOT)

from benchmarks.config import (  # noqa: E402
    cell_config,
    cells,
    data_options,
    dataset_kind,
    gaps_enabled,
    training_cell,
    validate,
)


if not config:
    raise ValueError(
        "no configuration given: run `snakemake --configfile config/default.yaml` (or another config)"
    )
validate(config)

THREADS = config.get("threads", 1)
CELLS = cells(config)
DATASETS = sorted({dataset for dataset, _, _ in CELLS})
PYTHON = f"PYTHONPATH={ROOT} {sys.executable}"
DEFAULT_RESOURCES = {
    "prepare_data": {"mem_mb": 8000},
    "train": {"mem_mb": 4000},
    "evaluate": {"mem_mb": 4000},
    "figures": {"mem_mb": 4000},
    "gaps": {"mem_mb": 4000},
    "report": {"mem_mb": 2000},
}


def resources_of(rule_name):
    """Per-rule resources: defaults above, overridden by the config's `resources:` (e.g. gpu: 1)."""
    return {**DEFAULT_RESOURCES[rule_name], **(config.get("resources") or {}).get(rule_name, {})}


REPORT_FILES = expand("results/leaderboard.{ext}", ext=["md", "csv", "tex", "parquet"])
PARETO_PLOTS = expand("results/pareto_{dataset}.png", dataset=DATASETS)
CURVES = expand("results/curves_{dataset}.png", dataset=DATASETS)
RUNS = [f"results/{d}/{m}/seed{s}" for d, m, s in CELLS]
GAP_RUNS = [f"results/{d}/{m}/seed{s}" for d, m, s in CELLS if gaps_enabled(config, d, m, s)]


def stage_options(section):
    """A cell's options of one stage (eval, gaps) as JSON: a rule parameter, so editing them reruns
    only that stage."""
    return lambda w: json.dumps(cell_config(config, w.dataset, w.method, int(w.seed))[section], sort_keys=True)



report: "report/workflow.rst"


onerror:
    # With --keep-going the other cells finish first; compile what exists so the leaderboard
    # marks the failed cells as missing (a later successful run replaces it).
    shell(
        "{PYTHON} -m benchmarks.cli report --results-dir results --out-dir results"
        " --expected {expected:q} > results/report.partial.log 2>&1 || true",
        expected=json.dumps(CELLS),
    )


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    seed=r"\d+",


localrules:
    all,


rule all:
    input:
        REPORT_FILES,
        PARETO_PLOTS,
        CURVES,
        "results/index.html",
        [f"{run}/samples.png" for run in RUNS],


rule prepare_data:
    output:
        data="data/prepared/{dataset}.pt",
        checksum="data/prepared/{dataset}.pt.sha256",
    params:
        kind=lambda w: dataset_kind(config, w.dataset),
        options=lambda w: json.dumps(data_options(config, w.dataset), sort_keys=True),
        python=PYTHON,
        data_dir=lambda w, output: Path(output.data).parent.parent,
    log:
        "data/prepared/{dataset}.log",
    benchmark:
        "data/prepared/{dataset}.benchmark.tsv"
    resources:
        **resources_of("prepare_data"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "{params.python} -m benchmarks.cli prepare {params.kind} --options {params.options:q}"
        " --data-dir {params.data_dir:q} --out {output.data:q} > {log:q} 2>&1"


rule train:
    input:
        data="data/prepared/{dataset}.pt",
    output:
        model="results/{dataset}/{method}/seed{seed}/model.pt",
        history="results/{dataset}/{method}/seed{seed}/train_log.csv",
    params:
        cell=lambda w: json.dumps(
            training_cell(cell_config(config, w.dataset, w.method, int(w.seed))), sort_keys=True
        ),
        python=PYTHON,
        state_dir="results/{dataset}/{method}/seed{seed}/state",
    log:
        "results/{dataset}/{method}/seed{seed}/train.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/train.benchmark.tsv"
    threads: THREADS
    resources:
        **resources_of("train"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "{params.python} -m benchmarks.cli train --cell {params.cell:q} --data {input.data:q}"
        " --out {output.model:q} --log-csv {output.history:q} --state-dir {params.state_dir:q}"
        " --threads {threads} --no-progress > {log:q} 2>&1"


rule evaluate:
    input:
        data="data/prepared/{dataset}.pt",
        model="results/{dataset}/{method}/seed{seed}/model.pt",
    output:
        "results/{dataset}/{method}/seed{seed}/metrics.json",
    params:
        python=PYTHON,
        options=stage_options("eval"),
    log:
        "results/{dataset}/{method}/seed{seed}/evaluate.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/evaluate.benchmark.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "{params.python} -m benchmarks.cli evaluate --model {input.model:q} --data {input.data:q}"
        " --eval {params.options:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule gaps:
    input:
        data="data/prepared/{dataset}.pt",
        model="results/{dataset}/{method}/seed{seed}/model.pt",
    output:
        "results/{dataset}/{method}/seed{seed}/gaps.json",
    params:
        python=PYTHON,
        options=stage_options("gaps"),
    log:
        "results/{dataset}/{method}/seed{seed}/gaps.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/gaps.benchmark.tsv"
    threads: THREADS
    resources:
        **resources_of("gaps"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "{params.python} -m benchmarks.cli gaps --model {input.model:q} --data {input.data:q}"
        " --options {params.options:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule figures:
    input:
        data="data/prepared/{dataset}.pt",
        model="results/{dataset}/{method}/seed{seed}/model.pt",
    output:
        reconstructions=report(
            "results/{dataset}/{method}/seed{seed}/reconstructions.png",
            caption="report/reconstructions.rst",
            category="Reconstructions",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
        samples=report(
            "results/{dataset}/{method}/seed{seed}/samples.png",
            caption="report/samples.rst",
            category="Samples",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
    params:
        python=PYTHON,
        out_dir=lambda w, output: Path(output.samples).parent,
    log:
        "results/{dataset}/{method}/seed{seed}/figures.log",
    resources:
        **resources_of("figures"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "{params.python} -m benchmarks.cli figures --model {input.model:q} --data {input.data:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule report:
    input:
        metrics=[f"{run}/metrics.json" for run in RUNS],
        histories=[f"{run}/train_log.csv" for run in RUNS],
        gaps=[f"{run}/gaps.json" for run in GAP_RUNS],
    output:
        REPORT_FILES,
        [report(p, caption="report/pareto.rst", category="Pareto plots") for p in PARETO_PLOTS],
        [report(p, caption="report/curves.rst", category="Training curves") for p in CURVES],
        page=report("results/index.html", caption="report/leaderboard.rst", category="Leaderboards"),
        gap_tables=expand("results/gaps.{ext}", ext=["md", "csv", "tex"]) if GAP_RUNS else [],
        gap_plots=[
            report(p, caption="report/gaps.rst", category="Inference gaps")
            for p in expand("results/gaps_{dataset}.png", dataset=sorted({r.split("/")[1] for r in GAP_RUNS}))
        ],
    params:
        python=PYTHON,
        expected=json.dumps(CELLS),
        out_dir=lambda w, output: Path(output.page).parent,
    log:
        "results/report.log",
    resources:
        **resources_of("report"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "{params.python} -m benchmarks.cli report {input.metrics:q} --out-dir {params.out_dir:q}"
        " --expected {params.expected:q} --gaps {input.gaps:q} > {log:q} 2>&1"
