"""``moeacc fuzz`` on the CPU: every zoo fault is found on its emulated base and shrunk small; a
racy backend is caught by the determinism check; correct emulations survive a fixed budget; a
repro file replays through ``moeacc check``."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.backends.emulated_cutlass import EmulatedSm90W4A16
from harness.backends.registry import select_backends
from harness.faults import FAULTS
from harness.fuzz.engine import FuzzOptions, fuzz
from harness.fuzz.strategies import Budget

ROOT = Path(__file__).resolve().parents[1]
SMALL = Budget(max_dim=384, max_tokens=64, max_weight_elems=2**20, max_act_elems=2**16)
_ZOO = [b.name for b in select_backends("zoo:*")]
BASES = {f.name: next((n for n in _ZOO if n == f"zoo:{f.name}@emulated-sm90-w4a16"),
                      next(n for n in _ZOO if n.startswith(f"zoo:{f.name}@emulated-"))) for f in FAULTS}


def run(tmp_path, backend, examples=40, seed=0, repeat=1, time_budget=60):
    return fuzz(FuzzOptions(backend, "cpu", examples, seed, tmp_path, repeat=repeat, budget=SMALL, time_budget=time_budget))


@pytest.mark.parametrize("fault", sorted(BASES))
def test_fuzz_finds_every_zoo_fault(tmp_path, fault):
    rep = run(tmp_path, BASES[fault], examples=60)
    assert [f.kind for f in rep.findings] == ["accuracy"], (rep.examples, rep.findings)
    f = rep.findings[0]
    assert f.case.tokens >= 1 and (tmp_path / f.repro).exists()
    assert f.row.diagnosis and f.row.diagnosis["best"] == fault, f.row.diagnosis


def test_sm90_interleave_faults_shrink_small(tmp_path):
    """The scale interleave is the identity while K <= 128 (one 128-block): its fault shrinks to K
    just above 128. The emulated byte interleave permutes bytes at every K (padded to 128), so
    its fault shrinks to the smallest case there is; whether the real kernel agrees at K = 128 is
    what an H100 run of the same repro settles (FlashInfer's docstring says "for any K > 128")."""
    (s,) = run(tmp_path / "s", BASES["scales-not-sm90-interleaved"], examples=100, time_budget=120).findings
    assert s.case.tokens == 1 and s.case.experts <= 2 and s.case.topk == 1, s.case.short()
    assert 128 < max(s.case.hidden, s.case.intermediate) <= 256 and min(s.case.hidden, s.case.intermediate) <= 128
    (w,) = run(tmp_path / "w", BASES["weights-not-sm90-interleaved"], examples=100, time_budget=120).findings
    assert (w.case.tokens, w.case.experts, w.case.topk, w.case.hidden, w.case.intermediate) == (1, 1, 1, 32, 32)


class Racy(EmulatedSm90W4A16):
    """Correct, except that on some calls one output element is nudged (a race's signature)."""

    name = "racy-sm90"
    calls = 0

    def run(self, p, data):
        out = super().run(p, data)
        Racy.calls += 1
        if Racy.calls % 3 == 0 and out.numel():
            out = out.clone()
            out.view(-1)[out.numel() // 2] += out.abs().max() * 0.05 + 1e-3
        return out


def test_determinism_check_catches_a_racy_backend(tmp_path):
    rep = run(tmp_path, Racy(), examples=20, repeat=3)
    kinds = [f.kind for f in rep.findings]
    assert "nondeterministic" in kinds, rep.findings
    f = next(f for f in rep.findings if f.kind == "nondeterministic")
    assert f.row.message.startswith("nondeterministic: ") and "repeated runs differ" in f.row.message


@pytest.mark.parametrize("backend", ["emulated-sm90-w4a16", "emulated-fp8-block", "emulated-interleaved-mxfp4",
                                     "emulated-aiter-mxfp4", "torch-naive"])
def test_correct_emulations_survive_a_fixed_budget(tmp_path, backend):
    rep = run(tmp_path, backend, examples=25, repeat=2)
    assert rep.findings == [] and rep.examples >= 25, [(f.kind, f.row.message) for f in rep.findings]


def test_repro_file_replays_through_check(tmp_path):
    rep = run(tmp_path, BASES["gate-up-swapped"], examples=30)
    (f,) = rep.findings
    doc = yaml.safe_load((tmp_path / f.repro).read_text())
    assert doc["cases"][0]["tags"] == ["fuzz-repro"]
    r = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--cases", str(tmp_path / f.repro), "--backend",
                        BASES["gate-up-swapped"], "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--cases", str(tmp_path / f.repro), "--backend",
                        "emulated-sm90-w4a16", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_database_replays_the_last_failure_first(tmp_path):
    db = tmp_path / "db"
    # (hypothesis ignores the database when a run is seeded: these two are random)
    first = fuzz(FuzzOptions(BASES["beta-dropped"], "cpu", 40, None, tmp_path / "a", db=db, repeat=1, budget=SMALL))
    assert first.findings and any(p.is_file() for p in db.rglob("*"))
    again = fuzz(FuzzOptions(BASES["beta-dropped"], "cpu", 40, None, tmp_path / "b", db=db, repeat=1, budget=SMALL))
    assert again.findings
    rows = (tmp_path / "b" / "rows.jsonl").read_text().splitlines()
    assert '"fail"' in rows[0], "the stored failure is not the first example replayed"


def test_differential_mode(tmp_path):
    ok = run(tmp_path / "ok", "diff:emulated-sm90-w4a16|emulated-interleaved-mxfp4", examples=15, repeat=1)
    assert ok.findings == [], [f.row.message for f in ok.findings]
    bad = run(tmp_path / "bad", f"diff:{BASES['beta-dropped']}|emulated-sm90-w4a16", examples=30, repeat=1)
    assert [f.kind for f in bad.findings] == ["accuracy"]
    assert "rel_l2" in bad.findings[0].row.message and bad.findings[0].row.thresholds["name"] == "differential"


def test_run_repeat_flags_a_changing_output():
    from harness.cases import CaseContext, load_cases
    from harness.runner import run_one
    (case,) = load_cases(["cases"], "w4a16-gptoss-small")
    row = run_one(Racy(), CaseContext(case, "cpu"), "cpu", repeat=4)
    assert row.failure == "nondeterministic" and row.repeats["runs"] == 4 and row.repeats["differ"] >= 1
    good = run_one(EmulatedSm90W4A16(), CaseContext(case, "cpu"), "cpu", repeat=3)
    assert good.status.value == "pass" and good.repeats == {"runs": 3, "differ": 0, "max_abs_diff": 0.0, "max_ulp": 0,
                                                            "bound_ulp": 0}
