"""Keep the machine out of reports: absolute paths become project-relative, site-packages and
home directories are named, not spelled out."""

from __future__ import annotations

import os
import re
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _prefixes() -> list[tuple[str, str]]:
    pairs = [(str(PROJECT_ROOT), ".")]
    for p in {*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths().get("purelib", "")}:
        if p:
            pairs.append((p, "<site-packages>"))
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        pairs.append((p, "<python>"))
    pairs += [(tempfile.gettempdir(), "<tmp>"), (os.path.expanduser("~"), "~")]
    pairs = [(str(Path(a).resolve()) if Path(a).exists() else a, b) for a, b in pairs if a and a != "/"]
    return sorted(set(pairs), key=lambda ab: -len(ab[0]))


_PAIRS: list[tuple[str, str]] | None = None


def scrub_text(s: str) -> str:
    """``s`` with every known machine prefix replaced by its name."""
    global _PAIRS
    if _PAIRS is None:
        _PAIRS = _prefixes()
    for prefix, name in _PAIRS:
        s = s.replace(prefix, name)
    # anything else absolute (a compiler under /opt in a build log...): keep only its last component
    return ABSOLUTE.sub(lambda m: "<path>/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], s)


def scrub(obj):
    """Scrub every string in a JSON-able value."""
    if isinstance(obj, str):
        return scrub_text(obj)
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()}
    return obj


ABSOLUTE = re.compile(r"(?<![\w.~<>-])/(?:home|root|tmp|work|opt|usr|var|mnt|Users|private)/[^\s\"']+")


def absolute_paths(text: str) -> list[str]:
    """Absolute filesystem paths left in ``text`` (for tests that reports hold none)."""
    return ABSOLUTE.findall(text)


def case_path_for_report(path, run_dir) -> str:
    """A case file as a run records it: ``<project>/cases/x.yaml`` inside this checkout, else relative
    to the run folder (so ``--resume`` finds it from anywhere and no machine path is written)."""
    p = Path(path).resolve()
    if p.is_relative_to(PROJECT_ROOT):
        return "<project>/" + p.relative_to(PROJECT_ROOT).as_posix()
    return os.path.relpath(p, Path(run_dir).resolve())


def case_path_from_report(recorded: str, run_dir) -> str:
    """Inverse of :func:`case_path_for_report`."""
    if recorded.startswith("<project>/"):
        return str(PROJECT_ROOT / recorded[len("<project>/"):])
    return str(Path(run_dir) / recorded)
