"""amortbench pipeline: prepare data -> train -> evaluate -> figures -> (gaps) -> report.

One generic rule per stage; {dataset} (a config entry), {method} and {seed} are wildcards, so a new method
or dataset needs no rule of its own. Every path is built here, once; each job gets every file it reads as
an input and writes only declared outputs, with one exception: a training job's resumable checkpoint
(results/<cell>/state/last.pt) is deliberately undeclared, because Snakemake deletes the outputs of a
failed job and the checkpoint must survive exactly that. Run with a config, e.g.

    snakemake --cores 2 --configfile config/default.yaml
"""
import json
import os
import shlex
import sys

from snakemake.utils import min_version

min_version("9.0")

ROOT = workflow.basedir
sys.path.insert(0, ROOT)

from benchmarks.io import write_json  # noqa: E402
from benchmarks.suite import STAGES, cells, data_options, dataset_kind, parse_suite, resolve_cell, stage_view  # noqa: E402

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
DEFAULT_RESOURCES = {
    "prepare_data": {"mem_mb": 8000},
    "train": {"mem_mb": 4000},
    "evaluate": {"mem_mb": 4000},
    "figures": {"mem_mb": 4000},
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


def stage_cell(w):
    """What one stage of a cell reads: the cell without the other stages' sections and hashes, so a
    changed option rewrites (and reruns) only the stages it touches."""
    return stage_view(cell_of(w), w.stage)


RUNS = [run_dir(d, m, s) for d, m, s in CELLS]
GAP_CELLS = [(d, m, s) for d, m, s in CELLS if RESOLVED[(d, m, s)]["gaps"]["enabled"]]
GAP_DATASETS = sorted({d for d, _, _ in GAP_CELLS})
EXPECTED = [{"dataset": d, "method": m, "seed": s, "hashes": RESOLVED[(d, m, s)]["hashes"]} for d, m, s in CELLS]
REPORT_FILES = expand("results/leaderboard.{ext}", ext=["md", "csv", "tex", "parquet"])
PARETO_PLOTS = expand("results/pareto_{dataset}.png", dataset=DATASETS)
CURVES = expand("results/curves_{dataset}.png", dataset=DATASETS)


report: "report/workflow.rst"


onerror:
    # With --keep-going the other cells finish first; compile what exists so the leaderboard
    # marks the failed cells as missing (a later successful run replaces it).
    metrics = [f"{run}/metrics.json" for run in RUNS if os.path.exists(f"{run}/metrics.json")]
    if metrics and os.path.exists("results/expected.json"):
        shell("python -m benchmarks.cli report {metrics:q} --expected results/expected.json --out-dir results"
              " > results/report.partial.log 2>&1 || true")


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    seed=r"\d+",


localrules:
    all,
    cell,
    expected,


rule all:
    input:
        REPORT_FILES,
        PARETO_PLOTS,
        CURVES,
        "results/index.html",
        [f"{run}/samples.png" for run in RUNS],


rule expected:
    """The cells of this config and the hashes their results must carry (read by the report)."""
    output:
        "results/expected.json",
    params:
        expected=json.dumps(EXPECTED, sort_keys=True),
    run:
        write_json(output[0], json.loads(params.expected))


rule cell:
    """The resolved configuration of one cell as one stage reads it (cell/train.json, cell/eval.json, ...)."""
    output:
        RUN + "/cell/{stage}.json",
    params:
        cell=lambda w: json.dumps(stage_cell(w), sort_keys=True),
    wildcard_constraints:
        stage="|".join(STAGES),
    run:
        write_json(output[0], json.loads(params.cell))


rule prepare_data:
    output:
        data="data/prepared/{dataset}.pt",
        checksum="data/prepared/{dataset}.pt.sha256",
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
        " --data-dir {params.data_dir:q} --out {output.data:q} > {log:q} 2>&1"


rule train:
    input:
        data="data/prepared/{dataset}.pt",
        cell=RUN + "/cell/train.json",
    output:
        model=RUN + "/model.pt",
        checksum=RUN + "/model.pt.sha256",
        history=RUN + "/train_log.csv",
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
        " > {log:q} 2>&1"


rule evaluate:
    input:
        data="data/prepared/{dataset}.pt",
        model=RUN + "/model.pt",
        cell=RUN + "/cell/eval.json",
    output:
        RUN + "/metrics.json",
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
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule gaps:
    input:
        data="data/prepared/{dataset}.pt",
        model=RUN + "/model.pt",
        cell=RUN + "/cell/gaps.json",
    output:
        RUN + "/gaps.json",
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
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule figures:
    input:
        data="data/prepared/{dataset}.pt",
        model=RUN + "/model.pt",
        cell=RUN + "/cell/train.json",
    output:
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
    log:
        RUN + "/figures.log",
    resources:
        **resources_of("figures"),
    conda:
        "envs/amortbench.yaml"
    shell:
        "python -m benchmarks.cli figures --cell {input.cell:q} --data {input.data:q} --model {input.model:q}"
        " --reconstructions {output.reconstructions:q} --samples {output.samples:q} --device cpu > {log:q} 2>&1"


rule report:
    input:
        expected="results/expected.json",
        metrics=[f"{run}/metrics.json" for run in RUNS],
        gaps=[f"{run_dir(*c)}/gaps.json" for c in GAP_CELLS],
    output:
        REPORT_FILES,
        [report(p, caption="report/pareto.rst", category="Pareto plots") for p in PARETO_PLOTS],
        [report(p, caption="report/curves.rst", category="Training curves") for p in CURVES],
        page=report("results/index.html", caption="report/leaderboard.rst", category="Leaderboards"),
        long=expand("results/metrics_long.{ext}", ext=["csv", "parquet"]),
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
        "python -m benchmarks.cli report {input.metrics:q} --expected {input.expected:q}"
        " --gaps {input.gaps:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
