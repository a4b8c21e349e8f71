"""``moeacc run`` and ``moeacc check``."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.cli.common import (backends_or_fail, cases_options, console, device_or_fail, fail, load, parse_tiers,
                                split_backend_patterns)
from harness.cli.tables import print_rows
from harness.device import device_slug, package_versions
from harness.report import ReportError, RunWriter, new_document
from harness.results import Status
from harness.runner import run_matrix


@click.command()
@cases_options
@click.option("--backend", "backends", default=None, help="backend or probe name glob(s), comma-separated (default: all)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--out", "out_root", type=click.Path(), default="reports", show_default=True,
              help="reports root; the run goes to <out>/<device>/<run-id>/")
@click.option("--run-id", default=None, help="run folder name (default: UTC timestamp)")
@click.option("--tier", default=None, help="case tiers to include: smoke,gpu,nightly (default: smoke on CPU, all on GPU)")
@click.option("--diagnose/--no-diagnose", default=True, show_default=True, help="run the fault catalogue on failures")
@click.option("--code-under-test", default=None, help="commit or version of the kernel code under test, for the report")
@click.option("--probes/--no-probes", default=True, show_default=True,
              help="also run the single-kernel probes (quantizers, activations, FP8 GEMMs) whose gate passes")
@click.option("--heatmaps", is_flag=True, help="write an error-structure PNG for each failing row into the run folder")
@click.option("--quiet", is_flag=True, help="no progress bar")
def run(cases_paths, pattern, tags, backends, device, out_root, run_id, tier, diagnose, code_under_test, probes,
        heatmaps, quiet):
    """Run cases against backends; write results.json + report.md; exit 1 if any row fails or errors."""
    from harness.probes import all_probes, run_probes
    dev, info = device_or_fail(device)
    cases = load(cases_paths, pattern, tags, parse_tiers(tier, info["kind"]))
    back_pats, probe_pats = split_backend_patterns(backends, [p.name for p in all_probes()])
    chosen = [] if back_pats == "" else backends_or_fail(back_pats)
    run_id = run_id or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_root) / device_slug(info) / run_id
    try:
        writer = RunWriter(out_dir, new_document(info, package_versions(), run_id, sys.argv, code_under_test))
    except ReportError as e:
        fail(str(e))
    console.print(f"moeacc: {len(cases)} cases x {len(chosen)} backends on {info['kind']} ({info['name']}) -> {out_dir}",
                  highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet or not console.is_terminal, transient=True) as prog:
        task = prog.add_task("running", total=len(cases) * len(chosen))

        def on_row(row):
            writer.add(row)
            prog.update(task, advance=1, description=f"{row.case} / {row.backend}"[:60])

        rows = run_matrix(cases, chosen, dev, info["kind"], on_row, diagnose_failures=diagnose,
                          heatmap_dir=out_dir if heatmaps else None)
        if probes:
            import fnmatch
            ps = [p for p in all_probes() if p.device_gate(info["kind"]) is None
                  and any(fnmatch.fnmatchcase(p.name, pat) for pat in probe_pats)]
            rows += run_probes(ps, dev, info["kind"], writer.add)
    doc = writer.close()
    print_rows(rows)
    s = doc["summary"]["total"]
    console.print(f"{s['pass']} passed, {s['fail']} failed, {s['error']} errors, {s['skipped']} skipped; "
                  f"report: {out_dir / 'report.md'}", highlight=False)
    sys.exit(1 if s["fail"] or s["error"] else 0)


@click.command()
@cases_options
@click.option("--backend", required=True, help="one backend name")
@click.option("--device", default="auto", show_default=True)
def check(cases_paths, pattern, tags, backend, device):
    """For `git bisect run`: exit 0 pass, 1 fail, 125 cannot run here (gate, build error, bad case)."""
    from harness.backends.registry import select_backends
    from harness.cases import CaseError, load_cases
    from harness.cli.common import DEFAULT_CASES
    from harness.device import device_info, resolve_device
    try:
        dev = resolve_device(device)
        cases = load_cases(cases_paths or [DEFAULT_CASES], pattern, tuple(tags))
        chosen = select_backends(backend)
    except (CaseError, KeyError, RuntimeError) as e:
        console.print(f"moeacc check: cannot run: {e.args[0] if e.args else e}", highlight=False)
        sys.exit(125)
    if not cases or len(chosen) != 1:
        console.print(f"moeacc check: cannot run: {len(cases)} cases and {len(chosen)} backends matched (need >=1 and 1)")
        sys.exit(125)
    rows = run_matrix(cases, chosen, dev, device_info(dev)["kind"], on_row=lambda r: None)
    for r in rows:
        console.print(f"{r.status.value:7s} {r.case} / {r.backend}: {r.message}", highlight=False)
    statuses = {r.status for r in rows}
    if Status.FAIL in statuses:
        sys.exit(1)
    if Status.ERROR in statuses or statuses == {Status.SKIPPED}:
        sys.exit(125)
    sys.exit(0)
