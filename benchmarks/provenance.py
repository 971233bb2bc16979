"""Provenance recorded with every result: code version, packages, hardware, time."""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("torch", "torchvision", "numpy", "snakemake", "pandas")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD commit of the repository (with '-dirty' if tracked files changed), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_name()} ({threads} thread{'s' if threads != 1 else ''})"


def record(device, seed: int, train_hash: str) -> dict:
    return {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "hostname": platform.node(),
        "seed": seed,
        "config_hash": train_hash,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
