"""On an sm90 GPU: faults outside the catalogue wrapped around the real FlashInfer SM90 W4A16 kernel
(its prepare, its inputs or its output; tests/localize_faults.py) are localized as they are around
the emulated twin on the CPU (tests/test_localize.py). With ``MOEACC_EVIDENCE_DIR`` set, each
localization is also written there as JSON (the committed H100 evidence)."""

import json
import os
from pathlib import Path

import pytest
import torch

from harness.cases import CaseContext, validate_case
from tests import localize_faults as lf

pytestmark = [pytest.mark.gpu, pytest.mark.sm90]

CASE = dict(name="loc", tokens=96, hidden=256, intermediate=128, experts=6, topk=2, weight_format="mxfp4",
            activation="gpt_oss", input_scale=4.0, seed=3)

EXPECT = {  # what localization must conclude, as on the CPU
    lf.ExpertOffByOne: lambda r: r["experts"] == [5] and r["fit"] == {"expert_index": {"expert": 5, "computes": 4}},
    lf.TokenTail: lambda r: r["tokens"] == {"from": 64} and r["channels"] == "all",
    lf.ChannelPeriod: lambda r: r["channels"] == {"period": 32, "residues": [5]} and r["tokens"] == "all",
    lf.Fc2CeilScales: lambda r: r["stage"] == "fc2",
    lf.GateRowsSwapped: lambda r: r["stage"] == "fc1",
    lf.KBlockScaled: lambda r: r["stage"] == "fc1" and r["k_blocks"] == [1],
    lf.WeightsIgnored: lambda r: r["stage"] == "routing",
    lf.SharedTwice: lambda r: r["stage"] == "shared",
    lf.Fc2ScaleDoubled: lambda r: r["stage"] == "quantization",
}
CASE_FOR = {lf.KBlockScaled: dict(activation="silu"), lf.SharedTwice: dict(shared_expert=True, routed_scaling_factor=2.0)}


def _real():
    if not torch.cuda.is_available():
        pytest.skip("needs an sm90 GPU, found cpu (torch sees no CUDA device)")
    from harness.backends.flashinfer.sm90_w4a16 import FlashInferSm90W4A16
    from harness.device import device_info
    why = FlashInferSm90W4A16().device_gate(device_info("cuda")["kind"])
    if why:
        pytest.skip(why)
    return FlashInferSm90W4A16


@pytest.mark.parametrize("fault", list(EXPECT), ids=lambda f: f.__name__)
def test_fault_around_the_real_kernel_is_localized(fault):
    from harness.localize import localize
    backend = lf.over(fault, _real())()
    case = validate_case(CASE | CASE_FOR.get(fault, {}), "test")
    r = localize(backend, CaseContext(case, "cuda"))
    out = os.environ.get("MOEACC_EVIDENCE_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"localize-{fault.__name__}.json").write_text(json.dumps({"backend": backend.name, **r}, indent=1, default=str))
    assert EXPECT[fault](r), r["evidence"]
