"""What the ``moeacc`` commands share: consoles, case and backend selection, one-line failures."""

from __future__ import annotations

from rich.markup import escape
import fnmatch
import sys
from pathlib import Path

import click
from rich.console import Console

from harness.backends.registry import select_backends
from harness.cases import Case, CaseError, Tier, load_cases
from harness.device import device_info, resolve_device

console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out_console = Console(width=None if sys.stdout.isatty() else 200)
DEFAULT_CASES = Path(__file__).resolve().parents[2] / "cases"
STATUS_STYLE = {"pass": "green", "fail": "bold red", "error": "bold magenta", "skipped": "dim"}


def fail(msg: str, code: int = 2):
    console.print(f"[bold red]moeacc:[/] {escape(str(msg))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def cases_options(f):
    f = click.option("--cases", "cases_paths", multiple=True, type=click.Path(),
                     help="case files or folders (default: the project's cases/)")(f)
    f = click.option("--case", "pattern", default=None, help="case name glob(s), comma-separated")(f)
    f = click.option("--tag", "tags", multiple=True, help="only cases with this tag")(f)
    return f


def load(cases_paths, pattern, tags, tiers: tuple[Tier, ...] | None = None) -> list[Case]:
    try:
        cases = load_cases(cases_paths or [DEFAULT_CASES], pattern, tuple(tags))
    except CaseError as e:
        fail(str(e))
    if tiers is not None:
        cases = [c for c in cases if c.tier in tiers]
    if not cases:
        fail(f"no case matches (cases={list(cases_paths) or ['cases']}, case={pattern}, tags={list(tags)})")
    return cases


def device_or_fail(device: str) -> tuple[str, dict]:
    try:
        dev = resolve_device(device)
    except RuntimeError as e:
        fail(str(e))
    return dev, device_info(dev)


def parse_tiers(tier: str | None, kind: str) -> tuple[Tier, ...]:
    if not tier:
        return (Tier.SMOKE,) if kind == "cpu" else tuple(Tier)
    try:
        return tuple(Tier(t) for t in tier.split(","))
    except ValueError:
        fail(f"--tier {tier!r}: tiers are {', '.join(t.value for t in Tier)}")


def split_backend_patterns(patterns: str | None, probe_names: list[str]) -> tuple[str | None, list[str]]:
    """``--backend`` globs split into (backend globs, probe globs). A glob matching a backend is a
    backend glob; one matching only probes is a probe glob; one matching neither is an error."""
    if not patterns:
        return None, ["*"]
    from harness.backends.registry import load_backends, zoo
    names = list(load_backends()) + ([b.name for b in zoo()] if "zoo:" in patterns else [])
    back, probes = [], []
    for p in (p.strip() for p in patterns.split(",") if p.strip()):
        hits_b = any(fnmatch.fnmatchcase(n, p) for n in names)
        hits_p = any(fnmatch.fnmatchcase(n, p) for n in probe_names)
        if not hits_b and not hits_p:
            fail(f"--backend {p!r} matches no backend or probe; `moeacc list` shows them")
        (back if hits_b else probes).append(p)
        if hits_b and hits_p:
            probes.append(p)
    return (",".join(back) if back else ""), probes


def backends_or_fail(patterns: str | None):
    try:
        return select_backends(patterns)
    except KeyError as e:
        fail(str(e.args[0]))


def rule_option(f):
    from harness.compare import RULE_NAMES
    return click.option("--rule", "rules", multiple=True, type=click.Choice(RULE_NAMES + ("all",)),
                        help="compare rule(s): the first decides the verdict, every one is recorded in the row "
                             "(moeacc: this project's; vllm: check_accuracy; flashinfer-bench); all: the three")(f)


def parse_rules(rules) -> tuple:
    from harness.compare import RULE_NAMES
    if not rules:
        return ("moeacc",)
    if "all" in rules:
        first = rules[0] if rules[0] != "all" else "moeacc"
        return (first,) + tuple(r for r in RULE_NAMES if r != first)
    return tuple(dict.fromkeys(rules))
