"""``moeacc fuzz``: hypothesis generates cases inside what a backend declares, runs each on the
backend (several times: determinism is a verdict), shrinks a failure to a minimal case and writes
it as a case file that ``moeacc check`` replays.

Each failure class is its own exception, so hypothesis shrinks each separately: an accuracy
failure, a nondeterministic output, and an error (a crash, a raised exception). The example
database (``--db``) keeps what failed, so the next run replays it first.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Flaky

from harness.backends.base import Backend
from harness.backends.registry import select_backends
from harness.cases import Case, case_to_yaml
from harness.device import device_info, package_versions
from harness.fuzz.strategies import CPU_BUDGET, Budget, backend_cases
from harness.report import RunWriter, new_document
from harness.report.paths import scrub_text
from harness.results import ResultRow, Status
from harness.runner import new_row, run_case

PROFILES = {"ci": {"examples": 50, "repeat": 2}, "nightly": {"examples": 500, "repeat": 3}}


class Failure(AssertionError):
    kind = "failure"


class AccuracyFailure(Failure):
    kind = "accuracy"


class Nondeterministic(Failure):
    kind = "nondeterministic"


class Crashed(Failure):
    kind = "error"


@dataclass
class FuzzOptions:
    backend: str | Backend   # a name (zoo: and diff: too), or a backend object (in-process only)
    device: str = "cpu"
    examples: int = 50
    seed: int | None = None
    out: Path = Path("fuzz")
    db: Path | None = None
    repeat: int = 2
    isolate: bool = False
    timeout: float | None = 600.0
    time_budget: float | None = None
    budget: Budget | None = None
    profile: str = "ci"


@dataclass
class Finding:
    kind: str
    case: Case
    row: ResultRow
    repro: str = ""
    flaky: bool = False
    confirm: dict = field(default_factory=dict)


@dataclass
class FuzzReport:
    backend: str
    examples: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    stopped_by_time: bool = False
    note: str = ""


class Executor:
    """Runs one case on one backend, in this process or in an isolated worker."""

    def __init__(self, backend: Backend, opts: FuzzOptions):
        self.backend, self.opts, self.kind = backend, opts, device_info(opts.device)["kind"]
        self.pool = None
        if opts.isolate:
            from harness.isolation import Pool
            self.pool = Pool(lambda b, c: new_row(b, c, opts.device), opts.timeout).__enter__()

    def run(self, case: Case, repeat: int, diagnose: bool = False) -> ResultRow:
        if self.pool is None:
            rows = run_case(case, [self.backend], self.opts.device, self.kind, lambda r: None, diagnose, repeat=repeat)
        else:
            from harness.isolation import Task
            rows = self.pool.run([Task(case, [self.backend.name], self.opts.device, diagnose, repeat=repeat)], lambda r: None)
        return rows[0]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.__exit__(None, None, None)


def _raise_for(row: ResultRow) -> None:
    if row.status is Status.ERROR:
        raise Crashed(row.message)
    if row.failure == "nondeterministic":
        raise Nondeterministic(row.message)
    if row.status is Status.FAIL:
        raise AccuracyFailure(row.message)


def fuzz(opts: FuzzOptions) -> FuzzReport:
    (backend,) = select_backends(opts.backend) if isinstance(opts.backend, str) else (opts.backend,)
    why = backend.device_gate(device_info(opts.device)["kind"])
    if why:
        raise RuntimeError(f"{backend.name} cannot run on {opts.device}: {why}")
    budget = opts.budget or (CPU_BUDGET if opts.device == "cpu" else Budget())
    report, failing, t0 = FuzzReport(backend.name), {}, time.monotonic()
    doc = new_document(device_info(opts.device), package_versions(), f"fuzz-{_slug(backend.name)}",
                       ["moeacc", "fuzz", "--backend", backend.name])
    writer = RunWriter(opts.out, doc)
    ex = Executor(backend, opts)

    def check(case: Case) -> None:
        if opts.time_budget and time.monotonic() - t0 > opts.time_budget:
            report.stopped_by_time = True
            return
        report.examples += 1
        case = replace(case, name=f"fuzz-{report.examples:05d}")
        row = ex.run(case, opts.repeat)
        writer.add(row)
        try:
            _raise_for(row)
        except Failure as e:
            failing[type(e)] = (case, row)
            raise

    test = settings(max_examples=opts.examples, deadline=None, derandomize=False, report_multiple_bugs=True,
                    database=_database(opts.db, backend.name), suppress_health_check=list(HealthCheck),
                    phases=tuple(Phase), print_blob=False)(given(backend_cases(backend, budget))(check))
    if opts.seed is not None:
        test = hyp_seed(opts.seed)(test)
    try:
        test()
    except Flaky as e:
        report.note = f"hypothesis: {type(e).__name__} (a failure that did not fail again when replayed)"
    except (Failure, BaseExceptionGroup):
        pass
    finally:
        report.seconds = round(time.monotonic() - t0, 1)
        try:
            report.findings = _confirm(failing, ex, opts, report.note)
        finally:
            ex.close()
            writer.close()
    _write(report, opts)
    return report


def _database(db: Path | None, backend: str):
    return None if db is None else DirectoryBasedExampleDatabase(str(Path(db) / _slug(backend)))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _confirm(failing: dict, ex: Executor, opts: FuzzOptions, note: str) -> list[Finding]:
    """Re-run each minimal failing case with diagnosis and more repeats, and record how often it shows."""
    out = []
    for cls, (case, row) in failing.items():
        again = ex.run(case, max(5, opts.repeat), diagnose=True)
        shows = again.status is not Status.PASS
        out.append(Finding(cls.kind, case, again if shows else row, flaky=not shows or bool(note),
                           confirm={"rerun_status": again.status.value, "rerun_message": again.message,
                                    "repeats": again.repeats}))
    return out


def _shown(p: Path) -> str:
    """``p`` for a command line: relative to here when under here, else absolute with the machine's
    prefixes named (``~/out/...``; a relative path out of here would splice them into ``../..~/out``)."""
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else scrub_text(str(Path(p).resolve()))


def _write(report: FuzzReport, opts: FuzzOptions) -> None:
    out = Path(opts.out)
    for n, f in enumerate(report.findings, 1):
        f.repro = f"repro-{n}.yaml"
        entry = case_to_yaml(replace(f.case, name=f"fuzz-repro-{_slug(report.backend)}-{n}", tags=("fuzz-repro",),
                                     repeat=max(f.case.repeat, f.row.repeats["runs"] if f.row.repeats else 1),
                                     source=f"moeacc fuzz --backend {report.backend} (shrunk by hypothesis): "
                                            f"{f.kind}: {f.row.message[:200]}"))
        text = yaml.safe_dump({"cases": [entry]}, sort_keys=False)
        diag = (f.row.diagnosis or {}).get("conclusion")
        (out / f.repro).write_text(f"# {f.kind}{' (flaky)' if f.flaky else ''}: {f.row.message[:300]}\n"
                                   + (f"# diagnosis: {diag}\n" if diag else "")
                                   + f"# replay: moeacc check --cases {_shown(out / f.repro)} --backend {report.backend}\n"
                                   + text)
    summary = {"backend": report.backend, "examples": report.examples, "seconds": report.seconds,
               "profile": opts.profile, "seed": opts.seed, "repeat": opts.repeat, "stopped_by_time": report.stopped_by_time,
               "note": report.note,
               "findings": [{"kind": f.kind, "repro": f.repro, "flaky": f.flaky, "case": f.case.short(),
                             "message": f.row.message, "diagnosis": f.row.diagnosis, "confirm": f.confirm}
                            for f in report.findings]}
    (out / "fuzz.json").write_text(json.dumps(summary, indent=1))
