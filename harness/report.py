"""Results documents (versioned JSON), markdown for PRs, merge across runners, diff vs a baseline.

A run folder holds ``rows.jsonl`` (one row appended and flushed per finished (case, backend)),
``results.json`` (the whole document, rewritten at the end; ``"complete": false`` while running)
and ``report.md``. :func:`load_run` rebuilds a killed run from ``rows.jsonl``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import tabulate as _tabulate_mod

SCHEMA = "moe-accuracy/results"
SCHEMA_VERSION = 1
STATUSES = ("pass", "fail", "error", "skipped")


class ReportError(ValueError):
    pass


def tabulate(rows, headers, tablefmt="github") -> str:
    """A markdown table whose padding does not depend on whether the optional ``wcwidth`` package
    is installed (tabulate measures emoji as 2 columns with it, 1 without): widths are counted in
    code points, so the same rows always render to the same bytes."""
    saved = _tabulate_mod.WIDE_CHARS_MODE
    _tabulate_mod.WIDE_CHARS_MODE = False
    try:
        return _tabulate_mod.tabulate(rows, headers=headers, tablefmt=tablefmt)
    finally:
        _tabulate_mod.WIDE_CHARS_MODE = saved


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
        "argv": argv or [], "rows": [], "summary": {},
    }


def summarize(rows: list[dict]) -> dict:
    by_backend: dict[str, Counter] = {}
    for r in rows:
        by_backend.setdefault(r["backend"], Counter())[r["status"]] += 1
    total = Counter(r["status"] for r in rows)
    return {"total": {s: total.get(s, 0) for s in STATUSES},
            "by_backend": {b: {s: c.get(s, 0) for s in STATUSES} for b, c in sorted(by_backend.items())}}


class RunWriter:
    """Writes a run folder incrementally so a killed process keeps its finished rows."""

    def __init__(self, out_dir: Path, doc: dict):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.doc = doc
        self._rows_path = self.dir / "rows.jsonl"
        self._rows = open(self._rows_path, "a", encoding="utf-8")
        _atomic_write(self.dir / "results.json", json.dumps(doc, indent=1))

    def add(self, row: dict) -> None:
        self.doc["rows"].append(row)
        self._rows.write(json.dumps(row) + "\n")
        self._rows.flush()
        os.fsync(self._rows.fileno())

    def close(self) -> dict:
        self._rows.close()
        self.doc["complete"] = True
        self.doc["summary"] = summarize(self.doc["rows"])
        _atomic_write(self.dir / "results.json", json.dumps(self.doc, indent=1))
        (self.dir / "report.md").write_text(render_markdown(self.doc))
        return self.doc


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    if doc.get("schema") != SCHEMA:
        raise ReportError(f"{rj}: not a moe-accuracy results document (schema={doc.get('schema')!r})")
    if doc.get("schema_version", 0) > SCHEMA_VERSION:
        raise ReportError(f"{rj}: schema_version {doc['schema_version']} is newer than this harness ({SCHEMA_VERSION})")
    rows_file = folder / "rows.jsonl"
    if not doc.get("complete") and rows_file.exists():
        rows = []
        for i, line in enumerate(rows_file.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a row cut off by the kill: everything before it is kept
        doc["rows"] = rows
        doc["summary"] = summarize(rows)
        doc["interrupted"] = True
    doc.setdefault("summary", summarize(doc.get("rows", [])))
    return doc


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _fmt_metric(m: dict | None, key: str, fmt: str) -> str:
    if not m or m.get(key) is None:
        return "-"
    return format(m[key], fmt)


def device_label(dev: dict) -> str:
    if dev.get("kind") == "cpu":
        return "cpu"
    return f"{dev.get('kind')} {dev.get('name', '')}".strip()


def render_markdown(doc: dict, max_failures: int = 30) -> str:
    rows = doc.get("rows", [])
    dev = doc.get("device", {})
    pk = doc.get("packages", {})
    s = summarize(rows)
    t = s["total"]
    badge = "✅" if t["fail"] == 0 and t["error"] == 0 else "❌"
    lines = [f"## {badge} moe-accuracy: {t['pass']} passed, {t['fail']} failed, {t['error']} errors, "
             f"{t['skipped']} skipped on {device_label(dev)}", ""]
    env = [f"torch {pk.get('torch', '?')}"] + [f"{k} {pk[k]}" for k in ("triton", "flashinfer-python") if k in pk]
    if dev.get("driver"):
        env.append(f"driver {dev['driver']}")
    if dev.get("cuda"):
        env.append(f"CUDA {dev['cuda']}")
    lines.append(f"Run `{doc.get('run_id')}` · {', '.join(env)} · harness `{(doc.get('git') or {}).get('harness') or '?'}`"
                 + (" · **interrupted: partial results**" if doc.get("interrupted") else ""))
    lines.append("")
    table = [[b, c["pass"], c["fail"], c["error"], c["skipped"]] for b, c in s["by_backend"].items()]
    lines.append(tabulate(table, headers=["backend", "pass", "fail", "error", "skipped"], tablefmt="github"))
    bad = [r for r in rows if r["status"] in ("fail", "error")]
    if bad:
        lines += ["", f"### Failures ({len(bad)})", ""]
        ft = []
        for r in bad[:max_failures]:
            diag = (r.get("diagnosis") or {}).get("conclusion", "") if isinstance(r.get("diagnosis"), dict) else ""
            ft.append([f"`{r['case']}`", r["backend"], r["status"], _fmt_metric(r.get("metrics"), "mismatch", ".2%"),
                       _fmt_metric(r.get("metrics"), "rel_l2", ".3g"), r["message"].replace("|", "\\|"),
                       diag.replace("|", "\\|") or "-"])
        lines.append(tabulate(ft, headers=["case", "backend", "status", "mismatch", "rel_l2", "why", "diagnosis"],
                              tablefmt="github"))
        if len(bad) > max_failures:
            lines.append(f"\n… and {len(bad) - max_failures} more in results.json")
        maps = [r for r in bad[:max_failures] if str(r.get("heatmap", "")).endswith(".png")]
        if maps:
            lines += ["", "<details><summary>Error structure (|err| by token and column, folded by 32 and 128)</summary>", ""]
            lines += [f"![{r['case']} / {r['backend']}]({r['heatmap']})" for r in maps]
            lines += ["", "</details>"]
        lines += ["", "<details><summary>Reproduce</summary>", "", "```bash"]
        lines += [r["repro"] for r in bad[:max_failures]]
        lines += ["```", "", "</details>"]
    passed = [r for r in rows if r["status"] == "pass"]
    if passed:
        lines += ["", "<details><summary>Passing rows</summary>", ""]
        pt = [[f"`{r['case']}`", r["backend"], _fmt_metric(r["metrics"], "mismatch", ".2%"),
               _fmt_metric(r["metrics"], "rel_l2", ".2e"), _fmt_metric(r["metrics"], "cosine", ".6f"),
               _fmt_metric(r["metrics"], "snr_db", ".1f")] for r in passed]
        lines.append(tabulate(pt, headers=["case", "backend", "mismatch", "rel_l2", "cosine", "SNR dB"], tablefmt="github"))
        lines += ["", "</details>"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    if skipped:
        reasons = Counter((r["backend"], r["message"]) for r in skipped)
        lines += ["", "<details><summary>Skipped</summary>", ""]
        lines.append(tabulate([[b, m, n] for (b, m), n in sorted(reasons.items())],
                              headers=["backend", "reason", "rows"], tablefmt="github"))
        lines += ["", "</details>"]
    notes = {r["backend"]: r["backend_notes"] for r in rows if r.get("backend_notes")}
    if notes:
        lines += ["", "### Backend notes", ""]
        for b, n in sorted(notes.items()):
            lines.append(f"- **{b}**: " + "; ".join(f"{k}: {v}" for k, v in n.items()))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Merge and diff
# --------------------------------------------------------------------------------------------
def _frame(docs: list[dict]) -> pd.DataFrame:
    recs = []
    for d in docs:
        label = device_label(d.get("device", {}))
        for r in d.get("rows", []):
            m = r.get("metrics") or {}
            recs.append({"device": label, "case": r["case"], "backend": r["backend"], "status": r["status"],
                         "message": r.get("message", ""), "mismatch": m.get("mismatch"), "rel_l2": m.get("rel_l2"),
                         "run_id": d.get("run_id")})
    return pd.DataFrame(recs, columns=["device", "case", "backend", "status", "message", "mismatch", "rel_l2", "run_id"])


_CELL = {"pass": "✅", "fail": "❌", "error": "💥", "skipped": "⏭"}


def merge_runs(docs: list[dict]) -> dict:
    """One case x device matrix (a column per device) over many runs; later runs win per cell."""
    if not docs:
        raise ReportError("merge: no runs given")
    df = _frame(docs)
    devices = list(dict.fromkeys(df["device"])) if len(df) else []
    cells: dict = {}
    for rec in df.to_dict("records"):
        cells.setdefault(f"{rec['case']} · {rec['backend']}", {})[rec["device"]] = {
            k: rec[k] for k in ("status", "mismatch", "rel_l2", "message")}
    return {"schema": "moe-accuracy/matrix", "schema_version": SCHEMA_VERSION, "devices": devices,
            "runs": [{"run_id": d.get("run_id"), "device": d.get("device"), "packages": d.get("packages")} for d in docs],
            "cells": dict(sorted(cells.items()))}


def render_matrix_markdown(matrix: dict) -> str:
    devices = matrix["devices"]
    rows = []
    for key, per in matrix["cells"].items():
        row = [f"`{key}`"]
        for d in devices:
            c = per.get(d)
            if c is None:
                row.append("")
            elif c["status"] in ("pass", "fail") and c.get("mismatch") is not None:
                row.append(f"{_CELL[c['status']]} {c['mismatch']:.2%}")
            else:
                row.append(_CELL.get(c["status"], c["status"]))
        rows.append(row)
    counts = []
    for d in devices:
        st = Counter(per[d]["status"] for per in matrix["cells"].values() if d in per)
        counts.append(f"{d}: {st.get('pass', 0)} pass, {st.get('fail', 0)} fail, {st.get('error', 0)} error, {st.get('skipped', 0)} skipped")
    head = ["## moe-accuracy matrix", "", "; ".join(counts), "",
            "Cells: status and mismatch fraction (✅ pass, ❌ fail, 💥 error, ⏭ skipped).", ""]
    return "\n".join(head) + tabulate(rows, headers=["case · backend"] + devices, tablefmt="github") + "\n"


def diff_runs(base: dict, new: dict, rel_margin: float = 0.25, abs_margin: float = 0.002) -> dict:
    """Regressions, fixes and unchanged rows of ``new`` against ``base``.

    A regression is a row that passed (or was absent) and now fails or errors, or whose
    rel_l2 or mismatch grew by more than ``rel_margin`` (relative) *and* ``abs_margin`` (absolute).
    """
    b = {(r["case"], r["backend"]): r for r in base.get("rows", [])}
    n = {(r["case"], r["backend"]): r for r in new.get("rows", [])}
    out = {"regressions": [], "fixes": [], "unchanged": [], "new": [], "gone": []}
    for key, nr in n.items():
        br = b.get(key)
        item = {"case": key[0], "backend": key[1], "base": br and br["status"], "new": nr["status"],
                "message": nr.get("message", "")}
        if br is None:
            out["new"].append(item)
            if nr["status"] in ("fail", "error"):
                out["regressions"].append(item | {"why": f"new row {nr['status']}: {nr.get('message', '')}"})
            continue
        bad_now, bad_before = nr["status"] in ("fail", "error"), br["status"] in ("fail", "error")
        if bad_now and not bad_before and br["status"] == "pass":
            out["regressions"].append(item | {"why": f"{br['status']} -> {nr['status']}: {nr.get('message', '')}"})
            continue
        if bad_before and nr["status"] == "pass":
            out["fixes"].append(item)
            continue
        worse = _metric_worse(br.get("metrics"), nr.get("metrics"), rel_margin, abs_margin)
        if worse and nr["status"] == "pass":
            out["regressions"].append(item | {"why": worse})
        else:
            out["unchanged"].append(item)
    for key, br in b.items():
        if key not in n:
            out["gone"].append({"case": key[0], "backend": key[1], "base": br["status"], "new": None})
    out["summary"] = {k: len(v) for k, v in out.items() if isinstance(v, list)}
    return out


def _metric_worse(bm, nm, rel_margin, abs_margin) -> str | None:
    if not bm or not nm:
        return None
    for key in ("rel_l2", "mismatch"):
        a, c = bm.get(key), nm.get(key)
        if a is None or c is None:
            continue
        if c - a > abs_margin and c > a * (1 + rel_margin):
            return f"{key} {a:.4g} -> {c:.4g} (worse by more than {rel_margin:.0%} and {abs_margin:g})"
    return None


def render_diff_markdown(d: dict) -> str:
    s = d["summary"]
    lines = [f"## moe-accuracy diff: {s['regressions']} regressions, {s['fixes']} fixes, {s['unchanged']} unchanged"
             f" ({s['new']} new rows, {s['gone']} gone)", ""]
    if d["regressions"]:
        lines.append(tabulate([[f"`{r['case']}`", r["backend"], r["base"], r["new"], r["why"]] for r in d["regressions"]],
                              headers=["case", "backend", "base", "new", "why"], tablefmt="github"))
    if d["fixes"]:
        lines += ["", "### Fixed", ""]
        lines.append(tabulate([[f"`{r['case']}`", r["backend"], r["base"], r["new"]] for r in d["fixes"]],
                              headers=["case", "backend", "base", "new"], tablefmt="github"))
    return "\n".join(lines) + "\n"
