"""The `report:` options of a suite config (globally, or per dataset entry)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..options import Options


class Convergence(Options):
    """A row is converged when its best validation ELBO over the final `window` of training (a fraction of
    the epochs run, at least one epoch) beats the best before it by at most `tolerance` nats."""

    window: float = Field(0.1, gt=0, le=0.5)
    tolerance: float = Field(0.1, ge=0)


class Published(Options):
    """The published table a dataset entry reproduces: its rows of config/published.csv (paper, table, and
    the dataset and setting columns where given) are shown beside the reproduced numbers."""

    paper: str
    table: str
    dataset: Optional[str] = None  # the csv's dataset column (the paper's name for the data)
    #: the csv's setting column; a list selects several (e.g. ["", "K=20"]: the rows without a setting and K=20)
    setting: Optional[str | list[str]] = None
    methods: dict[str, str] = {}  # published method name -> the suite's method (or "(true model)")
    split: Literal["train", "test"] = "test"  # gap quantities (log p(x), L[q*], gaps) compared on this split
    comparable: bool = True  # false: the data or protocol differs from the paper's; Δ shown as not comparable
    why_not_comparable: str = ""


class ReportConfig(Options):
    reference_method: str = "avi"  # the paired differences (Δ test NLL) are taken against this method
    confidence: float = Field(0.95, gt=0, lt=1)  # of the paired intervals
    convergence: Convergence = Convergence()
    published: Optional[Published] = None
