"""Kernel probes on the CPU: the interpretation search names the right E8M0 mode and layout, and
probes are gated (skipped with a reason) without a GPU."""

import pytest
import torch

from harness.probes import all_probes, run_probes
from harness.probes.flashinfer import _mode_match, unswizzle_128x4
from references import formats as F


def swizzle_128x4(t: torch.Tensor) -> torch.Tensor:
    """Independent forward swizzle by the per-element offset formula (TRT-LLM 128x4 SF layout)."""
    rows, cols = t.shape
    mt, kt = -(-rows // 128), -(-cols // 4)
    buf = torch.zeros(mt * kt * 512, dtype=t.dtype)
    for m in range(rows):
        for k in range(cols):
            buf[((m // 128 * kt + k // 4) * 32 + m % 32) * 16 + (m % 128) // 32 * 4 + k % 4] = t[m, k]
    return buf


def test_unswizzle_inverts_offset_formula():
    t = torch.randint(0, 255, (130, 6), dtype=torch.uint8)
    assert torch.equal(unswizzle_128x4(swizzle_128x4(t), 130, 6), t)


@pytest.mark.parametrize("mode", [m.value for m in F.ScaleMode])
@pytest.mark.parametrize("swizzled", [False, True])
def test_mode_match_identifies_mode_and_layout(mode, swizzled):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(9, 256, generator=g) * torch.exp2(torch.randint(-8, 8, (9, 8), generator=g).float()).repeat_interleave(32, 1)).bfloat16()
    q, s = F.mx_quantize(x.float(), "e4m3", mode)
    if swizzled:
        s = swizzle_128x4(s)
    exact, fr, facts = _mode_match(q, s, x, "e4m3")
    assert exact is not None and exact.startswith("swizzled" if swizzled else "linear")
    assert exact.endswith(mode) or fr[exact]["scales_equal"] == 1.0  # modes can coincide on a sample


def test_probes_skip_without_gpu():
    rows = run_probes(all_probes(), "cpu", "cpu", lambda r: None)
    assert rows and all(r.status.value == "skipped" for r in rows)
    assert {r.message for r in rows} <= {"needs sm90+, found cpu", "needs cuda, found cpu", "needs sm100+, found cpu",
                                         "needs sm80 or sm86 or sm89 or sm90, found cpu"}


def test_quantizer_probes_are_gated_to_sm100():
    """FlashInfer compiles its MX/NV quantize kernels for sm100+ only: on sm90 those probes are not
    run (no failing row every night); the unsupported-arch probe records what sm90 does instead."""
    by = {p.name: p for p in all_probes()}
    for name in ("flashinfer-mxfp8-quantize", "flashinfer-mxfp4-quantize", "flashinfer-nvfp4-quantize"):
        assert by[name].device_gate("sm90") == "needs sm100+, found sm90"
    assert by["flashinfer-quantize-unsupported-arch"].device_gate("sm100") == "needs sm80 or sm86 or sm89 or sm90, found sm100"
