"""On the GPU: the fast reference (bf16 x bf16 -> fp32 batched GEMMs, the one-pass MXFP4 decode)
against the fp64 gold path: bit for bit on exact inputs, within the documented bound on random ones."""

import pytest
import torch

from references.activations import GPT_OSS, SwigluParams
from references.formats import WEIGHT_FORMATS, QuantRecipe
from references.gold import FAST_PATH_REL_L2, gold_moe_forward
from references.moe import Experts, MoEConfig, moe_forward
from tests.test_gold import _int_act, _integer_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cuda(ex: Experts) -> Experts:
    dev = lambda v: None if v is None else v.cuda()  # noqa: E731
    return Experts(ex.fmt, ex.w1.map(dev), ex.w2.map(dev), dev(ex.b1), dev(ex.b2), ex.order)


def test_fused_decode_is_used_on_cuda():
    from references.formats import mx_fused
    from references.formats.mx import mxfp4_bf16_eager
    assert mx_fused.status(torch.device("cuda"), mxfp4_bf16_eager) is None


@pytest.mark.parametrize("fmt", ["bf16", "mxfp4"])
@pytest.mark.parametrize("skew", [False, True])
def test_fast_reference_is_bit_equal_to_gold_on_exact_inputs(fmt, skew):
    x, ids, w, ex = _integer_case(11, 300, 24, 4, 256, 128, fmt, skew)
    cfg = MoEConfig(act_fn=_int_act)
    fast = moe_forward(x.cuda(), ids.cuda(), w.cuda(), _cuda(ex), cfg)
    gold = gold_moe_forward(x.cuda(), ids.cuda(), w.cuda(), _cuda(ex), cfg)
    assert torch.equal(fast, gold), (fast - gold).abs().max()


@pytest.mark.parametrize("skew", [False, True])
def test_fast_reference_within_the_bound_of_gold(skew):
    g = torch.Generator().manual_seed(7)
    t, e, k, h, i = 300, 32, 4, 1024, 512
    f = WEIGHT_FORMATS["mxfp4"]
    ex = Experts(f, f.quantize(torch.randn(e, 2 * i, h, generator=g) / h ** 0.5, QuantRecipe()),
                 f.quantize(torch.randn(e, h, i, generator=g) / i ** 0.5, QuantRecipe()),
                 torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g))
    logits = torch.randn(t, e, generator=g) + (torch.arange(e) == 3) * (20.0 if skew else 0.0)
    ids = torch.topk(logits, k, dim=-1).indices.cuda()
    w = torch.softmax(torch.randn(t, k, generator=g), -1).cuda()
    x = torch.randn(t, h, generator=g).to(torch.bfloat16).cuda()
    cfg = MoEConfig(activation=GPT_OSS, intermediate_dtype=None)
    fast, gold = moe_forward(x, ids, w, _cuda(ex), cfg), gold_moe_forward(x, ids, w, _cuda(ex), cfg)
    rel = float((fast - gold).norm() / gold.norm())
    assert rel <= FAST_PATH_REL_L2, rel
    assert torch.equal(fast, moe_forward(x, ids, w, _cuda(ex), cfg))  # the reference is deterministic


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("swap", [False, True])
def test_fused_mxfp4_gemm_passes_its_check_on_cuda(mode, swap, monkeypatch):
    from dataclasses import replace
    from references import gemm_fused
    from references.formats.mx import mx_dequantize
    monkeypatch.setattr(gemm_fused, "TILE", replace(gemm_fused.TILE, mode=mode, swap=swap))
    monkeypatch.setattr(gemm_fused, "_STATE", {})
    assert gemm_fused.status(torch.device("cuda"), mx_dequantize) is None


