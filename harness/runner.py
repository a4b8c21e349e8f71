"""Run cases x backends in this process: gates, the reference once per case, compare, one
:class:`ResultRow` per (case, backend). An exception in one backend or case becomes an ``error``
row with a one-line message; the other rows still run. (``harness.isolation`` runs the same rows
in worker processes so that a crash or hang costs only its own row.)
"""

from __future__ import annotations

import fnmatch
import gc
import re
import shlex
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

import torch

from harness.backends.base import Backend
from harness.cases import Case, CaseContext
from harness.diagnose import diagnose
from harness.results import ResultRow, Status
from harness.verdicts import judge_row


def repro_command(case: Case, backend: str, device: str = "auto") -> str:
    parts = ["moeacc", "check", "--cases", case.file or "cases", "--case", case.name, "--backend", backend]
    if device not in ("auto", "cpu"):
        parts += ["--device", device]
    return shlex.join(parts)


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or repr(e)
    if len(msg) > 400:
        msg = msg[:397] + "..."
    return f"{type(e).__name__}: {msg}"


def gate(backend: Backend, case: Case, device_kind: str) -> str | None:
    """Why ``backend`` cannot run ``case`` on this device kind (None: it can)."""
    why = backend.device_gate(device_kind) or backend.case_gate(case)
    if why is None and case.backends and not any(fnmatch.fnmatchcase(backend.name, p) for p in case.backends):
        why = f"case restricted to backends {', '.join(case.backends)}"
    return why


def new_row(backend: str, case: Case, device: str) -> ResultRow:
    """The row of ``backend`` (a name) on ``case`` before it runs: identity, thresholds, repro."""
    th = case.limits
    return ResultRow(case=case.name, backend=backend, case_file=case.file,
                     thresholds=th.__dict__ | {"rule": th.rule()}, repro=repro_command(case, backend, device),
                     shape=case.short(), tags=list(case.tags))


def run_one(backend: Backend, ctx: CaseContext, device_kind: str, heatmap_dir=None, repeat: int | None = None,
            rules: tuple = ("moeacc",)) -> ResultRow:
    """One row. With ``repeat`` (default: the case's) above 1 the backend runs that many times on
    the same inputs and a changing output fails the row as ``nondeterministic``. ``rules``: the
    compare rules whose verdicts the row records; the first decides its status."""
    case = ctx.case
    ctx.last_out = None
    row = new_row(backend.name, case, ctx.device)
    why = gate(backend, case, device_kind)
    if why:
        row.message = why
        return row
    t0 = time.perf_counter()
    try:
        data, ref = ctx.ensure()
        alt = backend.reference(ctx)
        ref = ref if alt is None else alt
    except Exception as e:
        row.status, row.message, row.traceback = Status.ERROR, f"inputs/reference failed: {one_line(e)}", traceback.format_exc()
        row.failure = "inputs"
        return row
    stage = "setup"
    try:
        outs = []
        for _ in range(max(1, repeat or case.repeat)):
            stage, prepared = "setup", backend.prepare(data, ctx.device)
            stage = "crash"
            outs.append(backend.run(prepared, data))
            _sync(ctx.device)
        ctx.last_out = out = outs[0]
        judge_row(row, backend, ctx, outs, ref, rules)
        row.backend_notes = backend.notes() or None
        if heatmap_dir is not None and row.status is not Status.PASS:
            row.heatmap = _heatmap(out, ref, heatmap_dir, case.name, backend.name)
    except Exception as e:
        row.status, row.message, row.traceback = Status.ERROR, one_line(e), traceback.format_exc(limit=8)
        row.failure = stage  # setup: prepare raised (a library or build problem); crash: the kernel call did
        _sync(ctx.device, quiet=True)
    finally:
        row.duration_s = round(time.perf_counter() - t0, 4)
    return row


def _sync(device: str, quiet: bool = False) -> None:
    if not device.startswith("cuda"):
        return
    try:
        torch.cuda.synchronize()
    except Exception:
        if not quiet:
            raise


def _heatmap(out, ref, folder, case: str, backend: str) -> str | None:
    from harness.heatmap import save_heatmap
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{case}__{backend}")[:120] + ".png"
    try:
        save_heatmap(out, ref, Path(folder) / name, f"{backend} / {case}")
    except RuntimeError as e:  # matplotlib missing: the row keeps its verdict
        return f"not written: {e}"
    return name


def run_case(case: Case, backends: list[Backend], device: str, device_kind: str, on_row: Callable[[ResultRow], None],
             diagnose_failures: bool = False, heatmap_dir=None, on_start: Callable | None = None,
             stop: Callable[[], bool] = lambda: False, repeat: int | None = None, rules: tuple = ("moeacc",)) -> list[ResultRow]:
    """Every backend on one case (inputs and reference made once); ``on_start(case, backend)``
    before each, and no further backend once ``stop()`` is true."""
    ctx = CaseContext(case, device)
    rows = []
    for b in backends:
        if stop():
            break
        if on_start is not None:
            on_start(case, b)
        row = run_one(b, ctx, device_kind, heatmap_dir, repeat, rules)
        if diagnose_failures and row.status is Status.FAIL:
            row.diagnosis = diagnose_row(b, ctx)
        on_row(row)
        rows.append(row)
    del ctx
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def run_matrix(cases: Iterable[Case], backends: list[Backend], device: str, device_kind: str,
               on_row: Callable[[ResultRow], None], diagnose_failures: bool = False, heatmap_dir=None) -> list[ResultRow]:
    rows = []
    for case in cases:
        rows += run_case(case, backends, device, device_kind, on_row, diagnose_failures, heatmap_dir)
    return rows


def diagnose_row(backend: Backend, ctx: CaseContext) -> dict:
    try:
        return diagnose(backend, ctx, ctx.last_out, localize=True).summary_dict()
    except Exception as e:  # diagnosis is best effort; the row keeps its verdict
        return {"conclusion": f"diagnosis failed: {one_line(e)}"}
