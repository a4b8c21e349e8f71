"""L1: the SM90 W4A16 scale layouts in ``references.sm90_mixed`` equal FlashInfer's own helper, on the CPU.

``interleave_moe_scales_for_sm90_mixed_gemm`` is plain torch in both supported versions (0.6.12
``fused_moe/core.py:664``, 0.7.2.post1 ``fused_moe/prepare.py:333``), so the installed FlashInfer
checks our layout for that version here, byte for byte, with no GPU. The weight interleave is a
CUDA op in both versions (``ValueError("weight must live on CUDA")``): it is checked on the GPU by
``tests/gpu/test_sm90_layout_proof.py`` (L2). Skips when flashinfer-python is not installed; logs of
runs against each pinned version live in ``reports/l1/``.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

fm = pytest.importorskip("flashinfer.fused_moe", reason="flashinfer-python not installed (L1 checks need it)")

from harness.backends.flashinfer import FI, sm90_layout  # noqa: E402
from references.sm90_mixed import LAYOUTS  # noqa: E402


@pytest.fixture(scope="module")
def layout():
    why = FI.gate()
    if why:
        pytest.skip(why)
    return LAYOUTS[sm90_layout(FI.installed())]


def _scales(shape, seed):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=80, deadline=None)
@given(e=st.integers(1, 4), row_blocks=st.integers(1, 12), k_blocks=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_scale_layout_equals_flashinfer(layout, e, row_blocks, k_blocks, seed):
    rows, kg = row_blocks * layout.row_multiple, k_blocks * 4
    s = _scales((e, rows, kg), seed)
    theirs = fm.interleave_moe_scales_for_sm90_mixed_gemm(s, group_size=32)
    ours = layout.interleave_scales(s)
    assert theirs.dtype == ours.dtype == torch.uint8
    assert tuple(ours.shape) == tuple(theirs.shape), (tuple(ours.shape), tuple(theirs.shape))
    assert torch.equal(ours, theirs), f"{layout.name} [E={e}, rows={rows}, K/32={kg}]: {(ours != theirs).sum()} bytes differ"
    # what the kernel's loader reads back from FlashInfer's buffer is the original scale grid
    assert torch.equal(layout.read_scales(theirs, rows, kg), s)


def test_scale_layout_detects_a_transposed_input(layout):
    """Not vacuous: a wrongly oriented scale grid gives a different buffer than FlashInfer's."""
    rows, kg = 2 * layout.row_multiple, 8
    s = _scales((2, rows, kg), 0)
    wrong = s.reshape(2, kg, rows).transpose(1, 2).contiguous()
    assert not torch.equal(layout.interleave_scales(wrong), fm.interleave_moe_scales_for_sm90_mixed_gemm(s, group_size=32))


def test_weight_helper_is_cuda_only():
    """The weight interleave cannot be checked here (it is an L2 check); pin that fact to the installed version."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the weight helper is checked in tests/gpu")
    with pytest.raises(ValueError, match="CUDA"):
        fm.interleave_moe_weights_for_sm90_mixed_gemm(torch.zeros(1, 16, 32, dtype=torch.uint8), "fp4")
