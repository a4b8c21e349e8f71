"""``moeacc``: run cases against backends, check one case for git bisect, merge and diff reports."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.backends import select_backends
from harness.cases import CaseError, load_cases
from harness.device import device_info, device_slug, package_versions, resolve_device
from harness.report import (ReportError, RunWriter, diff_runs, load_run, merge_runs, new_document,
                            render_diff_markdown, render_markdown, render_matrix_markdown)
from harness.runner import run_matrix

console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out_console = Console(width=None if sys.stdout.isatty() else 200)
DEFAULT_CASES = Path(__file__).resolve().parent.parent / "cases"
STATUS_STYLE = {"pass": "green", "fail": "bold red", "error": "bold magenta", "skipped": "dim"}


def _fail(msg: str, code: int = 2):
    console.print(f"[bold red]moeacc:[/] {msg}", highlight=False)
    sys.exit(code)


def _cases_opt(f):
    f = click.option("--cases", "cases_paths", multiple=True, type=click.Path(),
                     help="case files or folders (default: the project's cases/)")(f)
    f = click.option("--case", "pattern", default=None, help="case name glob(s), comma-separated")(f)
    f = click.option("--tag", "tags", multiple=True, help="only cases with this tag")(f)
    return f


def _load(cases_paths, pattern, tags, tier_filter=None):
    try:
        cases = load_cases(cases_paths or [DEFAULT_CASES], pattern, tuple(tags))
    except CaseError as e:
        _fail(str(e))
    if tier_filter is not None:
        cases = [c for c in cases if c.tier in tier_filter]
    if not cases:
        _fail(f"no case matches (cases={list(cases_paths) or [str(DEFAULT_CASES)]}, case={pattern}, tags={list(tags)})")
    return cases


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moe-accuracy", message="%(version)s")
def main():
    """Numerical-accuracy regression harness for quantized MoE kernels."""


@main.command()
@_cases_opt
@click.option("--backend", "backends", default=None, help="backend name glob(s), comma-separated (default: all)")
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
    try:
        dev = resolve_device(device)
    except RuntimeError as e:
        _fail(str(e))
    info = device_info(dev)
    tiers = tuple(tier.split(",")) if tier else (("smoke",) if info["kind"] == "cpu" else ("smoke", "gpu", "nightly"))
    cases = _load(cases_paths, pattern, tags, tiers)
    from harness.probes import all_probes
    probe_names = [p.name for p in all_probes()]
    pats = backends.split(",") if backends else []
    backend_pats = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in probe_names)]
    try:
        chosen = select_backends(",".join(backend_pats)) if backend_pats or not pats else []
    except KeyError as e:
        _fail(str(e.args[0]))
    run_id = run_id or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_root) / device_slug(info) / run_id
    doc = new_document(info, package_versions(), run_id, sys.argv, code_under_test)
    writer = RunWriter(out_dir, doc)
    console.print(f"moeacc: {len(cases)} cases x {len(chosen)} backends on {info['kind']} ({info['name']}) -> {out_dir}")
    total = len(cases) * len(chosen)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet or not console.is_terminal, transient=True) as prog:
        task = prog.add_task("running", total=total)

        def on_row(row):
            writer.add(row)
            prog.advance(task)
            if not console.is_terminal and not quiet:
                console.print(f"  {row['status']:7s} {row['case']} / {row['backend']}  {row['message'][:120]}",
                              highlight=False)

        rows = run_matrix(cases, chosen, dev, info["kind"], on_row,
                          progress=lambda d: prog.update(task, description=d[:60]), diagnose_failures=diagnose,
                          heatmap_dir=out_dir if heatmaps else None)
        if probes:
            from harness.probes import all_probes, run_probes
            ps = [p for p in all_probes() if p.device_gate(info["kind"]) is None
                  and (not backends or any(fnmatch.fnmatchcase(p.name, pat) for pat in backends.split(",")))]
            rows += run_probes(ps, dev, info["kind"], writer.add)
    doc = writer.close()
    _print_table(rows)
    s = doc["summary"]["total"]
    console.print(f"{s['pass']} passed, {s['fail']} failed, {s['error']} errors, {s['skipped']} skipped; "
                  f"report: {out_dir / 'report.md'}")
    sys.exit(1 if s["fail"] or s["error"] else 0)


def _print_table(rows):
    t = Table(title="moe-accuracy", show_lines=False)
    for col in ("case", "backend", "status", "mismatch", "rel_l2", "cosine", "detail"):
        t.add_column(col, overflow="fold")
    skipped = [r for r in rows if r["status"] == "skipped"]
    for r in rows:
        if r["status"] == "skipped":
            continue
        m = r.get("metrics") or {}
        f = lambda k, fmt: "-" if m.get(k) is None else format(m[k], fmt)  # noqa: E731
        detail = r["message"] if r["status"] != "pass" else ""
        if r.get("diagnosis"):
            detail += f"\n→ {r['diagnosis'].get('conclusion', '')}"
        t.add_row(r["case"], r["backend"], f"[{STATUS_STYLE[r['status']]}]{r['status']}[/]",
                  f("mismatch", ".2%"), f("rel_l2", ".2e"), f("cosine", ".5f"), detail)
    out_console.print(t)
    if skipped:
        out_console.print(f"{len(skipped)} rows skipped (gates): " + "; ".join(
            sorted({f"{r['backend']}: {r['message']}" for r in skipped})[:6]) + (" ..." if len(skipped) > 6 else ""),
            highlight=False)


@main.command()
@_cases_opt
@click.option("--backend", required=True, help="one backend name")
@click.option("--device", default="auto", show_default=True)
def check(cases_paths, pattern, tags, backend, device):
    """For `git bisect run`: exit 0 pass, 1 fail, 125 cannot run here (gate, build error, bad case)."""
    try:
        dev = resolve_device(device)
        cases = load_cases(cases_paths or [DEFAULT_CASES], pattern, tuple(tags))
        chosen = select_backends(backend)
    except (CaseError, KeyError, RuntimeError) as e:
        console.print(f"moeacc check: cannot run: {e.args[0] if e.args else e}")
        sys.exit(125)
    if not cases or len(chosen) != 1:
        console.print(f"moeacc check: cannot run: {len(cases)} cases and {len(chosen)} backends matched (need >=1 and 1)")
        sys.exit(125)
    info = device_info(dev)
    rows = run_matrix(cases, chosen, dev, info["kind"], on_row=lambda r: None)
    for r in rows:
        console.print(f"{r['status']:7s} {r['case']} / {r['backend']}: {r['message']}", highlight=False)
    statuses = {r["status"] for r in rows}
    if "fail" in statuses:
        sys.exit(1)
    if "error" in statuses or statuses == {"skipped"}:
        sys.exit(125)
    sys.exit(0)


@main.command("diagnose")
@_cases_opt
@click.option("--backend", required=True, help="backend name (zoo mutants too: zoo:<fault>@<backend>)")
@click.option("--device", default="auto", show_default=True)
@click.option("--heatmap", type=click.Path(), default=None, help="also write the error-structure PNG here")
def diagnose_cmd(cases_paths, pattern, tags, backend, device, heatmap):
    """Run one case on one backend and name the fault that best explains its output."""
    from harness.diagnose import diagnose
    from harness.runner import CaseContext
    try:
        dev = resolve_device(device)
        cases = load_cases(cases_paths or [DEFAULT_CASES], pattern, tuple(tags))
        (b,) = select_backends(backend)
    except (CaseError, KeyError, RuntimeError) as e:
        _fail(str(e.args[0] if e.args else e))
    except ValueError:
        _fail(f"--backend {backend!r} must match exactly one backend")
    if len(cases) != 1:
        _fail(f"--case must select exactly one case, got {len(cases)}: {', '.join(c.name for c in cases[:5])}")
    info = device_info(dev)
    why = b.device_gate(info["kind"]) or b.case_gate(cases[0])
    if why:
        _fail(f"{b.name} cannot run {cases[0].name} here: {why}", 125)
    ctx = CaseContext(cases[0], dev)
    data, ref = ctx.ensure()
    out = b.run(b.prepare(data, dev), data)
    d = diagnose(b, ctx, out)
    t = Table(title=f"{b.name} on {cases[0].name}: {d.status}, mismatch {d.mismatch_vs_ref:.1%} vs reference")
    for col in ("hypothesis", "mismatch", "rel_l2", "cosine", "explains"):
        t.add_column(col)
    for h in d.ranked:
        t.add_row(h.name, f"{h.mismatch:.2%}", f"{h.rel_l2:.3g}", f"{h.cosine:.4f}", "yes" if h.explains else "")
    out_console.print(t)
    if d.skipped:
        out_console.print("[dim]not tested: " + "; ".join(d.skipped) + "[/]")
    if heatmap:
        from harness.heatmap import save_heatmap
        out_console.print(f"heatmap: {save_heatmap(out, ref, heatmap, f'{b.name} / {cases[0].name}')}")
    out_console.print(f"[bold]{d.conclusion}[/]  ({d.seconds:.1f} s)")


@main.command()
@click.option("--probe", "names", default="*", show_default=True, help="probe name glob(s), comma-separated")
@click.option("--device", default="auto", show_default=True)
def probe(names, device):
    """Run single-kernel probes (FlashInfer quantizers, silu_and_mul, torch FP8 GEMMs) and print rows."""
    from harness.probes import all_probes, run_probes
    dev = resolve_device(device)
    info = device_info(dev)
    ps = [p for p in all_probes() if any(fnmatch.fnmatchcase(p.name, n) for n in names.split(","))]
    if not ps:
        _fail(f"no probe matches {names!r}; known: {', '.join(p.name for p in all_probes())}")
    rows = run_probes(ps, dev, info["kind"], lambda r: None)
    _print_table(rows)
    sys.exit(1 if any(r["status"] in ("fail", "error") for r in rows) else 0)


@main.command("study-ue8m0")
@click.option("--depth", default=80, show_default=True, help="layers in the compounded chain")
@click.option("--seeds", default=4, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def study_ue8m0(depth, seeds, device, as_json):
    """Accuracy cost of UE8M0 vs fp32 FP8 block scales: bits lost per layer and over a deep chain."""
    from harness.studies import ue8m0_study
    r = ue8m0_study(depth=depth, seeds=seeds, device=resolve_device(device))
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    click.echo(f"one GEMM {r['shape']}: SNR fp32 scales {r['layer_snr_db']['fp32']:.2f} dB, UE8M0 "
               f"{r['layer_snr_db']['ue8m0']:.2f} dB -> {r['layer_bits_lost_ue8m0']:.3f} bit lost per layer")
    click.echo(f"{depth}-layer residual chain: SNR fp32 {r['depth_snr_db']['fp32']:.2f} dB, UE8M0 "
               f"{r['depth_snr_db']['ue8m0']:.2f} dB -> {r['depth_bits_lost_ue8m0']:.3f} bit lost at depth {depth}")


@main.command("list")
@_cases_opt
@click.option("--device", default="auto", show_default=True)
@click.option("--what", type=click.Choice(["backends", "cases", "all"]), default="all")
def list_(cases_paths, pattern, tags, device, what):
    """List backends (with their gate on this machine) and cases."""
    info = device_info(resolve_device(device))
    if what in ("backends", "all"):
        t = Table(title=f"backends on {info['kind']}")
        for col in ("backend", "gate here", "verified", "kernel"):
            t.add_column(col, overflow="fold")
        for b in select_backends(None):
            gate = b.device_gate(info["kind"])
            t.add_row(b.name, "[green]ok[/]" if gate is None else f"[yellow]{gate}[/]", b.verified, b.kernel)
        out_console.print(t)
    if what in ("cases", "all"):
        t = Table(title="cases")
        for col in ("case", "tier", "shape", "file"):
            t.add_column(col, overflow="fold")
        for c in _load(cases_paths, pattern, tags):
            t.add_row(c.name, c.tier, c.short(), Path(c.file).name)
        out_console.print(t)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(), default=None, help="write matrix.json and matrix.md into this folder")
def merge(runs, out):
    """Merge runs (folders or results.json) from several runners into one case x device matrix."""
    try:
        docs = [load_run(r) for r in runs]
    except ReportError as e:
        _fail(str(e))
    m = merge_runs(docs)
    md = render_matrix_markdown(m)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "matrix.json").write_text(json.dumps(m, indent=1))
        (Path(out) / "matrix.md").write_text(md)
    click.echo(md)


@main.command()
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
        _fail(str(e))
    click.echo(json.dumps(d, indent=1) if as_json else render_diff_markdown(d))
    sys.exit(1 if d["regressions"] else 0)


@main.command()
@click.argument("run_path", type=click.Path(exists=True))
def report(run_path):
    """Re-render report.md of a run (also of an interrupted one) to stdout."""
    try:
        click.echo(render_markdown(load_run(run_path)))
    except ReportError as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
