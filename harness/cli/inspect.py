"""``moeacc diagnose``, ``list``, ``probe`` and ``study-ue8m0``."""

from __future__ import annotations

from rich.markup import escape
import fnmatch
import json
import sys

import click
from rich.table import Table

from harness.cli.common import backends_or_fail, cases_options, device_or_fail, fail, load, out_console
from harness.cli.tables import print_rows


@click.command("diagnose")
@cases_options
@click.option("--backend", required=True, help="backend name (zoo mutants too: zoo:<fault>@<backend>)")
@click.option("--device", default="auto", show_default=True)
@click.option("--heatmap", type=click.Path(), default=None, help="also write the error-structure PNG here")
def diagnose_cmd(cases_paths, pattern, tags, backend, device, heatmap):
    """Run one case on one backend and name the fault that best explains its output."""
    from harness.cases import CaseContext
    from harness.diagnose import diagnose
    from harness.runner import gate
    dev, info = device_or_fail(device)
    cases = load(cases_paths, pattern, tags)
    chosen = backends_or_fail(backend)
    if len(chosen) != 1:
        fail(f"--backend {backend!r} must match exactly one backend, got {len(chosen)}")
    if len(cases) != 1:
        fail(f"--case must select exactly one case, got {len(cases)}: {', '.join(c.name for c in cases[:5])}")
    (b,), (case,) = chosen, cases
    why = gate(b, case, info["kind"])
    if why:
        fail(f"{b.name} cannot run {case.name} here: {why}", 125)
    ctx = CaseContext(case, dev)
    data, ref = ctx.ensure()
    ref = ctx.reference_with(**b.reference_kw)
    out = b.run(b.prepare(data, dev), data)
    d = diagnose(b, ctx, out)
    t = Table(title=f"{b.name} on {case.name}: {d.status}, mismatch {d.mismatch_vs_ref:.1%} vs reference")
    for col in ("hypothesis", "mismatch", "rel_l2", "cosine", "explains"):
        t.add_column(col)
    for h in d.ranked:
        t.add_row(h.name, f"{h.mismatch:.2%}", f"{h.rel_l2:.3g}", f"{h.cosine:.4f}", "yes" if h.explains else "")
    out_console.print(t)
    if d.skipped:
        out_console.print("[dim]not tested: " + escape("; ".join(d.skipped)) + "[/]")
    if heatmap:
        from harness.heatmap import save_heatmap
        try:
            out_console.print(f"heatmap: {save_heatmap(out, ref, heatmap, f'{b.name} / {case.name}')}")
        except RuntimeError as e:
            fail(str(e))
    out_console.print(f"[bold]{escape(d.conclusion)}[/]  ({d.seconds:.1f} s)")


@click.command()
@click.option("--probe", "names", default="*", show_default=True, help="probe name glob(s), comma-separated")
@click.option("--device", default="auto", show_default=True)
def probe(names, device):
    """Run single-kernel probes (FlashInfer quantizers, silu_and_mul, torch FP8 GEMMs) and print rows."""
    from harness.probes import all_probes, run_probes
    dev, info = device_or_fail(device)
    ps = [p for p in all_probes() if any(fnmatch.fnmatchcase(p.name, n) for n in names.split(","))]
    if not ps:
        fail(f"no probe matches {names!r}; known: {', '.join(p.name for p in all_probes())}")
    rows = run_probes(ps, dev, info["kind"], lambda r: None)
    print_rows(rows)
    sys.exit(1 if any(r.status.bad for r in rows) else 0)


@click.command("study-ue8m0")
@click.option("--depth", default=80, show_default=True, help="layers in the compounded chain")
@click.option("--seeds", default=4, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def study_ue8m0(depth, seeds, device, as_json):
    """Accuracy cost of UE8M0 vs fp32 FP8 block scales: bits lost per layer and over a deep chain."""
    from harness.studies import ue8m0_study
    dev, _ = device_or_fail(device)
    r = ue8m0_study(depth=depth, seeds=seeds, device=dev)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    click.echo(f"one GEMM {r['shape']}: SNR fp32 scales {r['layer_snr_db']['fp32']:.2f} dB, UE8M0 "
               f"{r['layer_snr_db']['ue8m0']:.2f} dB -> {r['layer_bits_lost_ue8m0']:.3f} bit lost per layer")
    click.echo(f"{depth}-layer residual chain: SNR fp32 {r['depth_snr_db']['fp32']:.2f} dB, UE8M0 "
               f"{r['depth_snr_db']['ue8m0']:.2f} dB -> {r['depth_bits_lost_ue8m0']:.3f} bit lost at depth {depth}")


@click.command("list")
@cases_options
@click.option("--device", default="auto", show_default=True)
@click.option("--what", type=click.Choice(["backends", "cases", "all"]), default="all")
def list_(cases_paths, pattern, tags, device, what):
    """List backends (with their gate on this machine) and cases."""
    from harness.backends.registry import select_backends
    _, info = device_or_fail(device)
    if what in ("backends", "all"):
        t = Table(title=f"backends on {info['kind']}")
        for col in ("backend", "gate here", "level", "evidence", "kernel"):
            t.add_column(col, overflow="fold")
        for b in select_backends(None):
            g = b.device_gate(info["kind"])
            t.add_row(b.name, "[green]ok[/]" if g is None else f"[yellow]{g}[/]", str(b.verified),
                      "; ".join(b.verified.evidence), b.kernel)
        out_console.print(t)
        for w in snapshot_warnings():
            out_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if what in ("cases", "all"):
        t = Table(title="cases")
        for col in ("case", "tier", "shape", "file"):
            t.add_column(col, overflow="fold")
        for c in load(cases_paths, pattern, tags):
            t.add_row(c.name, c.tier.value, c.short(), c.file)
        out_console.print(t)


def snapshot_warnings() -> list[str]:
    """An installed kernel library whose version has no API snapshot: its calls were bound to another version's."""
    from harness.backends.libapi import adapter_modules
    seen, out = set(), []
    for libs in adapter_modules().values():
        for lib in libs.values():
            have = lib.installed()
            if lib.dist in seen or have in (None, "unknown"):
                continue
            seen.add(lib.dist)
            if not any(s.endswith(f"-{have}") for s in lib.snapshots):
                out.append(f"{lib.dist} {have} is installed; the adapters' calls are bound to the API snapshots "
                           f"{', '.join(lib.snapshots)} (moeacc api-snapshot to check this version)")
    return out
