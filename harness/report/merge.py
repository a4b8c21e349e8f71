"""Merge runs from several runners into one case x device matrix; diff a run against a baseline."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from harness.report.markdown import device_label, table
from harness.report.writer import SCHEMA_VERSION, ReportError


def _labels(docs: list[dict]) -> list[str]:
    """A column per device; runs on one device with different library versions (FlashInfer 0.6.12 and
    0.7.2.post1 on one H100) get a column each, named by the packages that differ."""
    base = [device_label(d.get("device", {})) for d in docs]
    out = []
    for label, d in zip(base, docs):
        same = [o.get("packages") or {} for b, o in zip(base, docs) if b == label]
        pk = d.get("packages") or {}
        differ = sorted(k for k in set().union(*same) if k != "moe-accuracy" and len({s.get(k) for s in same}) > 1)
        out.append(label + "".join(f" · {k} {pk.get(k, '-')}" for k in differ))
    return out


def _frame(docs: list[dict]) -> pd.DataFrame:
    recs = []
    for label, d in zip(_labels(docs), docs):
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
    return "\n".join(head) + table(rows, ["case · backend"] + devices) + "\n"


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
        lines.append(table([[f"`{r['case']}`", r["backend"], r["base"], r["new"], r["why"]] for r in d["regressions"]],
                           ["case", "backend", "base", "new", "why"]))
    if d["fixes"]:
        lines += ["", "### Fixed", ""]
        lines.append(table([[f"`{r['case']}`", r["backend"], r["base"], r["new"]] for r in d["fixes"]],
                           ["case", "backend", "base", "new"]))
    return "\n".join(lines) + "\n"
