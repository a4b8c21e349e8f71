"""Reports: run folders (``writer``), markdown (``markdown``), merge and diff (``merge``), and the
scrubbing that keeps machine paths out of them (``paths``)."""

from harness.report.markdown import render_markdown
from harness.report.merge import diff_runs, merge_runs, render_diff_markdown, render_matrix_markdown
from harness.report.writer import SCHEMA, SCHEMA_VERSION, ReportError, RunWriter, load_run, new_document

__all__ = ["SCHEMA", "SCHEMA_VERSION", "ReportError", "RunWriter", "diff_runs", "load_run", "merge_runs", "new_document",
           "render_diff_markdown", "render_markdown", "render_matrix_markdown"]
