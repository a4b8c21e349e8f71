"""Run folders: ``rows.jsonl`` (one row appended and flushed per finished (case, backend)),
``results.json`` (the whole versioned document; ``"complete": false`` while running) and
``report.md``. :func:`load_run` rebuilds a killed run from ``rows.jsonl``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path

from harness.report.markdown import render_markdown
from harness.report.paths import scrub
from harness.results import ResultRow, summarize

SCHEMA = "moe-accuracy/results"
SCHEMA_VERSION = 1


class ReportError(ValueError):
    pass


def git_commit(path: str | Path = ".") -> str | None:
    if os.environ.get("MOEACC_HARNESS_COMMIT"):  # set where the checkout travels without .git
        return os.environ["MOEACC_HARNESS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def new_document(device: dict, packages: dict, run_id: str, argv: list[str] | None = None,
                 code_under_test: str | None = None) -> dict:
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_id": run_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False, "device": device, "packages": packages,
        "git": {"harness": git_commit(Path(__file__).resolve().parent), "code_under_test": code_under_test},
        "argv": scrub(list(argv or [])), "rows": [], "summary": {},
    }


class RunWriter:
    """Writes a run folder incrementally so a killed process keeps its finished rows."""

    def __init__(self, out_dir: Path, doc: dict, resume: bool = False):
        self.dir = Path(out_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._rows = open(self.dir / "rows.jsonl", "a", encoding="utf-8")
        except OSError as e:
            raise ReportError(f"{out_dir}: cannot write the report here: {e.strerror or e}") from None
        self.doc = doc
        if not resume:
            _atomic_write(self.dir / "results.json", json.dumps(doc, indent=1))

    def add(self, row: ResultRow | dict) -> None:
        d = scrub(row.to_json() if isinstance(row, ResultRow) else row)
        self.doc["rows"].append(d)
        self._rows.write(json.dumps(d) + "\n")
        self._rows.flush()
        os.fsync(self._rows.fileno())

    def close(self) -> dict:
        self._rows.close()
        self.doc["complete"] = True
        self.doc.pop("interrupted", None)
        self.doc["summary"] = summarize(self.doc["rows"])
        _atomic_write(self.dir / "results.json", json.dumps(self.doc, indent=1))
        (self.dir / "report.md").write_text(render_markdown(self.doc))
        return self.doc


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rows_from_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a row cut off by the kill: everything before it is kept
    return rows


def load_run(path: str | Path) -> dict:
    """Load a run from a folder or a results.json; an interrupted run is rebuilt from rows.jsonl."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    rj = folder / "results.json" if p.is_dir() else p
    if not rj.exists():
        raise ReportError(f"{rj}: no results.json here")
    try:
        doc = json.loads(rj.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{rj}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ReportError(f"{rj}: not a moe-accuracy results document (schema={doc.get('schema') if isinstance(doc, dict) else None!r})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"{rj}: schema_version {doc.get('schema_version')!r}; this harness reads version {SCHEMA_VERSION}")
    rows_file = folder / "rows.jsonl"
    if not doc.get("complete") and rows_file.exists():
        doc["rows"] = _rows_from_jsonl(rows_file)
        doc["interrupted"] = True
    doc["summary"] = summarize(doc.get("rows", []))
    return doc
