"""Dataset report: what a generated set is worth, measured on its embeddings without training a model.

Python API: `load_run(dir)`, `compute_report(run, reference, options) -> Report` (`.data` is the
JSON), `write_report(dir, out, reference=...)`, and the single measures in `synthface.report.metrics`.
The CLI is `synthface report DIR`.
"""

from synthface.report.build import Report, ReportOptions, compute_report, write_report
from synthface.report.metrics import equal_error_rate, leakage, tar_at_far, unique_identities
from synthface.report.run import Run, load_run

__all__ = [
    "Report",
    "ReportOptions",
    "Run",
    "compute_report",
    "equal_error_rate",
    "leakage",
    "load_run",
    "tar_at_far",
    "unique_identities",
    "write_report",
]