@pytest.mark.parametrize("max_rows", [None, 1 << 30])
@pytest.mark.parametrize("t,h,i,e,k", [(512, 2880, 2880, 8, 4), (7, 4096, 2048, 16, 6), (1, 1472, 3072, 3, 1)])
def test_fused_mxfp4_gemm_against_the_dequantizing_path(t, h, i, e, k, max_rows, monkeypatch):
    """Model-sized K with tails (2880 % 128 = 64): the packed path (as the reference takes it, and for
    every batch) within the fp32 accumulation bound of cuBLAS on the dequantized weights."""
    from references import gemm_fused
    from references.gemm import plan_for
    if max_rows:
        monkeypatch.setattr(gemm_fused, "PACKED_MAX_ROWS", max_rows)
    g = torch.Generator().manual_seed(t + h)
    f = WEIGHT_FORMATS["mxfp4"]
    ex = _cuda(Experts(f, f.quantize(torch.randn(e, 2 * i, h, generator=g) / h ** 0.5, QuantRecipe()),
                       f.quantize(torch.randn(e, h, i, generator=g) / i ** 0.5, QuantRecipe()),
                       torch.randn(e, 2 * i, generator=g), None))
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).cuda()
    w = torch.softmax(torch.randn(t, k, generator=g), -1).cuda()
    x = torch.randn(t, h, generator=g).to(torch.bfloat16).cuda()
    assert plan_for(x, f, None, True, (ex.w1, ex.w2)).packed_mxfp4
    cfg = MoEConfig(activation=GPT_OSS, intermediate_dtype=None)
    packed = moe_forward(x, ids, w, ex, cfg)
    dequant = moe_forward(x, ids, w, ex, MoEConfig(activation=GPT_OSS, intermediate_dtype=None, packed_mxfp4=False))
    rel = float((packed - dequant).norm() / dequant.norm())
    assert rel <= FAST_PATH_REL_L2, rel
    assert torch.equal(packed, moe_forward(x, ids, w, ex, cfg))


def _mx_case(code_at=None):
    g = torch.Generator().manual_seed(5)
    f = WEIGHT_FORMATS["mxfp4"]
    w1 = f.quantize(torch.randn(4, 256, 128, generator=g) / 11, QuantRecipe())
    w2 = f.quantize(torch.randn(4, 128, 128, generator=g) / 11, QuantRecipe())
    if code_at is not None:
        w1.scale[2, 7, 1] = code_at
    ids = torch.randint(0, 4, (40, 2), generator=g)
    ids[:, 1] = (ids[:, 0] + 1) % 4
    x = torch.randn(40, 128, generator=g).to(torch.bfloat16)
    return x.cuda(), ids.cuda(), torch.full((40, 2), 0.5).cuda(), _cuda(Experts(f, w1, w2))


def test_a_nan_scale_is_named_though_checked_at_the_end():
    x, ids, w, ex = _mx_case(0xFF)
    with pytest.raises(ValueError, match=r"w1\[expert 2\]"):
        moe_forward(x, ids, w, ex, MoEConfig())


def test_a_subnormal_making_scale_is_redone_by_the_eager_decode():
    x, ids, w, ex = _mx_case(2)
    got = moe_forward(x, ids, w, ex, MoEConfig(intermediate_dtype=None))
    want = gold_moe_forward(x, ids, w, ex, MoEConfig(intermediate_dtype=None))
    assert float((got - want).norm() / want.norm()) <= FAST_PATH_REL_L2


@pytest.mark.parametrize("order", ["gate_up", "up_gate", "interleaved"])
@pytest.mark.parametrize("params", [GPT_OSS, SwigluParams(), SwigluParams(1.0, 0.0, 10.0)])
@pytest.mark.parametrize("bias", [None, torch.bfloat16, torch.float32])
def test_fused_swiglu_passes_its_check_on_cuda(order, params, bias, monkeypatch):
    """The one-pass SwiGLU is bit-equal to the eager code on ~2^20 probe values (edges included)."""
    from references import act_fused
    from references.layouts import GateUpOrder
    from references.moe import between_gemms
    monkeypatch.setattr(act_fused, "_STATE", {})
    cfg, o = MoEConfig(activation=params), GateUpOrder(order)
    eager = lambda h: between_gemms(h, o, cfg)  # noqa: E731
    assert act_fused.status(torch.device("cuda"), o, params.alpha, params.beta, params.limit, eager, bias) is None


