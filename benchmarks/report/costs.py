"""What a run cost, per stage: from Snakemake's benchmark files (wall, CPU, peak memory of each job) and the
jobs' own timers (start-up = process start to the stage's first line of work: Python, imports; work = the
rest: reading inputs, computing, writing outputs)."""
from __future__ import annotations

import math

import pandas as pd


def stage_costs(rows: list[dict]) -> pd.DataFrame:
    """One row per rule: jobs, wall s, CPU s, peak memory, start-up and work seconds, start-up share,
    and the most expensive job; sorted by wall time, a total row last."""
    if not rows:
        return pd.DataFrame()
    jobs = pd.DataFrame(rows)
    for column in ("wall_s", "cpu_s", "max_rss_mb", "startup_s", "work_s"):
        if column not in jobs:
            jobs[column] = math.nan
    out = []
    for rule, group in jobs.groupby("rule"):
        worst = group.loc[group["wall_s"].fillna(group["work_s"]).idxmax()]
        startup, work = group["startup_s"].sum(min_count=1), group["work_s"].sum(min_count=1)
        out.append({"stage": rule, "jobs": len(group), "wall s": group["wall_s"].sum(min_count=1),
                    "CPU s": group["cpu_s"].sum(min_count=1), "peak MB": group["max_rss_mb"].max(),
                    "start-up s": startup, "work s": work,
                    "start-up share": startup / (startup + work) if startup + work > 0 else math.nan,
                    "most expensive job": worst["label"],
                    "its wall s": worst["wall_s"] if not math.isnan(worst["wall_s"]) else worst["work_s"]})
    table = pd.DataFrame(out).sort_values("wall s", ascending=False, na_position="last")
    total = {"stage": "all", "jobs": int(table["jobs"].sum()), "wall s": table["wall s"].sum(min_count=1),
             "CPU s": table["CPU s"].sum(min_count=1), "peak MB": table["peak MB"].max(),
             "start-up s": table["start-up s"].sum(min_count=1), "work s": table["work s"].sum(min_count=1)}
    total["start-up share"] = total["start-up s"] / (total["start-up s"] + total["work s"])
    result = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    result.attrs["forked"] = int(jobs["forked"].fillna(False).astype(bool).sum()) if "forked" in jobs else 0
    return result


def summary(table: pd.DataFrame) -> str:
    """One sentence naming the most expensive stage and job."""
    if table.empty:
        return "no job costs recorded"
    stages = table[table["stage"] != "all"]
    top = stages.iloc[0]
    total = table[table["stage"] == "all"].iloc[0]
    text = (f"Most expensive stage: {top['stage']} ({top['wall s']:.0f} s of {total['wall s']:.0f} s of job wall time, "
            f"{top['jobs']} jobs); most expensive job: {top['most expensive job']} ({top['its wall s']:.0f} s). "
            f"Job start-up (Python and imports) is {100 * total['start-up share']:.0f}% of the jobs' time.")
    if table.attrs.get("forked"):
        text += (f" {table.attrs['forked']} of {int(total['jobs'])} jobs ran in the fork server: their start-up is "
                 "the wait for it, and their peak memory includes the imports they share with it.")
    return text
