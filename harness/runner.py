"""Run cases x backends: gates, reference once per case, compare, one row per (case, backend).

A crash in one backend or case becomes an ``error`` row with a one-line message; the other rows
still run and are written as they complete.
"""

from __future__ import annotations

import gc
import shlex
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from harness.backends import Backend
from harness.cases import Case, make_inputs, reference_output
from harness.compare import THRESHOLDS, Thresholds, compute_metrics, judge


def case_thresholds(case: Case) -> Thresholds:
    t = case.thresholds
    base = THRESHOLDS[case.threshold_name]
    if isinstance(t, dict):
        return base.with_overrides(**{k: v for k, v in t.items() if k != "base"})
    return base


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


@dataclass
class CaseContext:
    """Inputs and reference of one case, made lazily once and shared by its backends."""

    case: Case
    device: str
    data: object = None
    ref: torch.Tensor | None = None
    last_out: torch.Tensor | None = None  # the latest backend output, so a diagnosis need not re-run it

    def ensure(self):
        if self.data is None:
            self.data = make_inputs(self.case, self.device)
            self.ref = reference_output(self.data)
        return self.data, self.ref


def run_one(backend: Backend, ctx: CaseContext, device_kind: str, heatmap_dir=None) -> dict:
    case = ctx.case
    ctx.last_out = None
    th = case_thresholds(case)
    row = {"case": case.name, "case_file": case.file, "backend": backend.name, "status": "skipped",
           "message": "", "metrics": None, "thresholds": th.__dict__ | {"rule": th.rule()},
           "repro": repro_command(case, backend.name, ctx.device), "shape": case.short(),
           "tags": list(case.tags), "duration_s": 0.0, "diagnosis": None}
    why = backend.device_gate(device_kind) or backend.case_gate(case)
    if why is None and case.backends:
        import fnmatch
        if not any(fnmatch.fnmatchcase(backend.name, p) for p in case.backends):
            why = f"case restricted to backends {', '.join(case.backends)}"
    if why:
        row["message"] = why
        return row
    t0 = time.perf_counter()
    try:
        data, ref = ctx.ensure()
    except Exception as e:
        row.update(status="error", message=f"inputs/reference failed: {one_line(e)}", traceback=traceback.format_exc())
        return row
    try:
        prepared = backend.prepare(data, ctx.device)
        out = backend.run(prepared, data)
        ctx.last_out = out
        if ctx.device.startswith("cuda"):
            torch.cuda.synchronize()
        m = compute_metrics(out, ref, th)
        v = judge(m, th)
        row.update(status="pass" if v.passed else "fail", message=v.message, metrics=m.as_dict())
        row.update(backend_notes=backend.notes() or None)
        if heatmap_dir is not None and not v.passed:
            row["heatmap"] = _heatmap(out, ref, heatmap_dir, case.name, backend.name)
    except Exception as e:
        row.update(status="error", message=one_line(e), traceback=traceback.format_exc(limit=8))
        if ctx.device.startswith("cuda"):
            try:
                torch.cuda.synchronize()
            except Exception:
                pass
    finally:
        row["duration_s"] = round(time.perf_counter() - t0, 4)
    return row


def _heatmap(out, ref, folder, case: str, backend: str) -> str | None:
    import re
    from pathlib import Path
    from harness.heatmap import save_heatmap
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{case}__{backend}")[:120] + ".png"
    try:
        save_heatmap(out, ref, Path(folder) / name, f"{backend} / {case}")
    except RuntimeError as e:  # matplotlib missing: the row keeps its verdict
        return f"not written: {e}"
    return name


def run_matrix(cases: Iterable[Case], backends: list[Backend], device: str, device_kind: str,
               on_row: Callable[[dict], None], progress: Callable[[str], None] | None = None,
               diagnose_failures: bool = False, heatmap_dir=None) -> list[dict]:
    rows = []
    for case in cases:
        ctx = CaseContext(case, device)
        for b in backends:
            if progress:
                progress(f"{case.name} / {b.name}")
            row = run_one(b, ctx, device_kind, heatmap_dir)
            if diagnose_failures and row["status"] == "fail":
                row["diagnosis"] = _diagnose_row(b, ctx)
            on_row(row)
            rows.append(row)
        del ctx
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _diagnose_row(backend: Backend, ctx: CaseContext):
    try:
        from harness.diagnose import diagnose
        res = diagnose(backend, ctx, ctx.last_out)
        return res.summary_dict()
    except Exception as e:  # diagnosis is best effort; the row keeps its verdict
        return {"conclusion": f"diagnosis failed: {one_line(e)}"}
