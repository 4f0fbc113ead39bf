"""Self-contained HTML reports and result comparisons."""

from headscope.report.build import build_report
from headscope.report.compare import Comparison, compare_results

__all__ = ["Comparison", "build_report", "compare_results"]
