"""On the GPU: every format quantizer of the references gives the CPU's bits (scales and codes), on
inputs built at the rounding edges: each group's amax one positive bf16 value (all 32,512 normal ones),
amax = 6 * 2^k and 448 * 2^k (where RCEIL and the FP8 scale sit on a power of two), e4m3 midpoints.
The negative control shows the CUDA behaviour ``references/formats/arith.py`` exists for."""

import pytest
import torch

from references.formats import DEEPGEMM_TEST, SGLANG, TRTLLM, VLLM, Fp8Scale, fp8_group_quantize, mx_quantize, nvfp4_quantize
from references.formats.e8m0 import Element, ScaleMode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _groups(group: int) -> torch.Tensor:
    """One group per positive normal bf16 amax (and per amax = c * 2^k for c in 6, 448, 336), values
    below it spread over the group, in bf16 [G, group]."""
    a = torch.arange(1, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    a = a[(a >= 2.0 ** -100) & (a <= 2.0 ** 100)]
    edges = torch.cat([c * torch.exp2(torch.arange(-60, 60).float()) for c in (6.0, 448.0, 336.0)])
    a = torch.cat([a, edges])
    u = torch.rand(a.numel(), group, generator=torch.Generator().manual_seed(3)) * 2 - 1
    u[:, 0] = 1.0
    u[:, 1] = 0.75   # amax * 6/8: lands on an e4m3 midpoint when the scale is exact
    return (a[:, None] * u).to(torch.bfloat16)


def _same(cpu, gpu) -> bool:
    return all(torch.equal(c.view(torch.uint8) if c.element_size() == 1 else c, g.cpu().view(torch.uint8)
                           if g.element_size() == 1 else g.cpu()) for c, g in zip(cpu, gpu))


@pytest.mark.parametrize("rule", [DEEPGEMM_TEST, VLLM, SGLANG, TRTLLM], ids=lambda r: r.name)
@pytest.mark.parametrize("fmt", list(Fp8Scale), ids=lambda f: f.value)
def test_fp8_group_quantize_is_the_same_on_cuda(rule, fmt):
    x = _groups(128)
    assert _same(fp8_group_quantize(x, 128, fmt, rule), fp8_group_quantize(x.cuda(), 128, fmt, rule))


@pytest.mark.parametrize("elem", [Element.E2M1, Element.E4M3], ids=lambda e: e.value)
@pytest.mark.parametrize("mode", list(ScaleMode), ids=lambda m: m.value)
def test_mx_quantize_is_the_same_on_cuda(elem, mode):
    x = _groups(32)
    assert _same(mx_quantize(x, elem, mode), mx_quantize(x.cuda(), elem, mode))


def test_nvfp4_quantize_is_the_same_on_cuda():
    x = _groups(16)[:4096]
    assert _same(nvfp4_quantize(x), nvfp4_quantize(x.cuda()))


def test_torch_divides_by_a_python_number_differently_on_cuda():
    """The behaviour the references avoid: on CUDA ``t / 448.0`` is ``t * RN(1 / 448)``."""
    a = _groups(2)[:, 0].float().abs()
    on_gpu = (a.cuda() / 448.0).cpu()
    assert torch.equal(on_gpu, a * torch.tensor(1 / 448.0, dtype=torch.float32))
    assert not torch.equal(on_gpu, a / 448.0)
