"""Every adapter call into a kernel library binds to that library's own signature, read from its
source at the pinned version (tests/fixtures/api, made with `moeacc api-snapshot`): a renamed
function, a removed keyword or a new required argument fails here, on the CPU."""

import copy
import json

import pytest

from harness.apisnap import check, uses
from harness.backends.libapi import SNAPSHOT_DIR, adapter_modules

MODULES = adapter_modules()
PAIRS = [(path, var, snap) for path, libs in MODULES.items() for var, lib in libs.items() for snap in lib.snapshots]


def snapshot(name):
    p = SNAPSHOT_DIR / f"{name}.json"
    if not p.exists():
        pytest.fail(f"{p.name} missing: moeacc api-snapshot {name} --source <wheel or source tree>")
    return json.loads(p.read_text())


@pytest.mark.parametrize("path,var,snap", PAIRS, ids=lambda v: getattr(v, "name", str(v)))
def test_adapter_calls_bind_to_the_snapshot(path, var, snap):
    assert check(path, snapshot(snap), var) == []


@pytest.mark.parametrize("path,var,snap", PAIRS, ids=lambda v: getattr(v, "name", str(v)))
def test_every_use_is_in_the_snapshot(path, var, snap):
    """The snapshot holds every object the adapter uses (re-extract it after adding a call)."""
    doc = snapshot(snap)
    missing = [u.key for u in uses(path, {var}) if u.key not in doc["symbols"]]
    assert not missing


def _called(path, var, doc):
    for u in uses(path, {var}):
        d = doc["symbols"].get(u.key, {})
        for line, npos, kws in u.calls:
            if kws and d.get("params"):
                return u.key, kws[0]
    return None


@pytest.mark.parametrize("path,var,snap", PAIRS, ids=lambda v: getattr(v, "name", str(v)))
def test_renaming_one_keyword_in_the_snapshot_fails(path, var, snap):
    doc = copy.deepcopy(snapshot(snap))
    if _called(path, var, doc) is None:
        pytest.skip(f"{path.name} makes no keyword call into {snap}")
    key, kw = _called(path, var, doc)
    for p in doc["symbols"][key]["params"]:
        if p["name"] == kw:
            p["name"] = kw + "_renamed"
    problems = check(path, doc, var)
    assert problems and any(key in p and kw in p for p in problems), problems


def test_removed_function_and_new_required_argument_fail():
    have = [p for p in PAIRS if (SNAPSHOT_DIR / f"{p[2]}.json").exists()]
    path, var, snap = next((p for p in have if _called(p[0], p[1], snapshot(p[2]))), (None, None, None))
    if path is None:
        pytest.skip("no adapter call with keywords")
    doc = snapshot(snap)
    key, _ = _called(path, var, doc)
    gone = copy.deepcopy(doc)
    gone["symbols"][key] = {"kind": "missing"}
    assert any("does not exist" in p for p in check(path, gone, var))
    extra = copy.deepcopy(doc)
    extra["symbols"][key]["params"].insert(0, {"name": "new_required", "kind": "POSITIONAL_ONLY", "default": None})
    assert any("missing a required argument" in p or "new_required" in p for p in check(path, extra, var))


def test_every_level_names_evidence_that_exists():
    """A level is a claim: each backend's evidence (snapshots, tests, committed reports) is in the repository."""
    from pathlib import Path
    from harness.backends.registry import load_backends
    root = Path(__file__).resolve().parents[1]
    missing = []
    for b in load_backends().values():
        for ev in b.verified.evidence:
            path = ev.split(" ")[0].split(";")[0]
            if "/" in path and not path.startswith("-") and not (root / path).exists():
                missing.append(f"{b.name}: {ev}")
    assert not missing, missing
