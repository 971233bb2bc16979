"""The `report:` options of a suite config (globally, or per dataset entry)."""
from __future__ import annotations

from pydantic import Field

from ..options import Options


class Convergence(Options):
    """A row is converged when its best validation ELBO over the final `window` of training (a fraction of
    the epochs run, at least one epoch) beats the best before it by at most `tolerance` nats."""

    window: float = Field(0.1, gt=0, le=0.5)
    tolerance: float = Field(0.1, ge=0)


class ReportConfig(Options):
    reference_method: str = "avi"  # the paired differences (Δ test NLL) are taken against this method
    confidence: float = Field(0.95, gt=0, lt=1)  # of the paired intervals
    convergence: Convergence = Convergence()
