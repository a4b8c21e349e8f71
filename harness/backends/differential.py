"""Differential mode: one backend's output judged against another's on the same inputs (a real
kernel and its emulated twin), with the tight ``differential`` thresholds. Named
``diff:<backend>|<against>`` so ``select_backends`` (and isolated workers) can build it."""

from __future__ import annotations

from harness.backends.base import Backend
from harness.cases import Case
from harness.compare import THRESHOLDS, Thresholds

PREFIX = "diff:"


class Differential(Backend):
    def __init__(self, backend: Backend, against: Backend, thresholds: Thresholds = THRESHOLDS["differential"]):
        self.backend, self.against, self.th = backend, against, thresholds
        self.name = f"{PREFIX}{backend.name}|{against.name}"
        self.description = f"{backend.name} against {against.name} on the same inputs"
        self.requirements, self.family, self.kernel = backend.requirements, backend.family, backend.kernel
        self.deterministic, self.nondeterminism_ulp = backend.deterministic, backend.nondeterminism_ulp

    def device_gate(self, kind: str) -> str | None:
        return self.backend.device_gate(kind) or self.against.device_gate(kind)

    def case_gate(self, case: Case) -> str | None:
        return self.backend.case_gate(case) or self.against.case_gate(case)

    def prepare(self, data, device):
        return self.backend.prepare(data, device)

    def run(self, prepared, data):
        return self.backend.run(prepared, data)

    def limits(self, case: Case) -> Thresholds:
        return self.th

    def reference(self, ctx):
        data, _ = ctx.ensure()
        return self.against.run(self.against.prepare(data, ctx.device), data)

    def notes(self) -> dict:
        return self.backend.notes()
