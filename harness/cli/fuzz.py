"""``moeacc fuzz``."""

from __future__ import annotations

from rich.markup import escape
import sys
from pathlib import Path

import click

from harness.cli.common import backends_or_fail, console, device_or_fail, fail


@click.command()
@click.option("--backend", required=True, help="one backend (diff:<backend>|<against> for differential mode)")
@click.option("--against", default=None, help="differential mode: judge --backend against this backend, tight bound")
@click.option("--device", default="auto", show_default=True)
@click.option("--profile", type=click.Choice(["ci", "nightly"]), default="ci", show_default=True,
              help="ci: 50 examples, 2 runs each; nightly: 500 examples, 3 runs each")
@click.option("--examples", type=int, default=None, help="examples to generate (default: the profile's)")
@click.option("--repeat", type=int, default=None, help="runs per example for the determinism check (default: the profile's)")
@click.option("--seed", type=int, default=None,
              help="hypothesis seed, for a reproducible run (default: random; a seeded run does not use --db)")
@click.option("--out", "out_dir", type=click.Path(), default="fuzz-out", show_default=True,
              help="folder for rows, report, fuzz.json and repro-N.yaml")
@click.option("--db", type=click.Path(), default=None, help="hypothesis example database (cache it: last failures replay first)")
@click.option("--isolate/--no-isolate", default=None, help="run examples in a worker process [default: on a GPU]")
@click.option("--timeout", default=600.0, show_default=True, help="seconds an example may take when isolated")
@click.option("--time-budget", type=float, default=None, help="stop generating after this many seconds")
def fuzz(backend, against, device, profile, examples, repeat, seed, out_dir, db, isolate, timeout, time_budget):
    """Generate cases inside what BACKEND declares; each runs several times (determinism is a
    verdict); failures shrink to a minimal repro-N.yaml that `moeacc check` replays. Exit 1 on findings."""
    from harness.fuzz.engine import PROFILES, FuzzOptions, fuzz as run_fuzz
    dev, info = device_or_fail(device)
    name = f"diff:{backend}|{against}" if against else backend
    if len(backends_or_fail(name)) != 1:
        fail(f"--backend {backend!r} must match exactly one backend")
    prof = PROFILES[profile]
    opts = FuzzOptions(name, dev, examples or prof["examples"], seed, Path(out_dir), Path(db) if db else None,
                       repeat or prof["repeat"], info["kind"] != "cpu" if isolate is None else isolate,
                       timeout or None, time_budget, profile=profile)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"{out_dir}: cannot write here: {e.strerror or e}")
    console.print(f"moeacc fuzz: {name} on {info['kind']}, {opts.examples} examples x {opts.repeat} runs -> {out_dir}",
                  highlight=False)
    try:
        rep = run_fuzz(opts)
    except RuntimeError as e:
        fail(str(e), 125)
    for f in rep.findings:
        console.print(f"[bold red]{f.kind}[/]{' (flaky)' if f.flaky else ''}: {escape(f.case.short())}\n  {escape(f.row.message[:300])}\n"
                      f"  -> {escape(str(Path(out_dir) / f.repro))}", highlight=False)
    console.print(f"{rep.examples} examples in {rep.seconds:.0f} s, {len(rep.findings)} findings"
                  f"{' (stopped by --time-budget)' if rep.stopped_by_time else ''}; report: {Path(out_dir) / 'report.md'}",
                  highlight=False)
    sys.exit(1 if rep.findings else 0)
