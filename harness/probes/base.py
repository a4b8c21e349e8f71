"""What every probe shares: a result, the probe (a Backend for its device gate), the runner."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Callable

from harness.backends.base import Backend
from harness.results import ResultRow, Status


@dataclass
class ProbeResult:
    case: str
    status: str
    message: str
    metrics: dict | None = None
    notes: dict | None = None


class Probe(Backend):
    """A probe reuses Backend's device gate; ``probe(device)`` yields results."""

    fn: Callable = None

    def probe(self, device: str) -> list[ProbeResult]:
        return type(self).fn(device)


def run_probes(probes: list[Probe], device: str, device_kind: str, on_row) -> list[ResultRow]:
    rows = []
    for p in probes:
        def row(case, status, message, **kw):
            r = ResultRow(case=case, backend=p.name, status=Status(status), message=message, tags=["probe"],
                          repro=f"moeacc probe --probe {p.name}", shape=p.kernel, **kw)
            on_row(r)
            rows.append(r)
        why = p.device_gate(device_kind)
        if why:
            row(f"probe:{p.name}", "skipped", why)
            continue
        t0, tb = time.perf_counter(), None
        try:
            results = p.probe(device)
        except Exception as e:
            results = [ProbeResult(f"probe:{p.name}", "error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")]
            tb = traceback.format_exc(limit=6)
        dt = round(time.perf_counter() - t0, 3)
        for r in results:
            row(r.case, r.status, r.message, metrics=r.metrics, backend_notes=r.notes, duration_s=dt, traceback=tb)
    return rows
