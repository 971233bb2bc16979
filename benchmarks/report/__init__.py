"""Reports: check every result against the current config, then leaderboards, gap tables, plots and pages.

``build.build_report`` writes them (see its docstring); ``config.ReportConfig`` is the `report:` section.
This file imports nothing heavy, so that reading the config does not load pandas or matplotlib.
"""
from .config import ReportConfig  # noqa: F401
