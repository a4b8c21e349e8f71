"""API snapshots: the signatures of the library objects each adapter uses, read from the library's
source with ``ast`` (nothing is imported), and a static check that binds every adapter call to them.

An adapter reaches a library object as ``LIB.attr("pkg.module", "Name")`` (``harness.backends.libapi``).
:func:`uses` finds those in an adapter module, with each call site's positional count and keywords
and each enum member read; :func:`extract` reads the named objects from a wheel or a source tree
(following ``from x import y`` re-exports); :func:`check` binds every call site with
``inspect.Signature.bind`` and every member read against the snapshot.
"""

from __future__ import annotations

import ast
import inspect
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ENUM_BASES = {"Enum", "IntEnum", "StrEnum", "IntFlag", "Flag"}


# ---- reading a library's source -----------------------------------------------------------------
class Source:
    """Python files of a wheel (zip) or a source tree, by module name; a compiled module is read from
    its type stub (``_C.pyi``, e.g. made by the library's own stub generator)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path) if self.path.is_file() else None
        names = self._zip.namelist() if self._zip else [str(p.relative_to(self.path)) for p in self.path.rglob("*.py*")]
        self.files = {n.replace("\\", "/") for n in names if n.endswith((".py", ".pyi"))}

    def module_file(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for cand in (f"{base}.py", f"{base}/__init__.py", f"{base}.pyi"):
            hits = [f for f in self.files if f == cand or f.endswith("/" + cand)]
            if hits:
                return min(hits, key=len)
        return None

    def tree(self, module: str) -> ast.Module | None:
        f = self.module_file(module)
        if f is None:
            return None
        text = self._zip.read(f).decode() if self._zip else (self.path / f).read_text()
        return ast.parse(text)


def _resolve_from(module: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_pkg else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level(body: list) -> list:
    """Module-level statements, with those of ``try`` / ``if`` blocks (optional imports) inlined."""
    out = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.Try):
            out += _top_level(node.body)
        elif isinstance(node, ast.If):
            out += _top_level(node.body) + _top_level(node.orelse)
    return out


def _find(src: Source, module: str, name: str, depth: int = 0):
    """(defining module, ast node) of ``module.name``, following re-exports."""
    tree = src.tree(module)
    if tree is None or depth > 6:
        return None, None
    body = _top_level(tree.body)
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return module, node
    for node in body:
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if (a.asname or a.name) == name:
                    target = _resolve_from(module, node, src.module_file(module).endswith("__init__.py"))
                    found = _find(src, target, a.name, depth + 1)
                    return found if found[1] is not None else _find(src, f"{target}.{a.name}", "", depth + 1)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node
    return (module, tree) if name == "" else (None, None)


def _params(fn: ast.FunctionDef, skip_self: bool) -> list[dict]:
    a, out = fn.args, []
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    for i, (arg, d) in enumerate(zip(pos, defaults)):
        if skip_self and i == 0:
            continue
        out.append({"name": arg.arg, "kind": "POSITIONAL_ONLY" if arg in a.posonlyargs else "POSITIONAL_OR_KEYWORD",
                    "default": None if d is None else ast.unparse(d)})
    if a.vararg:
        out.append({"name": a.vararg.arg, "kind": "VAR_POSITIONAL", "default": None})
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append({"name": arg.arg, "kind": "KEYWORD_ONLY", "default": None if d is None else ast.unparse(d)})
    if a.kwarg:
        out.append({"name": a.kwarg.arg, "kind": "VAR_KEYWORD", "default": None})
    return out


def _describe(node) -> dict:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return {"kind": "function", "params": _params(node, skip_self=False)}
    if isinstance(node, ast.ClassDef):
        return _describe_class(node)
    if isinstance(node, ast.Module):
        return {"kind": "module"}
    return {"kind": "value"}


def _describe_class(node: ast.ClassDef) -> dict:
    bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
    body_assigns = [t.id for s in node.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)]
    if bases & ENUM_BASES:
        return {"kind": "enum", "members": [m for m in body_assigns if not m.startswith("_")]}
    init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    if init is not None:
        return {"kind": "class", "params": _params(init, skip_self=True)}
    fields = [(s.target.id, s.value) for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
              and "ClassVar" not in ast.unparse(s.annotation)]
    if fields and ("NamedTuple" in bases or any("dataclass" in ast.unparse(d) for d in node.decorator_list)):
        return {"kind": "class", "params": [{"name": n, "kind": "POSITIONAL_OR_KEYWORD",
                                             "default": None if v is None else ast.unparse(v)} for n, v in fields]}
    return {"kind": "class", "params": None, "members": body_assigns}  # opaque (no Python __init__)


def extract(source: Path, symbols: list[tuple[str, str]], package: str, version: str) -> dict:
    """The snapshot of ``symbols`` ((module, qualname) pairs) read from ``source``."""
    src, out = Source(source), {}
    for module, qual in sorted(set(symbols)):
        head, _, rest = qual.partition(".")
        mod, node = _find(src, module, head)
        if node is not None and rest:  # Class.method
            node = next((s for s in getattr(node, "body", []) if getattr(s, "name", None) == rest), None)
            desc = None if node is None else {"kind": "function", "params": _params(node, skip_self=True)}
        else:
            desc = None if node is None else _describe(node)
        out[f"{module}:{qual}"] = desc or {"kind": "missing"}
        if mod and desc:
            out[f"{module}:{qual}"]["defined_in"] = mod
    return {"package": package, "version": version, "symbols": out}


# ---- finding an adapter's uses ---------------------------------------------------------------------
@dataclass
class Use:
    lib: str                      # the Library variable's name in the adapter
    module: str
    qualname: str | None
    line: int
    calls: list = field(default_factory=list)     # (line, n_positional or None, keywords or None)
    members: list = field(default_factory=list)   # (line, attribute read on the object)

    @property
    def key(self) -> str:
        return f"{self.module}:{self.qualname}" if self.qualname else f"{self.module}:"


def _attr_call(node) -> tuple[str, str, str | None] | None:
    """``LIB.attr("mod", "Name")`` -> (LIB, mod, Name)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "attr"
            and isinstance(node.func.value, ast.Name) and node.args and isinstance(node.args[0], ast.Constant)):
        qual = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else None
        return node.func.value.id, node.args[0].value, qual
    return None


