"""Localization finds where an error lives for faults the catalogue does not name (defined here,
in tests only), one per axis; error budgets catch a precision-only regression."""

from dataclasses import replace

import pytest

from harness.backends.emulated_cutlass import EmulatedSm90W4A16
from harness.cases import CaseContext, load_cases, validate_case
from harness.compare import BUDGET_K
from harness.localize import localize
from harness.runner import run_one
from references import formats as F
from references.activations import swiglu
from tests import localize_faults as lf
from tests.localize_faults import over


def case(**kw):
    base = dict(name="loc", tokens=96, hidden=256, intermediate=128, experts=6, topk=2, weight_format="mxfp4",
                activation="gpt_oss", input_scale=4.0, seed=3)
    return validate_case(base | kw, "test")


class Twin(EmulatedSm90W4A16):
    name = "loc-twin"


ExpertOffByOne, TokenTail, ChannelPeriod, Fc2CeilScales, GateRowsSwapped, KBlockScaled, AbsGate, WeightsIgnored, \
    SharedTwice, Fc2ScaleDoubled = (over(f, Twin) for f in (lf.ExpertOffByOne, lf.TokenTail, lf.ChannelPeriod,
                                    lf.Fc2CeilScales, lf.GateRowsSwapped, lf.KBlockScaled, lf.AbsGate, lf.WeightsIgnored,
                                    lf.SharedTwice, lf.Fc2ScaleDoubled))


def loc(backend, c):
    return localize(backend, CaseContext(c, "cpu"))


def test_experts_and_off_by_one_fit():
    r = loc(ExpertOffByOne(), case())
    assert r["experts"] == [5] and r["fit"] == {"expert_index": {"expert": 5, "computes": 4}}, r
    assert "expert 5 of 6" in r["sentence"] and "equals expert 4's weights" in r["sentence"]


def test_tokens_tail_after_a_tile_boundary():
    r = loc(TokenTail(), case())
    assert r["tokens"] == {"from": 64} and r["channels"] == "all"


def test_output_channels_with_a_period():
    r = loc(ChannelPeriod(), case())
    assert r["channels"] == {"period": 32, "residues": [5]} and r["tokens"] == "all"


@pytest.mark.parametrize("fault,stage", [(Fc2CeilScales, "fc2"), (GateRowsSwapped, "fc1"), (AbsGate, "activation"),
                                         (WeightsIgnored, "routing"), (Fc2ScaleDoubled, "quantization")])
def test_stage(fault, stage):
    r = loc(fault(), case())
    assert r["stage"] == stage, r["evidence"]


def test_shared_expert_stage():
    r = loc(SharedTwice(), case(shared_expert=True, routed_scaling_factor=2.0))
    assert r["stage"] == "shared", r["evidence"]


def test_k_blocks_of_fc1():
    r = loc(KBlockScaled(), case(activation="silu"))
    assert r["stage"] == "fc1" and r["k_blocks"] == [1], r["evidence"]


def test_scale_fault_fit_is_a_power_of_two():
    r = loc(Fc2ScaleDoubled(), case())
    fit = r["fit"].get("expert_scale", r["fit"])  # per expert (fc2 is linear) or from the tiny-input probe
    assert fit["scale"] == pytest.approx(2.0, rel=1e-2) and fit["power_of_two"]


def test_half_of_the_activation():
    from harness.backends.registry import select_backends
    (b,) = select_backends("zoo:beta-dropped@emulated-sm90-w4a16")
    r = loc(b, case())
    assert r["stage"] == "activation" and r["half"] == "up" and r["fit"] == {"activation": {"beta": 0.0}}


class Fp8Intermediate(Twin):
    """A precision-only regression: the SwiGLU output kept in FP8 (1x128) where the contract says bf16."""

    budget_k = BUDGET_K

    def activation_fn(self):
        def act(g, u, params, prec):
            a = swiglu(g, u, params, prec)
            q, s = F.fp8_group_quantize(a.float(), 128)
            return F.fp8_group_dequantize(q, s).to(a.dtype)
        return act


class Correct(Twin):
    budget_k = BUDGET_K


@pytest.mark.parametrize("seed", range(12))
def test_budget_catches_a_precision_regression_the_thresholds_pass(seed):
    c = replace(case(), seed=seed)
    bad = run_one(Fp8Intermediate(), CaseContext(c, "cpu"), "cpu")
    assert bad.status.value == "fail" and bad.failure == "precision", (bad.message, bad.metrics["rel_l2"], bad.budget)
    assert bad.metrics["rel_l2"] < c.limits.max_rel_l2  # the thresholds alone would pass it
    good = run_one(Correct(), CaseContext(c, "cpu"), "cpu")
    assert good.status.value == "pass" and good.budget["ratio"] <= 1.0 + 1e-9


def test_localization_lands_in_the_row(tmp_path):
    from harness.runner import diagnose_row
    (c,) = load_cases(["cases"], "w4a16-gptoss-small")
    ctx = CaseContext(c, "cpu")
    row = run_one(ExpertOffByOne(), ctx, "cpu")
    d = diagnose_row(ExpertOffByOne(), ctx)
    assert row.status.value == "fail" and d["localization"]["experts"] and "Where: error confined" in d["conclusion"]
