"""Case files: YAML with optional ``defaults`` and per-case ``grid`` expansion; filtering by name
glob and tags. Errors name the file, the case and the field; nothing here raises anything else."""

from __future__ import annotations

import fnmatch
import itertools
import os
from dataclasses import replace
from pathlib import Path

import yaml

from harness.cases.schema import FIELDS, CaseError, Case, parse_activation, validate_case

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def display_path(p: str | Path) -> str:
    """A path for reports: relative to the project, else to the working directory, else the name."""
    p = Path(p).resolve()
    for root in (PROJECT_ROOT, Path.cwd().resolve()):
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            continue
    return p.name


def _grid_label(key: str, value) -> str:
    if key == "activation" and isinstance(value, dict):
        try:
            return str(parse_activation(value))
        except ValueError:
            return str(value)
    return str(value)


def _expand(raw: dict, where: str) -> list[dict]:
    grid = raw.get("grid")
    if grid is None:
        return [raw]
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise CaseError(f"{where}: field 'grid': must map field names to non-empty lists")
    bad = sorted(str(k) for k in grid if k not in FIELDS)
    if bad:
        raise CaseError(f"{where}: field 'grid.{bad[0]}': unknown field")
    base = {k: v for k, v in raw.items() if k != "grid"}
    out = []
    for combo in itertools.product(*grid.values()):
        d = dict(base)
        d.update(dict(zip(grid, combo)))
        d["name"] = f"{base.get('name', '?')}[" + ",".join(f"{k}={_grid_label(k, v)}" for k, v in zip(grid, combo)) + "]"
        out.append(d)
    return out


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise CaseError(f"{path}:{at}: not valid YAML: {' '.join(str(getattr(e, 'problem', e)).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CaseError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None


def load_case_file(path: str | Path) -> list[Case]:
    path = Path(path)
    doc = _read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise CaseError(f"{path}: expected a mapping with a 'cases' list at the top level")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise CaseError(f"{path}: 'defaults' must be a mapping")
    shown = display_path(path)
    out: list[Case] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["cases"]):
        if not isinstance(raw, dict):
            raise CaseError(f"{path}: case #{i + 1}: must be a mapping, got {type(raw).__name__}")
        label = f"{path}: case '{raw.get('name', f'#{i + 1}')}'"
        for d in _expand({**defaults, **raw}, label):
            c = replace(validate_case(d, f"{path}: case '{d.get('name', f'#{i + 1}')}'"), file=shown)
            if c.name in seen:
                raise CaseError(f"{label}: field 'name': duplicate case name {c.name!r}")
            seen.add(c.name)
            out.append(c)
    return out


def _case_files(paths) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml"))
        elif p.exists():
            files.append(p)
        else:
            raise CaseError(f"{p}: no such case file or folder")
    return files


def load_cases(paths, pattern: str | None = None, tags: tuple = ()) -> list[Case]:
    """Load every ``*.yaml`` under the given files/folders, optionally filtered by name glob and tags."""
    cases: list[Case] = []
    names: dict[str, str] = {}
    for f in _case_files(paths):
        for c in load_case_file(f):
            if c.name in names:
                raise CaseError(f"{f}: case '{c.name}': field 'name': also defined in {names[c.name]}")
            names[c.name] = os.fspath(f)
            cases.append(c)
    if pattern:
        pats = pattern.split(",")
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in pats)]
    if tags:
        cases = [c for c in cases if set(tags) & set(c.tags)]
    return cases