@pytest.mark.parametrize("order", ["gate_up", "interleaved"])
def test_fused_swiglu_leaves_moe_forward_bit_equal(order):
    """GPT-OSS SwiGLU, bf16 intermediate, biases, MXFP4: the forward with the one-pass SwiGLU is the
    forward with the eager one, bit for bit (the eager path meets gold in the tests above; with a bf16
    intermediate no per-element bound against gold holds, see references/gold.py)."""
    from dataclasses import replace
    from references.layouts import GateUpOrder
    g = torch.Generator().manual_seed(3)
    t, e, k, h, i = 257, 16, 4, 1024, 1504
    f = WEIGHT_FORMATS["mxfp4"]
    ex = _cuda(Experts(f, f.quantize(torch.randn(e, 2 * i, h, generator=g) / h ** 0.5, QuantRecipe()),
                       f.quantize(torch.randn(e, h, i, generator=g) / i ** 0.5, QuantRecipe()),
                       torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g), GateUpOrder(order)))
    ids = torch.topk(torch.randn(t, e, generator=g), k, dim=-1).indices.cuda()
    w = torch.softmax(torch.randn(t, k, generator=g), -1).cuda()
    x = (4 * torch.randn(t, h, generator=g)).to(torch.bfloat16).cuda()
    cfg = MoEConfig(activation=GPT_OSS)
    fused = moe_forward(x, ids, w, ex, cfg)
    eager = moe_forward(x, ids, w, ex, replace(cfg, fused_activation=False))
    assert torch.equal(fused, eager), (fused - eager).abs().max()
    from references import act_fused
    used = {k: v for k, v in act_fused._STATE.items() if k[1] == GateUpOrder(order) and k[2:5] == (1.702, 1.0, 7.0)}
    assert used and all(v is None for v in used.values()), used     # the one-pass SwiGLU was taken


@pytest.mark.parametrize("fmt,packed", [("mxfp4", False), ("mxfp4", True), ("fp8_block", False)])
def test_decode_beside_the_gemms_is_bit_equal_to_serial(fmt, packed):
    """Batch b+1 decoded on a side stream while batch b multiplies: the same bits as one stream,
    on every one of five runs (a missing wait or a buffer handed out early would show as a
    difference). A small budget makes many batches, so most decodes overlap a GEMM."""
    g = torch.Generator().manual_seed(11)
    t, e, k, h, i = 2048, 32, 4, 1024, 768
    f = WEIGHT_FORMATS[fmt]
    ex = _cuda(Experts(f, f.quantize(torch.randn(e, 2 * i, h, generator=g) / h ** 0.5, QuantRecipe()),
                       f.quantize(torch.randn(e, h, i, generator=g) / i ** 0.5, QuantRecipe()),
                       torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g)))
    ids = torch.topk(torch.randn(t, e, generator=g) + torch.linspace(0, 3, e), k, dim=-1).indices.cuda()
    w = torch.softmax(torch.randn(t, k, generator=g), -1).cuda()
    x = torch.randn(t, h, generator=g).to(torch.bfloat16).cuda()
    budget = 3 * 2 * 3 * h * i   # three experts' bf16 weights per batch
    cfg = MoEConfig(activation=GPT_OSS, packed_mxfp4=packed, dequant_budget=budget, overlap_decode=True)
    serial = moe_forward(x, ids, w, ex, MoEConfig(activation=GPT_OSS, packed_mxfp4=packed, dequant_budget=budget,
                                                  overlap_decode=False))
    for _ in range(5):
        assert torch.equal(moe_forward(x, ids, w, ex, cfg), serial)


@pytest.mark.parametrize("k", [1, 4, 6, 8])
def test_fused_topk_sum_passes_its_check_on_cuda(k, monkeypatch):
    from references import combine
    monkeypatch.setattr(combine, "_STATE", {})
    assert combine.status(torch.device("cuda"), k) is None


def test_fused_topk_sum_leaves_moe_forward_bit_equal():
    from dataclasses import replace
    g = torch.Generator().manual_seed(5)
    t, e, k, h, i = 700, 16, 4, 512, 256
    f = WEIGHT_FORMATS["mxfp4"]
    ex = _cuda(Experts(f, f.quantize(torch.randn(e, 2 * i, h, generator=g) / h ** 0.5, QuantRecipe()),
                       f.quantize(torch.randn(e, h, i, generator=g) / i ** 0.5, QuantRecipe())))
    ids = torch.topk(torch.randn(t, e, generator=g), k, dim=-1).indices.cuda()
    w = torch.softmax(torch.randn(t, k, generator=g), -1).cuda()
    x = torch.randn(t, h, generator=g).to(torch.bfloat16).cuda()
    cfg = MoEConfig(activation=GPT_OSS)
    assert torch.equal(moe_forward(x, ids, w, ex, cfg), moe_forward(x, ids, w, ex, replace(cfg, fused_combine=False)))
