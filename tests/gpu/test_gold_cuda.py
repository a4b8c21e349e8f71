"""On the GPU: the fast reference (bf16 x bf16 -> fp32 batched GEMMs, the fused MXFP4 decode)
against the fp64 gold path, at a model-like shape."""

import pytest
import torch

from references.activations import GPT_OSS
from references.formats import WEIGHT_FORMATS, QuantRecipe
from references.gold import FAST_PATH_REL_L2, gold_moe_forward
from references.moe import Experts, MoEConfig, moe_forward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_fused_decode_is_used_on_cuda():
    from references.formats import mx_fused
    from references.formats.mx import mxfp4_bf16_eager
    assert mx_fused.status(torch.device("cuda"), mxfp4_bf16_eager) is None


@pytest.mark.parametrize("skew", [False, True])
def test_fast_reference_matches_gold_on_cuda(skew):
    g = torch.Generator().manual_seed(7)
    t, e, k, h, i = 300, 32, 4, 1024, 512
    f = WEIGHT_FORMATS["mxfp4"]
    ex = Experts(f, f.quantize(torch.randn(e, 2 * i, h, generator=g) / h ** 0.5, QuantRecipe()),
                 f.quantize(torch.randn(e, h, i, generator=g) / i ** 0.5, QuantRecipe()),
                 torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g))
    logits = torch.randn(t, e, generator=g) + (torch.arange(e) == 3) * (20.0 if skew else 0.0)
    ids = torch.topk(logits, k, dim=-1).indices
    w = torch.softmax(torch.randn(t, k, generator=g), -1)
    x = torch.randn(t, h, generator=g).to(torch.bfloat16)
    dev = lambda v: v.cuda()  # noqa: E731
    exd = Experts(f, ex.w1.map(dev), ex.w2.map(dev), dev(ex.b1), dev(ex.b2))
    cfg = MoEConfig(activation=GPT_OSS)
    fast = moe_forward(dev(x), dev(ids), dev(w), exd, cfg)
    gold = gold_moe_forward(dev(x), dev(ids), dev(w), exd, cfg)
    assert bool(torch.isfinite(fast).all())
    rel = float((fast - gold).norm() / gold.norm())
    assert rel <= FAST_PATH_REL_L2, rel
    assert torch.equal(fast, moe_forward(dev(x), dev(ids), dev(w), exd, cfg))  # the reference is deterministic
