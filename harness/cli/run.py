"""``moeacc run`` and ``moeacc check``."""

from __future__ import annotations

from rich.markup import escape
import datetime as _dt
import os
import sys
from pathlib import Path

import click

from harness.cli.common import cases_options, console, device_or_fail, parse_rules, rule_option
from harness.cli.execute import RunPlan, execute, open_writer, resume_writer, resumed_selection
from harness.cli.tables import print_rows
from harness.device import device_slug, package_versions
from harness.backends.libapi import FORCE_ENV
from harness.report import new_document
from harness.report.paths import case_path_for_report, case_path_from_report
from harness.results import Status


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
@click.option("--isolate/--no-isolate", default=None,
              help="run backends in worker processes, so a crash or hang costs only its row [default: on a GPU]")
@click.option("--timeout", default=600.0, show_default=True, help="seconds a row may take when isolated (0: no limit)")
@click.option("--repeat", type=int, default=None,
              help="run each row this many times on identical inputs; a changing output fails it (default: each case's)")
@click.option("--resume", "resume_dir", type=click.Path(), default=None,
              help="finish an interrupted run: keep its rows, run the missing (case, backend) pairs")
@click.option("--force", is_flag=True, help="run backends outside the library versions they were written for")
@rule_option
@click.option("--quiet", is_flag=True, help="no progress bar")
def run(cases_paths, pattern, tags, backends, device, out_root, run_id, tier, diagnose, code_under_test, probes,
        heatmaps, isolate, timeout, repeat, resume_dir, force, rules, quiet):
    """Run cases against backends; write results.json + report.md; exit 1 if any row fails or errors."""
    if resume_dir:
        sel = resumed_selection(resume_dir)
        sel["cases"] = [case_path_from_report(p, resume_dir) for p in sel["cases"]]
        cases_paths, pattern, tags, backends, tier = sel["cases"], sel["case"], sel["tag"], sel["backend"], sel["tier"]
        device, probes, diagnose, heatmaps = sel["device"], sel["probes"], sel["diagnose"], sel["heatmaps"]
        repeat, rules = sel.get("repeat"), tuple(sel.get("rules") or ())
    rules = parse_rules(rules)
    if force:
        os.environ[FORCE_ENV] = "1"
    dev, info = device_or_fail(device)
    plan = RunPlan.make(cases_paths, pattern, tags, backends, tier, info, probes)
    if resume_dir:
        out_dir, writer = Path(resume_dir), resume_writer(resume_dir)
    else:
        run_id = run_id or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out_dir = Path(out_root) / device_slug(info) / run_id
        doc = new_document(info, package_versions(), run_id, ["moeacc", *sys.argv[1:]], code_under_test)
        # no machine path in the report, and --resume finds the case files from anywhere
        rel = [case_path_for_report(p, out_dir) for p in cases_paths]
        doc["selection"] = {"cases": rel, "case": pattern, "tag": list(tags), "backend": backends,
                            "tier": tier, "device": device, "probes": probes, "diagnose": diagnose, "heatmaps": heatmaps,
                            "repeat": repeat, "rules": list(rules)}
        writer = open_writer(out_dir, doc)
    done = {(r["case"], r["backend"]) for r in writer.doc["rows"]}
    isolate = info["kind"] != "cpu" if isolate is None else isolate
    console.print(f"moeacc: {len(plan.cases)} cases x {len(plan.backends)} backends on {info['kind']} ({info['name']})"
                  f"{', isolated' if isolate else ''}{f', resuming ({len(done)} rows kept)' if resume_dir else ''} -> {out_dir}",
                  highlight=False)
    rows = execute(plan, dev, info, writer, done, isolate=isolate, timeout=timeout or None, diagnose=diagnose,
                   heatmap_dir=out_dir if heatmaps else None, quiet=quiet, repeat=repeat, rules=rules)
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
@click.option("--isolate/--no-isolate", default=None, help="run in a worker process, so a crash is a verdict [default: on a GPU]")
@click.option("--timeout", default=600.0, show_default=True, help="seconds a row may take when isolated")
@click.option("--repeat", type=int, default=None, help="runs per case for the determinism check (default: each case's)")
@click.option("--force", is_flag=True, help="run outside the library versions the backend was written for")
@rule_option
def check(cases_paths, pattern, tags, backend, device, isolate, timeout, repeat, force, rules):
    """For `git bisect run`: exit 0 pass, 1 fail (wrong, nondeterministic, or the kernel crashed or
    hung), 125 cannot run here (gate, missing library, build or set-up error, bad case)."""
    from harness.backends.registry import select_backends
    from harness.cases import CaseError, load_cases
    from harness.cli.common import DEFAULT_CASES
    from harness.device import device_info, resolve_device
    try:
        dev = resolve_device(device)
        cases = load_cases(cases_paths or [DEFAULT_CASES], pattern, tuple(tags))
        chosen = select_backends(backend)
    except (CaseError, KeyError, RuntimeError) as e:
        console.print(f"moeacc check: cannot run: {escape(str(e.args[0] if e.args else e))}", highlight=False)
        sys.exit(125)
    if not cases or len(chosen) != 1:
        console.print(f"moeacc check: cannot run: {len(cases)} cases and {len(chosen)} backends matched (need >=1 and 1)")
        sys.exit(125)
    kind, rules = device_info(dev)["kind"], parse_rules(rules)
    if force:
        os.environ[FORCE_ENV] = "1"
    if (kind != "cpu") if isolate is None else isolate:
        from harness.isolation import Task, run_isolated
        from harness.runner import new_row
        rows = run_isolated([Task(c, [chosen[0].name], dev, repeat=repeat, rules=rules) for c in cases], lambda r: None,
                            lambda b, c: new_row(b, c, dev), timeout=timeout or None)
    else:
        from harness.runner import run_case
        rows = [r for c in cases for r in run_case(c, chosen, dev, kind, lambda r: None, repeat=repeat, rules=rules)]
    for r in rows:
        console.print(escape(f"{r.status.value:7s} {r.case} / {r.backend}: {r.message}"), highlight=False)
    sys.exit(check_exit_code(rows))


def check_exit_code(rows) -> int:
    """1 if any row failed or the kernel itself crashed; 125 if nothing could be judged; else 0."""
    if any(r.status is Status.FAIL or (r.status is Status.ERROR and r.failure == "crash") for r in rows):
        return 1
    if any(r.status is Status.ERROR for r in rows) or all(r.status is Status.SKIPPED for r in rows):
        return 125
    return 0
