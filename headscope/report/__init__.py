"""Self-contained HTML reports and result comparisons."""

from headscope.report.build import build_report
from headscope.report.compare import Comparison, compare_results
from headscope.report.runs import read_runs

__all__ = ["Comparison", "build_report", "compare_results", "read_runs"]
