"""Backend API and registry.

A backend declares what it needs (:class:`Requirements`) and has two steps: ``prepare`` turns the
case's canonical weights into the kernel's own layout (with the kernel library's helpers), and
``run`` calls the kernel. Backends register through the ``moe_accuracy.backends`` entry-point
group: each entry point names a :class:`Backend` subclass (or a zero-argument factory). The
built-ins register the same way in this project's ``pyproject.toml``.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.cases import Case, CaseData
from harness.device import kind_matches

ENTRY_POINT_GROUP = "moe_accuracy.backends"


@dataclass(frozen=True)
class Requirements:
    devices: tuple = ("any",)            # cpu, cuda, sm90, sm100, sm100+, sm120, gfx942, gfx950, rocm, any
    packages: dict = field(default_factory=dict)   # distribution -> (import name, minimum version or "")
    formats: tuple = ("bf16", "mxfp4", "mxfp8", "nvfp4", "fp8_block")
    act_quants: tuple = (None,)
    swiglu: bool = True                  # alpha/beta/limit supported (else plain silu only)
    bias: bool = True
    shared_expert: bool = True
    routings: tuple = ("softmax", "topk_softmax", "grouped")
    k_multiple: int = 1                  # hidden and intermediate must be multiples (after any padding)
    fp8_scales: tuple = ("fp32", "ue8m0")
    scale_modes: tuple = ("floor", "ceil", "rceil", "even")
    min_tokens: int = 0


class Backend:
    """Base class. Subclasses set the class attributes and implement ``prepare`` and ``run``."""

    name: str = "?"
    description: str = ""
    requirements: Requirements = Requirements()
    family: str | None = None      # contract family: fault-zoo mutants and diagnosis twins key on it
    hooks: tuple = ()              # the overridable steps this backend honours (fault zoo)
    verified: str = "unverified"   # "cpu" (pure torch, runs anywhere), "h100" (a committed H100 report), "unverified"
    kernel: str = ""               # the library entry point it calls

    # ---- gates -------------------------------------------------------------------------------
    def device_gate(self, kind: str) -> str | None:
        """None if this device kind can run the backend, else the reason."""
        r = self.requirements
        if not kind_matches(kind, r.devices):
            return f"needs {' or '.join(r.devices)}, found {kind}"
        for dist, (mod, minv) in r.packages.items():
            if importlib.util.find_spec(mod) is None:
                return f"{dist} not installed"
            if minv:
                try:
                    have = importlib.metadata.version(dist)
                except importlib.metadata.PackageNotFoundError:
                    continue
                if _version_tuple(have) < _version_tuple(minv):
                    return f"needs {dist}>={minv}, found {have}"
        return None

    def case_gate(self, case: Case) -> str | None:
        """None if the backend supports this case, else the reason."""
        r = self.requirements
        if case.weight_format not in r.formats:
            return f"weight format {case.weight_format} not supported (supports {', '.join(r.formats)})"
        if case.act_quant not in r.act_quants:
            return f"activation quantization {case.act_quant or 'none'} not supported"
        if not r.swiglu and not case.swiglu.is_plain:
            return "SwiGLU alpha/beta/limit not supported (plain silu only)"
        if case.bias and not r.bias:
            return "biases not supported"
        if case.shared_expert and not r.shared_expert:
            return "shared expert not supported"
        if case.routing not in r.routings:
            return f"routing {case.routing} not supported"
        if case.weight_format == "fp8_block" and case.fp8_scale not in r.fp8_scales:
            return f"fp8 {case.fp8_scale} scales not supported"
        if case.weight_format in ("mxfp4", "mxfp8") and case.scale_mode not in r.scale_modes:
            return f"E8M0 scale mode {case.scale_mode} not supported"
        for f in ("hidden", "intermediate"):
            if getattr(case, f) % r.k_multiple:
                return f"{f}={getattr(case, f)} is not a multiple of {r.k_multiple}"
        if case.tokens < r.min_tokens:
            return f"needs at least {r.min_tokens} tokens"
        return None

    # ---- steps -------------------------------------------------------------------------------
    def prepare(self, data: CaseData, device: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, prepared: Any, data: CaseData) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def notes(self) -> dict:
        """Facts for the report (e.g. the E8M0 rounding mode a kernel uses)."""
        return {}


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("+")[0].split("."):
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


_REGISTRY: dict[str, Backend] | None = None


def _instantiate(obj) -> list[Backend]:
    if isinstance(obj, Backend):
        return [obj]
    if isinstance(obj, type) and issubclass(obj, Backend):
        return [obj()]
    if callable(obj):
        res = obj()
        if isinstance(res, Backend):
            return [res]
        if isinstance(res, (list, tuple)) and all(isinstance(b, Backend) for b in res):
            return list(res)
    raise TypeError(f"entry point object {obj!r} is not a Backend, a Backend subclass or a factory of them")


def load_backends(refresh: bool = False) -> dict[str, Backend]:
    """All registered backends by name. A broken entry point is reported, never fatal."""
    global _REGISTRY
    if _REGISTRY is not None and not refresh:
        return _REGISTRY
    reg: dict[str, Backend] = {}
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if not any(ep.value.startswith("harness.") for ep in eps):
        # running from a source tree that is not pip-installed: read our own pyproject's entries
        eps = list(eps) + _source_tree_entry_points()
    for ep in eps:
        try:
            for b in _instantiate(ep.load()):
                reg[b.name] = b
        except Exception as e:  # a third-party plugin failing to import must not kill the run
            reg[f"broken:{ep.name}"] = _BrokenBackend(ep.name, f"{type(e).__name__}: {e}")
    _REGISTRY = dict(sorted(reg.items()))
    return _REGISTRY


def _source_tree_entry_points():
    import pathlib
    import tomllib
    py = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not py.exists():
        return []
    eps = tomllib.loads(py.read_text()).get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    return [importlib.metadata.EntryPoint(name=k, value=v, group=ENTRY_POINT_GROUP) for k, v in eps.items()]


class _BrokenBackend(Backend):
    def __init__(self, name: str, why: str):
        self.name = f"broken:{name}"
        self.description = f"entry point failed to load: {why}"
        self._why = why

    def device_gate(self, kind: str) -> str | None:
        return f"backend plugin failed to load: {self._why}"


def select_backends(patterns: str | None = None, include_fault_zoo: bool = False) -> list[Backend]:
    """Backends matching comma-separated globs (all non-zoo backends when None)."""
    reg = load_backends()
    if include_fault_zoo or (patterns and "zoo:" in patterns):
        from harness.faults import zoo_backends
        reg = {**reg, **{b.name: b for b in zoo_backends()}}
    if not patterns:
        return [b for n, b in reg.items() if not n.startswith("zoo:")]
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [b for n, b in reg.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    missing = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in reg)]
    if missing:
        raise KeyError(f"no backend matches {', '.join(missing)}; known: {', '.join(reg)}")
    return chosen
