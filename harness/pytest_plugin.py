"""pytest integration: the harness's cases run as pytest items and write the same reports.

Options (all optional): ``--moeacc-cases PATH`` (repeatable; default the project's cases/),
``--moeacc-case GLOB``, ``--moeacc-backends GLOBS``, ``--moeacc-device auto|cpu|cuda``,
``--moeacc-tier smoke,gpu,nightly``, ``--moeacc-report DIR`` (results.json + report.md written at
session end), ``--moeacc-shard I/N`` (this runner's share of the case list; merge the runners'
reports with ``moeacc merge``). Items carry a marker per device kind a backend needs (``sm90``,
``sm100``, ``rocm``, ``gpu``) so ``-m "not gpu"`` works; their id is ``<case>~<backend>``.
A test asks for the ``moeacc_case`` and ``moeacc_backend`` arguments; see tests/test_accuracy.py.

Crash protection comes from the well-kept plugins, not from a runner of ours: run with
pytest-xdist (``-n 1`` or more: a worker that segfaults, aborts or is killed is replaced and the
item fails) and pytest-timeout (``--timeout 600 --timeout-method=thread``: a hung item dumps its
stacks and ends its worker). Each worker appends its rows to ``rows-<worker>.jsonl`` as they
finish, so a crash loses none; the controller turns each crashed item into an ``error`` row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_ROWS_KEY = pytest.StashKey[list]()
ID_SEP = "~"


def pytest_addoption(parser):
    g = parser.getgroup("moe-accuracy")
    g.addoption("--moeacc-cases", action="append", default=None, help="case files or folders")
    g.addoption("--moeacc-case", default=None, help="case name glob(s), comma-separated")
    g.addoption("--moeacc-backends", default=None, help="backend name glob(s), comma-separated")
    g.addoption("--moeacc-device", default="auto", help="auto, cpu, cuda")
    g.addoption("--moeacc-tier", default=None, help="case tiers (default: smoke on CPU, all on GPU)")
    g.addoption("--moeacc-report", default=None, help="write results.json + report.md here at session end")
    g.addoption("--moeacc-shard", default=None, help="I/N: run every N-th case starting at I")
    g.addoption("--moeacc-rule", action="append", default=None,
                help="compare rule(s): moeacc, vllm, flashinfer-bench or all; the first decides, all are recorded")


def _worker_gpu():
    """Pin each xdist worker to its own GPU on a multi-GPU host."""
    wid = os.environ.get("PYTEST_XDIST_WORKER")
    if not wid:
        return
    import torch
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # CPU workers share the cores instead of fighting over them
        return
    n = torch.cuda.device_count()
    torch.cuda.set_device(int(wid.lstrip("gw") or 0) % n)


def pytest_configure(config):
    config.stash[_ROWS_KEY] = []
    _worker_gpu()


def _marks_for(backend) -> list:
    devs = set(backend.requirements.devices)
    marks = []
    if devs & {"cuda", "sm90", "sm90+", "sm100", "sm100+", "sm120", "rocm", "gfx942", "gfx950"}:
        marks.append(pytest.mark.gpu)
    for d, m in (("sm90", "sm90"), ("sm100", "sm100"), ("sm100+", "sm100"), ("rocm", "rocm"), ("gfx942", "rocm"),
                 ("gfx950", "rocm")):
        if d in devs:
            marks.append(getattr(pytest.mark, m))
    return marks


def pytest_generate_tests(metafunc):
    if not {"moeacc_case", "moeacc_backend"} <= set(metafunc.fixturenames):
        return
    from harness.backends.registry import select_backends
    from harness.cases import Tier, load_cases
    from harness.device import device_info, resolve_device
    opt = metafunc.config.getoption
    root = Path(__file__).resolve().parent.parent
    dev = resolve_device(opt("moeacc_device"))
    kind = device_info(dev)["kind"]
    tiers = opt("moeacc_tier")
    tiers = tuple(Tier(t) for t in tiers.split(",")) if tiers else ((Tier.SMOKE,) if kind == "cpu" else tuple(Tier))
    cases = [c for c in load_cases(opt("moeacc_cases") or [root / "cases"], opt("moeacc_case")) if c.tier in tiers]
    shard = opt("moeacc_shard")
    if shard:
        i, n = (int(v) for v in shard.split("/"))
        cases = cases[i::n]
    backends = select_backends(opt("moeacc_backends"))
    params = [pytest.param(c, b, id=f"{c.name}{ID_SEP}{b.name}", marks=_marks_for(b)) for c in cases for b in backends]
    metafunc.parametrize(("moeacc_case", "moeacc_backend"), params)


@pytest.fixture(scope="session")
def moeacc_device(request):
    from harness.device import device_info, resolve_device
    dev = resolve_device(request.config.getoption("moeacc_device"))
    return dev, device_info(dev)["kind"]


@pytest.fixture(scope="session")
def moeacc_rules(request) -> tuple:
    """The compare rules of this session (--moeacc-rule): pass to ``run_one(..., rules=...)``."""
    from harness.cli.common import parse_rules
    return parse_rules(request.config.getoption("moeacc_rule") or ())


@pytest.fixture
def moeacc_record(request):
    """Call with a result row (a ResultRow); it lands in the session report (a worker's rows are
    appended to its own file at once, so a later crash of that worker loses none)."""
    def record(row):
        d = row.to_json()
        request.config.stash[_ROWS_KEY].append(d)
        out, wid = _report_dir(request.config), os.environ.get("PYTEST_XDIST_WORKER")
        if out is not None and wid:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / f"rows-{wid}.jsonl", "a") as f:
                f.write(json.dumps(d) + "\n")
    return record


def _report_dir(config) -> Path | None:
    d = config.getoption("moeacc_report")
    return Path(d) if d else None


def pytest_runtest_logreport(report):
    """On the xdist controller: an item whose worker crashed (or was ended by pytest-timeout)
    becomes an error row, since the worker never recorded one."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not report.failed or ID_SEP not in report.nodeid:
        return
    text = str(report.longrepr)
    if "crashed" not in text:
        return
    param = report.nodeid.rsplit("[", 1)[-1].rstrip("]")
    case, _, backend = param.partition(ID_SEP)
    _CRASHED.append({"case": case, "backend": backend, "status": "error", "case_file": "", "metrics": None,
                     "thresholds": None, "repro": "", "shape": "", "tags": [], "duration_s": 0.0, "diagnosis": None,
                     "message": "worker died (pytest-xdist replaced it; a crash, or pytest-timeout ending a hang): "
                                + " ".join(text.split())[:200]})


_CRASHED: list[dict] = []


def pytest_sessionfinish(session, exitstatus):
    out = _report_dir(session.config)
    if out is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a worker's rows are in its rows-<worker>.jsonl already
    out.mkdir(parents=True, exist_ok=True)
    rows = list(session.config.stash[_ROWS_KEY])
    for f in sorted(out.glob("rows-gw*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        f.unlink()
    rows += _CRASHED
    from harness.device import device_info, package_versions, resolve_device
    from harness.report import RunWriter, new_document
    dev = resolve_device(session.config.getoption("moeacc_device"))
    w = RunWriter(out, new_document(device_info(dev), package_versions(), out.name, ["pytest"]))
    for r in rows:
        w.add(r)
    w.close()
