"""The backend API: what a backend needs (:class:`Requirements`), its two steps (``prepare`` turns
the case's canonical weights into the kernel's own layout with the kernel library's helpers;
``run`` calls the kernel), its gates, and the contract family it belongs to (:class:`Family`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from harness.cases import Case, CaseData, Routing
from harness.compare import Thresholds
from harness.device import kind_matches
from references.formats import WEIGHT_FORMATS, ActQuant, Fp8Scale, ScaleMode, WeightFormat

ALL_FORMATS: tuple[WeightFormat, ...] = tuple(WEIGHT_FORMATS.values())


@dataclass(frozen=True)
class Requirements:
    devices: tuple = ("any",)            # cpu, cuda, sm90, sm90+, sm100, sm100+, sm120, gfx942, gfx950, rocm, any
    libraries: tuple = ()                # harness.backends.libapi.Library: installed, in the written-for range
    formats: tuple[WeightFormat, ...] = ALL_FORMATS
    act_quants: tuple[ActQuant | None, ...] = (None,)
    swiglu: bool = True                  # alpha/beta/limit supported (else plain silu only)
    bias: bool = True
    shared_expert: bool = True
    routings: tuple[Routing, ...] = tuple(Routing)
    k_multiple: int = 1                  # hidden and intermediate must be multiples (after any padding)
    fp8_scales: tuple[Fp8Scale, ...] = tuple(Fp8Scale)
    scale_modes: tuple[ScaleMode, ...] = tuple(ScaleMode)
    min_tokens: int = 0


@dataclass(frozen=True)
class Family:
    """A kernel contract: its pure-PyTorch twin (the emulated backend that models it) and the
    faults that can break it. Real kernels and their twin share one family; the zoo mutates the
    twin, and diagnosis runs the twin with each fault as a hypothesis."""

    name: str
    twin: type
    faults: tuple = ()


@dataclass(frozen=True)
class Level:
    """How far a backend is verified, and the evidence (brief: L0 written from the library's pinned
    source with every call bound to an API snapshot; L1 preprocessing checked against the library's
    own helpers on the CPU; L2 ran on the H100 through moeacc run --device cuda, report committed;
    L3 runs nightly on its own runner). ``cpu`` marks the pure-PyTorch backends."""

    level: str                 # cpu | L0 | L1 | L2 | L3
    evidence: tuple = ()       # snapshot files, tests, committed reports

    def __str__(self) -> str:
        return self.level


def h100(*runs: str) -> tuple[str, ...]:
    """Committed H100 report folders, as a Level's evidence."""
    return tuple(f"reports/sm90-nvidia-h100-80gb-hbm3/{r}" for r in runs)


def h200(*runs: str) -> tuple[str, ...]:
    """Committed H200 (sm90) report folders and logs, as a Level's evidence."""
    return tuple(f"reports/sm90-nvidia-h200/{r}" for r in runs)


class Backend:
    """Base class. Subclasses set the class attributes and implement ``prepare`` and ``run``."""

    name: str = "?"
    description: str = ""
    requirements: Requirements = Requirements()
    family: Family | None = None
    hooks: tuple[Callable, ...] = ()   # the overridable steps (methods) this backend honours
    verified: Level = Level("L0")      # the verification level and its evidence
    kernel: str = ""                   # the library entry point it calls
    deterministic: bool = True         # same inputs, same bits (no atomics in the reduction)
    nondeterminism_ulp: int = 0        # what repeated runs may differ by (output ULPs) where it is not
    budget_k: float | None = None      # a real kernel with a twin: fail above k x the twin's rel_l2 (harness.compare.BUDGET_K)

    def device_gate(self, kind: str) -> str | None:
        """None if this device kind can run the backend, else the reason."""
        r = self.requirements
        if not kind_matches(kind, r.devices):
            return f"needs {' or '.join(r.devices)}, found {kind}"
        return next((why for lib in r.libraries if (why := lib.gate())), None)

    def case_gate(self, case: Case) -> str | None:
        """None if the backend supports this case, else the reason."""
        for check in _CASE_CHECKS:
            why = check(self.requirements, case)
            if why:
                return why
        return None

    def prepare(self, data: CaseData, device: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, prepared: Any, data: CaseData) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def notes(self) -> dict:
        """Facts for the report (e.g. the library version and build a kernel ran from)."""
        return {}

    def limits(self, case: Case) -> Thresholds:
        """The thresholds this backend's output is judged by (the case's, unless it knows better)."""
        return case.limits

    @property
    def reference_kw(self) -> dict:
        """MoEConfig fields where this kernel's contract differs from the case's spec (its amax floor...)."""
        return {}

    def reference(self, ctx) -> torch.Tensor | None:
        """What this backend's output is compared with (None: the case's reference)."""
        return ctx.reference_with(**self.reference_kw) if self.reference_kw else None


def _names(xs) -> str:
    return ", ".join(str(x.name) for x in xs)


_CASE_CHECKS: tuple[Callable[[Requirements, Case], str | None], ...] = (
    lambda r, c: None if c.weight_format in r.formats else
    f"weight format {c.weight_format.name} not supported (supports {_names(r.formats)})",
    lambda r, c: None if c.act_quant in r.act_quants else
    f"activation quantization {c.act_quant.value if c.act_quant else 'none'} not supported",
    lambda r, c: None if r.swiglu or c.swiglu.is_plain else "SwiGLU alpha/beta/limit not supported (plain silu only)",
    lambda r, c: "biases not supported" if c.bias and not r.bias else None,
    lambda r, c: "shared expert not supported" if c.shared_expert and not r.shared_expert else None,
    lambda r, c: None if c.routing in r.routings else f"routing {c.routing.value} not supported",
    lambda r, c: f"fp8 {c.fp8_scale.value} scales not supported"
    if c.weight_format.name == "fp8_block" and c.fp8_scale not in r.fp8_scales else None,
    lambda r, c: f"E8M0 scale mode {c.scale_mode.value} not supported"
    if c.weight_format.name in ("mxfp4", "mxfp8") and c.scale_mode not in r.scale_modes else None,
    lambda r, c: next((f"{f}={getattr(c, f)} is not a multiple of {r.k_multiple}"
                       for f in ("hidden", "intermediate") if getattr(c, f) % r.k_multiple), None),
    lambda r, c: f"needs at least {r.min_tokens} tokens" if c.tokens < r.min_tokens else None,
)
