"""Markdown for PRs and job summaries: a run, a merged matrix, a diff. Tables come from tabulate
with widths counted in code points, so output does not depend on the optional ``wcwidth``."""

from __future__ import annotations

from collections import Counter

import tabulate as _tabulate_mod

from harness.results import summarize


def table(rows, headers) -> str:
    """A GitHub markdown table, the same bytes whether or not ``wcwidth`` is installed."""
    saved = _tabulate_mod.WIDE_CHARS_MODE
    _tabulate_mod.WIDE_CHARS_MODE = False
    try:
        return _tabulate_mod.tabulate(rows, headers=headers, tablefmt="github")
    finally:
        _tabulate_mod.WIDE_CHARS_MODE = saved


def fmt_metric(m: dict | None, key: str, fmt: str) -> str:
    if not m or m.get(key) is None:
        return "-"
    return format(m[key], fmt)


def device_label(dev: dict) -> str:
    if dev.get("kind") == "cpu":
        return "cpu"
    return f"{dev.get('kind')} {dev.get('name', '')}".strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _header(doc: dict, s: dict) -> list[str]:
    dev, pk, t = doc.get("device", {}), doc.get("packages", {}), s["total"]
    badge = "✅" if t["fail"] == 0 and t["error"] == 0 else "❌"
    env = [f"torch {pk.get('torch', '?')}"] + [f"{k} {pk[k]}" for k in ("triton", "flashinfer-python") if k in pk]
    env += [f"driver {dev['driver']}"] if dev.get("driver") else []
    env += [f"CUDA {dev['cuda']}"] if dev.get("cuda") else []
    return [f"## {badge} moe-accuracy: {t['pass']} passed, {t['fail']} failed, {t['error']} errors, "
            f"{t['skipped']} skipped on {device_label(dev)}", "",
            f"Run `{doc.get('run_id')}` · {', '.join(env)} · harness `{(doc.get('git') or {}).get('harness') or '?'}`"
            + (" · **interrupted: partial results**" if doc.get("interrupted") else ""), ""]


def _failures(bad: list[dict], max_failures: int) -> list[str]:
    lines = ["", f"### Failures ({len(bad)})", ""]
    ft = []
    for r in bad[:max_failures]:
        diag = (r.get("diagnosis") or {}).get("conclusion", "") if isinstance(r.get("diagnosis"), dict) else ""
        ft.append([f"`{r['case']}`", r["backend"], r["status"], fmt_metric(r.get("metrics"), "mismatch", ".2%"),
                   fmt_metric(r.get("metrics"), "rel_l2", ".3g"), _cell(r["message"]), _cell(diag) or "-"])
    lines.append(table(ft, ["case", "backend", "status", "mismatch", "rel_l2", "why", "diagnosis"]))
    if len(bad) > max_failures:
        lines.append(f"\n… and {len(bad) - max_failures} more in results.json")
    maps = [r for r in bad[:max_failures] if str(r.get("heatmap", "")).endswith(".png")]
    if maps:
        lines += ["", "<details><summary>Error structure (|err| by token and column, folded by 32 and 128)</summary>", ""]
        lines += [f"![{r['case']} / {r['backend']}]({r['heatmap']})" for r in maps] + ["", "</details>"]
    return lines + ["", "<details><summary>Reproduce</summary>", "", "```bash"] + \
        [r["repro"] for r in bad[:max_failures]] + ["```", "", "</details>"]


def _passing(passed: list[dict]) -> list[str]:
    pt = [[f"`{r['case']}`", r["backend"], fmt_metric(r["metrics"], "mismatch", ".2%"),
           fmt_metric(r["metrics"], "rel_l2", ".2e"), fmt_metric(r["metrics"], "cosine", ".6f"),
           fmt_metric(r["metrics"], "snr_db", ".1f")] for r in passed]
    return ["", "<details><summary>Passing rows</summary>", "",
            table(pt, ["case", "backend", "mismatch", "rel_l2", "cosine", "SNR dB"]), "", "</details>"]


def _skipped(skipped: list[dict]) -> list[str]:
    reasons = Counter((r["backend"], r["message"]) for r in skipped)
    return ["", "<details><summary>Skipped</summary>", "",
            table([[b, m, n] for (b, m), n in sorted(reasons.items())], ["backend", "reason", "rows"]), "", "</details>"]


def render_markdown(doc: dict, max_failures: int = 30) -> str:
    rows = doc.get("rows", [])
    s = summarize(rows)
    lines = _header(doc, s)
    lines.append(table([[b, c["pass"], c["fail"], c["error"], c["skipped"]] for b, c in s["by_backend"].items()],
                       ["backend", "pass", "fail", "error", "skipped"]))
    bad = [r for r in rows if r["status"] in ("fail", "error")]
    if bad:
        lines += _failures(bad, max_failures)
    passed = [r for r in rows if r["status"] == "pass"]
    if passed:
        lines += _passing(passed)
    skipped = [r for r in rows if r["status"] == "skipped"]
    if skipped:
        lines += _skipped(skipped)
    split = [r for r in rows if (r.get("verdicts") or {}).get("disagree")]
    if split:
        lines += ["", f"### Compare rules disagree ({len(split)})", ""]
        lines.append(table([[f"`{r['case']}`", r["backend"]] + [("✅ " if v["passed"] else "❌ ") + _cell(v["detail"])
                                                              for k, v in r["verdicts"].items() if k != "disagree"]
                            for r in split], ["case", "backend"] + [k for k in split[0]["verdicts"] if k != "disagree"]))
    notes = {r["backend"]: r["backend_notes"] for r in rows if r.get("backend_notes")}
    if notes:
        lines += ["", "### Backend notes", ""]
        lines += [f"- **{b}**: " + "; ".join(f"{k}: {v}" for k, v in n.items()) for b, n in sorted(notes.items())]
    return "\n".join(lines) + "\n"
