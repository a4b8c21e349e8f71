"""What ``moeacc run`` executes: the plan (cases, backends, probes), in-process or isolated in
worker processes, with a progress bar; the run folder, new or resumed."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.backends.base import Backend
from harness.cases import Case
from harness.cli.common import backends_or_fail, console, fail, load, parse_tiers, split_backend_patterns
from harness.report import ReportError, RunWriter, load_run
from harness.results import ResultRow


@dataclass
class RunPlan:
    cases: list[Case]
    backends: list[Backend]
    probes: list

    @classmethod
    def make(cls, cases_paths, pattern, tags, backends, tier, info, with_probes: bool) -> "RunPlan":
        from harness.probes import all_probes
        cases = load(cases_paths, pattern, tags, parse_tiers(tier, info["kind"]))
        back_pats, probe_pats = split_backend_patterns(backends, [p.name for p in all_probes()])
        chosen = [] if back_pats == "" else backends_or_fail(back_pats)
        probes = [p for p in all_probes() if with_probes and p.device_gate(info["kind"]) is None
                  and any(fnmatch.fnmatchcase(p.name, pat) for pat in probe_pats)]
        return cls(cases, chosen, probes)


def open_writer(out_dir: Path, doc: dict) -> RunWriter:
    try:
        return RunWriter(out_dir, doc)
    except ReportError as e:
        fail(str(e))


def resumed_selection(run_dir) -> dict:
    try:
        doc = load_run(run_dir)
    except ReportError as e:
        fail(str(e))
    if "selection" not in doc:
        fail(f"{run_dir}: this run did not record what it selected (made by an older moeacc); start a new run")
    return doc["selection"]


def resume_writer(run_dir) -> RunWriter:
    doc = load_run(run_dir)
    try:
        return RunWriter(Path(run_dir), doc, resume=True)
    except ReportError as e:
        fail(str(e))


def _gpus(dev: str) -> list[int | None]:
    import torch
    if dev == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return list(range(torch.cuda.device_count()))
    return [None]


def execute(plan: RunPlan, dev: str, info: dict, writer: RunWriter, done: set, *, isolate: bool, timeout: float | None,
            diagnose: bool, heatmap_dir, quiet: bool, repeat: int | None = None, rules: tuple = ("moeacc",)) -> list[ResultRow]:
    """Run the plan's missing (case, backend) pairs and probes, streaming each row to ``writer``."""
    from harness.probes import run_probes
    todo = [(c, [b for b in plan.backends if (c.name, b.name) not in done]) for c in plan.cases]
    todo = [(c, bs) for c, bs in todo if bs]
    rows: list[ResultRow] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet or not console.is_terminal, transient=True) as prog:
        bar = prog.add_task("running", total=sum(len(bs) for _, bs in todo))

        def on_row(row: ResultRow):
            writer.add(row)
            rows.append(row)
            prog.update(bar, advance=1, description=f"{row.case} / {row.backend}"[:60])

        if isolate:
            _isolated(todo, dev, on_row, timeout, diagnose, heatmap_dir, repeat, rules)
        else:
            from harness.runner import run_case
            for case, bs in todo:
                run_case(case, bs, dev, info["kind"], on_row, diagnose, heatmap_dir, repeat=repeat, rules=rules)
        probes = [p for p in plan.probes if not any(r["backend"] == p.name for r in writer.doc["rows"])]
        run_probes(probes, dev, info["kind"], on_row)
    return rows


def _isolated(todo, dev, on_row, timeout, diagnose, heatmap_dir, repeat, rules) -> None:
    from harness.isolation import Task, run_isolated
    from harness.runner import new_row
    tasks = [Task(c, [b.name for b in bs], dev, diagnose, str(heatmap_dir) if heatmap_dir else None, repeat=repeat,
                  rules=rules)
             for c, bs in todo]
    run_isolated(tasks, on_row, lambda b, c: new_row(b, c, dev), timeout=timeout, gpus=_gpus(dev))
