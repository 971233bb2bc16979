"""`scale: smoke`: any suite config cut down to run end to end in seconds per job, so that a config (a paper
protocol above all) cannot rot unnoticed: tests run every config/papers/*.yaml this way.

It acts on resolved cells (every option filled in), so it means the same whatever level set an option:
* training: 1 epoch (warm-up at most 1 epoch, a wall-clock budget at most 5 s);
* data: at most 200 training, 50 validation and 50 test points where the dataset has such options
  (subsets of real data, sizes of generated data), vocabularies of 200 words and sequences of 20 tokens,
  images of 16 pixels, 11^2 quadrature points, a generated oracle's widths at most 32; the expected line
  counts and checksums of full-size text files are not checked (the smoke runs on small fixtures);
* models: widths (hidden units, embeddings, features) at most 32, conv channels at most 8;
* methods: hidden layers at most 16 units, contexts at most 8 (steps, step sizes and the rest are kept);
* evaluation: 10 importance samples on at most 20 test points; timing: 1 round of 1 call;
* gaps: 4 points per split, 10 samples, 20 local-optimization steps, 5 AIS distributions with 2 chains.
"""
from __future__ import annotations

import copy
from typing import Any

DATA = {"train_subset": 200, "valid_subset": 50, "test_subset": 50, "n_train": 200, "n_valid": 50, "n_test": 50,
        "vocab_size": 200, "max_length": 20, "image_size": 16, "quadrature_points": 11,
        "hidden": 32, "embed_dim": 32}  # the last two: a generated oracle's sizes, which a fixed model must match
DATA_DROPPED = ("expected_lines", "checksums")  # integrity checks of full-size text files
MODEL = {"hidden": 32, "embed_dim": 32, "encoder_hidden": 32, "encoder_embed_dim": 32, "features": 32, "channels": 8}
METHOD = {"hidden": 16, "made_hidden": 16, "coupling_hidden": 16, "context_dim": 8}
EVAL = {"is_samples": 10, "max_test_points": 20}
TIMING = {"rounds": 1, "repeats": 1, "warmup": 0}
GAPS = {"elbo_samples": 10, "eval_samples": 10, "family_batch_size": 2}
LOCAL = {"max_steps": 20, "check_every": 5, "patience": 1, "samples": 5}
AIS = {"intermediate": 5, "chains": 2}


def _cap(value: Any, cap: int) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return min(value, cap)
    if isinstance(value, (list, tuple)):
        return [_cap(v, cap) for v in value]
    return value


def _capped(section: dict, caps: dict) -> dict:
    """`section` (resolved: every option present) with the options named in `caps` capped; a subset option
    at None (all points) takes the cap."""
    out = dict(section)
    for key, cap in caps.items():
        if key in out:
            out[key] = cap if out[key] is None and key.endswith("_subset") else _cap(out[key], cap)
    return out


def smoke_data(options: dict) -> dict:
    """A dataset's resolved `data:` options at smoke scale."""
    return _capped({k: v for k, v in options.items() if k not in DATA_DROPPED}, DATA)


def smoke_cell(cell: dict) -> dict:
    """A resolved cell at smoke scale (hashes are computed afterwards, from what runs)."""
    out = copy.deepcopy(cell)
    train = out["train"]
    train["epochs"] = 1
    train["warmup"]["epochs"] = min(train["warmup"]["epochs"], 1)
    if train["budget"]["seconds"]:
        train["budget"]["seconds"] = min(train["budget"]["seconds"], 5.0)
    out["data"] = smoke_data(out["data"])
    out["model"] = _capped(out["model"], MODEL)
    out["method_config"] = _capped(out["method_config"], METHOD)
    out["eval"].update(EVAL)
    out["timing"].update(TIMING)
    gaps = out["gaps"]
    gaps.update(GAPS)
    gaps["points"] = {split: 4 for split in gaps["points"]}
    gaps["local"].update(LOCAL)
    if gaps.get("family_local") is not None:
        gaps["family_local"].update(LOCAL)
    if gaps["ais"] is not None:
        gaps["ais"].update(AIS)
    policy = out["budget_policy"]
    policy["epochs"] = 1
    if policy.get("seconds"):
        policy["seconds"] = min(policy["seconds"], 5.0)
    return out
