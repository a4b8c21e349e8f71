"""Console output for people: the results table (fits 100 columns: details go under their row),
and skipped rows summarized one line per backend."""

from __future__ import annotations

from collections import Counter, defaultdict

from rich.markup import escape
from rich.table import Table

from harness.cli.common import STATUS_STYLE, out_console
from harness.results import ResultRow, Status

WIDTH = 100


def _fmt(m: dict | None, key: str, fmt: str) -> str:
    return "-" if not m or m.get(key) is None else format(m[key], fmt)


def skip_summary(rows: list[ResultRow]) -> list[str]:
    """``aiter-mxfp4: 24 skipped, needs gfx950, found cpu`` (the commonest reason, and how many others)."""
    by_backend: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        if r.status is Status.SKIPPED:
            by_backend[r.backend][r.message] += 1
    lines = []
    for b, reasons in sorted(by_backend.items()):
        (top, _), n = reasons.most_common(1)[0], sum(reasons.values())
        more = f" (and {len(reasons) - 1} other reason{'s' if len(reasons) > 2 else ''})" if len(reasons) > 1 else ""
        lines.append(f"{b}: {n} skipped, {top}{more}")
    return lines


def print_rows(rows: list[ResultRow], title: str = "moe-accuracy") -> None:
    shown = [r for r in rows if r.status is not Status.SKIPPED]
    if shown:
        t = Table(title=title, width=min(WIDTH, out_console.width), show_lines=False)
        t.add_column("status", no_wrap=True)
        t.add_column("case", overflow="fold", ratio=3)
        t.add_column("backend", overflow="fold", ratio=2)
        t.add_column("mismatch", justify="right", no_wrap=True)
        t.add_column("rel_l2", justify="right", no_wrap=True)
        for r in shown:
            st = r.status.value
            t.add_row(f"[{STATUS_STYLE[st]}]{st}[/]", escape(r.case), escape(r.backend), _fmt(r.metrics, "mismatch", ".2%"),
                      _fmt(r.metrics, "rel_l2", ".2e"))
            detail = "" if r.status is Status.PASS else r.message
            if r.diagnosis and r.diagnosis.get("conclusion"):
                detail += f"\n→ {r.diagnosis['conclusion']}"
            if detail:
                t.add_row("", f"[dim]{escape(detail)}[/]", end_section=True)
        out_console.print(t)
    for line in skip_summary(rows):
        out_console.print(f"[dim]skipped[/] {escape(line)}", highlight=False, soft_wrap=True)