def _call_shape(call: ast.Call):
    npos = None if any(isinstance(a, ast.Starred) for a in call.args) else len(call.args)
    kws = None if any(k.arg is None for k in call.keywords) else [k.arg for k in call.keywords]
    return call.lineno, npos, kws


def uses(module_path: Path, libs: set[str] | None = None) -> list[Use]:
    """Every ``LIB.attr(...)`` in an adapter module, with the calls and member reads made on it
    (directly, or through a name bound to it in the same scope)."""
    tree = ast.parse(Path(module_path).read_text())
    found: dict[tuple[int, int], Use] = {}
    for node in ast.walk(tree):
        a = _attr_call(node)
        if a and (libs is None or a[0] in libs):
            found[(node.lineno, node.col_offset)] = Use(a[0], a[1], a[2], node.lineno)
    for scope in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        bound = {node.targets[0].id: found[(node.value.lineno, node.value.col_offset)] for node in ast.walk(scope)
                 if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                 and (node.value.lineno, node.value.col_offset) in found and isinstance(node.value, ast.Call)}
        _record(scope, bound, found, first=scope is tree)
    return list(found.values())


def _record(scope, bound: dict, found: dict, first: bool) -> None:
    """Calls and member reads in ``scope`` on bound names (and, once, on direct ``LIB.attr(...)`` calls)."""
    for node in ast.walk(scope):
        if isinstance(node, ast.Call):
            f = node.func
            u = bound.get(f.id) if isinstance(f, ast.Name) else None
            if u is None and first and isinstance(f, ast.Call):
                u = found.get((f.lineno, f.col_offset))
            if u is not None and _call_shape(node) not in u.calls:
                u.calls.append(_call_shape(node))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            m = (node.lineno, node.attr)
            if m not in bound[node.value.id].members:
                bound[node.value.id].members.append(m)


# ---- binding -----------------------------------------------------------------------------------------
def signature(desc: dict) -> inspect.Signature | None:
    if desc.get("params") is None:
        return None
    params = [inspect.Parameter(p["name"], getattr(inspect.Parameter, p["kind"]),
                                default=inspect.Parameter.empty if p["default"] is None else p["default"])
              for p in desc["params"]]
    return inspect.Signature(params)


def check(module_path: Path, snapshot: dict, lib: str) -> list[str]:
    """Every problem binding ``module_path``'s uses of ``lib`` to ``snapshot``; empty when all bind."""
    problems, name = [], Path(module_path).name
    for u in uses(module_path, {lib}):
        desc = snapshot["symbols"].get(u.key)
        where = f"{name}:{u.line} {u.key}"
        if desc is None:
            problems.append(f"{where}: not in the {snapshot['package']} {snapshot['version']} snapshot (re-extract it)")
            continue
        if desc["kind"] == "missing":
            problems.append(f"{where}: does not exist in {snapshot['package']} {snapshot['version']}")
            continue
        problems += _bind_calls(u, desc, name) + _members(u, desc, name)
    return problems


def _bind_calls(u: Use, desc: dict, name: str) -> list[str]:
    sig, out = signature(desc), []
    for line, npos, kws in u.calls if sig is not None else ():
        try:
            bind = sig.bind if npos is not None and kws is not None else sig.bind_partial
            bind(*([None] * (npos or 0)), **{k: None for k in (kws or [])})
        except TypeError as e:
            out.append(f"{name}:{line} {u.key}({npos} positional, keywords {kws}): {e}")
    return out


def _members(u: Use, desc: dict, name: str) -> list[str]:
    if desc["kind"] != "enum":
        return []
    return [f"{name}:{line} {u.key}.{m}: no such member (members: {', '.join(desc['members'])})"
            for line, m in u.members if m not in desc["members"] and not m.startswith("_")]


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())
