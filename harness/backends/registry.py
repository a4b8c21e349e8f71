"""Backends by name, from the ``moe_accuracy.backends`` entry-point group.

Each entry point names a :class:`Backend` subclass (or a zero-argument factory of backends); the
built-ins register the same way in this project's ``pyproject.toml``, so vLLM, SGLang or AITER can
ship their own. A plugin that fails to import is reported as a backend whose gate says why.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
from pathlib import Path

from harness import families
from harness.backends.base import Backend
from harness.backends.differential import PREFIX, Differential

ENTRY_POINT_GROUP = "moe_accuracy.backends"
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
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if not any(ep.value.startswith("harness.") for ep in eps):
        eps += _source_tree_entry_points()  # a source tree that is not pip-installed: read our pyproject
    for ep in eps:
        try:
            for b in _instantiate(ep.load()):
                reg[b.name] = b
        except Exception as e:  # a third-party plugin failing to import must not kill the run
            reg[f"broken:{ep.name}"] = BrokenBackend(ep.name, f"{type(e).__name__}: {e}")
    _REGISTRY = dict(sorted(reg.items()))
    return _REGISTRY


def _source_tree_entry_points():
    import tomllib
    py = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not py.exists():
        return []
    eps = tomllib.loads(py.read_text()).get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    return [importlib.metadata.EntryPoint(name=k, value=v, group=ENTRY_POINT_GROUP) for k, v in eps.items()]


class BrokenBackend(Backend):
    def __init__(self, name: str, why: str):
        self.name = f"broken:{name}"
        self.description = f"entry point failed to load: {why}"
        self._why = why

    def device_gate(self, kind: str) -> str | None:
        return f"backend plugin failed to load: {self._why}"


def zoo() -> list[Backend]:
    """The fault-zoo mutants of every registered backend that has a family (twins and real kernels)."""
    return families.zoo_backends([b for b in load_backends().values() if b.family is not None])


def differential(name: str) -> Backend:
    """``diff:<backend>|<against>``: the first backend judged against the second."""
    a, sep, b = name[len(PREFIX):].partition("|")
    if not sep:
        raise KeyError(f"{name!r}: a differential backend is named diff:<backend>|<against>")
    (ba,), (bb,) = select_backends(a), select_backends(b)
    return Differential(ba, bb)


def select_backends(patterns: str | None = None) -> list[Backend]:
    """Backends matching comma-separated globs (all registered ones when None); a pattern with
    ``zoo:`` also matches the fault-zoo mutants (``zoo:<fault>@<backend>``); ``diff:A|B`` is
    backend A judged against backend B."""
    if patterns and patterns.startswith("diff:"):
        return [differential(patterns)]
    extra = zoo() if patterns and "zoo:" in patterns else []
    reg = {**load_backends(), **{b.name: b for b in extra}}
    if not patterns:
        return list(load_backends().values())
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    missing = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in reg)]
    if missing:
        raise KeyError(f"no backend matches {', '.join(missing)}; known: {', '.join(reg)}")
    return [b for n, b in reg.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)]
