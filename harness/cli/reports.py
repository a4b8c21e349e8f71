"""``moeacc merge``, ``diff`` and ``report``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from harness.cli.common import fail
from harness.report import (ReportError, diff_runs, load_run, merge_runs, render_diff_markdown, render_markdown,
                            render_matrix_markdown)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(), default=None, help="write matrix.json and matrix.md into this folder")
def merge(runs, out):
    """Merge runs (folders or results.json) from several runners into one case x device matrix."""
    try:
        docs = [load_run(r) for r in runs]
    except ReportError as e:
        fail(str(e))
    m = merge_runs(docs)
    md = render_matrix_markdown(m)
    if out:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "matrix.json").write_text(json.dumps(m, indent=1))
            (Path(out) / "matrix.md").write_text(md)
        except OSError as e:
            fail(f"{out}: cannot write the matrix here: {e.strerror or e}")
    click.echo(md)


@click.command()
@click.argument("base", type=click.Path(exists=True))
@click.argument("new", type=click.Path(exists=True))
@click.option("--margin", default=0.25, show_default=True, help="relative worsening of rel_l2/mismatch that counts")
@click.option("--abs-margin", default=0.002, show_default=True, help="absolute worsening that must also be exceeded")
@click.option("--json", "as_json", is_flag=True, help="print the diff as JSON")
def diff(base, new, margin, abs_margin, as_json):
    """Diff NEW against BASE; exit 1 on regressions."""
    try:
        d = diff_runs(load_run(base), load_run(new), margin, abs_margin)
    except ReportError as e:
        fail(str(e))
    click.echo(json.dumps(d, indent=1) if as_json else render_diff_markdown(d))
    sys.exit(1 if d["regressions"] else 0)


@click.command()
@click.argument("run_path", type=click.Path(exists=True))
def report(run_path):
    """Re-render report.md of a run (also of an interrupted one) to stdout."""
    try:
        click.echo(render_markdown(load_run(run_path)))
    except ReportError as e:
        fail(str(e))
