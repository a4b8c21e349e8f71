"""The fast reference (experts batched into batched GEMMs) against the slow fp64 gold path
(one expert at a time): bit-equal where the GEMMs are exact, within the documented bound otherwise,
over generated routings (skewed, unrouted experts, experts split into slices, many small batches)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from references.activations import GPT_OSS, SwigluParams
from references.formats import WEIGHT_FORMATS, ActQuant, QTensor, QuantRecipe
from references.gold import FAST_PATH_REL_L2, gold_moe_forward
from references.grouped import batches, padded_count
from references.layouts import GateUpOrder
from references.moe import Experts, MoEConfig, moe_forward


def _routing(g, t, e, k, skew):
    logits = torch.randn(t, e, generator=g)
    if skew:
        logits[:, 0] += 20.0   # every token picks expert 0 first
    ids = torch.topk(logits, k, dim=-1).indices
    return ids


def _integer_case(seed, t, e, k, h, i, fmt, skew):
    """Integer activations and weights, power-of-two routing weights: every GEMM is exact in fp32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (t, h), generator=g).to(torch.bfloat16)
    w1 = torch.randint(-2, 3, (e, 2 * i, h), generator=g).float()
    w2 = torch.randint(-2, 3, (e, h, i), generator=g).float()
    ids = _routing(g, t, e, k, skew)
    w = 2.0 ** -torch.randint(0, 3, (t, k), generator=g).float()
    f = WEIGHT_FORMATS[fmt]
    b1 = torch.randint(-4, 5, (e, 2 * i), generator=g).float()
    ex = Experts(f, f.quantize(w1, QuantRecipe()), f.quantize(w2, QuantRecipe()), b1, None)
    return x, ids, w, ex


def _int_act(gate, up, params, precision):
    return gate.clamp(-8, 8) + up.clamp(-8, 8)   # keeps every intermediate an integer


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.integers(1, 40), e=st.integers(1, 9), k=st.integers(1, 4),
       fmt=st.sampled_from(["bf16", "mxfp4"]), skew=st.booleans(), chunk=st.sampled_from([1, 3, 64]),
       budget=st.sampled_from([1, 1 << 30]), order=st.sampled_from(list(GateUpOrder)))
def test_fast_path_is_bit_equal_to_gold_where_gemms_are_exact(seed, t, e, k, fmt, skew, chunk, budget, order):
    k = min(k, e)
    x, ids, w, ex = _integer_case(seed, t, e, k, 64, 32, fmt, skew)
    ex = Experts(ex.fmt, ex.w1, ex.w2, ex.b1, ex.b2, order)
    cfg = MoEConfig(act_fn=_int_act, chunk_rows=chunk, dequant_budget=budget)
    fast, gold = moe_forward(x, ids, w, ex, cfg), gold_moe_forward(x, ids, w, ex, cfg)
    assert torch.equal(fast, gold), (fast - gold).abs().max()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.integers(1, 48), k=st.integers(1, 6), skew=st.booleans(),
       fmt=st.sampled_from(["mxfp4", "fp8_block", "nvfp4", "bf16"]),
       act=st.sampled_from([SwigluParams(), GPT_OSS]))
def test_fast_path_within_the_documented_bound_of_gold(seed, t, k, skew, fmt, act):
    g = torch.Generator().manual_seed(seed)
    e, h, i = 8, 256, 128
    x = (torch.randn(t, h, generator=g) * 3).to(torch.bfloat16)
    f = WEIGHT_FORMATS[fmt]
    w1 = f.quantize(torch.randn(e, 2 * i, h, generator=g) / h ** 0.5, QuantRecipe())
    w2 = f.quantize(torch.randn(e, h, i, generator=g) / i ** 0.5, QuantRecipe())
    ex = Experts(f, w1, w2, torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g))
    ids = _routing(g, t, e, k, skew)
    w = torch.softmax(torch.randn(t, k, generator=g), -1)
    # no rounding of the intermediate: a flipped bf16/FP8 rounding is a whole step, not accumulation error
    # (the rounding path is checked bit for bit by the exact-input test above)
    cfg = MoEConfig(activation=act, chunk_rows=5, intermediate_dtype=None)
    fast, gold = moe_forward(x, ids, w, ex, cfg), gold_moe_forward(x, ids, w, ex, cfg)
    rel = float((fast - gold).norm() / gold.norm())
    assert rel <= FAST_PATH_REL_L2, rel


@pytest.mark.parametrize("aq", [ActQuant.FP8_GROUP, ActQuant.FP8_GROUP_UE8M0, ActQuant.MXFP8, ActQuant.FP8_TOKEN])
def test_activation_quantization_of_a_batch_is_per_row(aq):
    """The batched path quantizes ``[B, P, K]`` activations; every row must quantize as it does alone."""
    from references.formats import fake_quant_activation
    a = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(1)) * 10
    rows = torch.stack([fake_quant_activation(a[b], aq) for b in range(3)])
    assert torch.equal(fake_quant_activation(a, aq), rows)


def test_gold_catches_a_misrouted_row():
    """The bit-equality check has teeth: swapping two experts' weights in the fast path shows."""
    x, ids, w, ex = _integer_case(3, 16, 4, 2, 64, 32, "bf16", False)
    cfg = MoEConfig(act_fn=_int_act)
    swapped = Experts(ex.fmt, QTensor(ex.w1.data[[1, 0, 2, 3]]), ex.w2, ex.b1, ex.b2)
    assert not torch.equal(moe_forward(x, ids, w, swapped, cfg), gold_moe_forward(x, ids, w, ex, cfg))


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(0, 300), min_size=1, max_size=12), max_rows=st.integers(1, 128),
       max_experts=st.integers(1, 5), k=st.integers(1, 4), seed=st.integers(0, 3))
def test_batches_cover_every_row_once_with_bounded_padding(counts, max_rows, max_experts, k, seed):
    from references import grouped
    saved = grouped.SPLIT_ROWS
    try:
        plans = []
        for split in (1 << 62, 0):    # in one piece, and with the first batch planned on its own
            grouped.SPLIT_ROWS = split
            plans.append(_check_batches(counts, max_rows, max_experts, k, seed))
    finally:
        grouped.SPLIT_ROWS = saved
    assert plans[0] == plans[1]       # the same batches, row for row: the same GEMMs, the same bits


def _check_batches(counts, max_rows, max_experts, k, seed):
    flat = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))]
    ids = flat[:flat.numel() // k * k].view(-1, k)   # k slots per token, experts in random order
    seen, padded = [], 0
    for b in batches(ids, len(counts), max_rows, max_experts):
        assert b.rows.shape[0] == b.experts.numel() <= max_experts and b.rows.shape[1] <= padded_count(max_rows)
        pad = b.rows < 0
        assert torch.equal(b.tokens, torch.where(pad, ids.shape[0], b.rows // ids.shape[1]))
        assert torch.equal(b.slots, torch.where(pad, ids.numel(), b.rows)) and b.pad_slot == ids.numel()
        for e, r in zip(b.experts.tolist(), b.rows):
            r = r[r >= 0]
            assert bool((ids.view(-1)[r] == e).all())
            seen += r.tolist()
        padded += b.rows.numel()
    assert sorted(seen) == list(range(ids.numel()))
    assert padded <= 1.125 * ids.numel() + 1e-9
    return [(b.experts.tolist(), b.tokens.tolist(), b.slots.tolist()) for b in batches(ids, len(counts), max_rows, max_experts)]


@pytest.mark.parametrize("index", [False, True])
def test_fused_mxfp4_decode_is_bit_equal_to_the_eager_one(index):
    """The one-pass Triton decode the CUDA reference uses, run by triton's interpreter on the CPU:
    every byte at every scale it is used for, and a gather of experts (both kernel variants)."""
    import importlib.util
    from tests.interpreter import run_interpreted
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed (checked on the GPU by tests/gpu/test_gold_cuda.py)")
    script = (
        "import torch\n"
        "from references.formats import mx_fused as M\n"
        "from references.formats.mx import mxfp4_bf16_eager, mx_dequantize\n"
        f"M.DECODE.index = {index}\n"
        "assert M.status('cpu', mxfp4_bf16_eager) is None, M.status('cpu', mxfp4_bf16_eager)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "p = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g)\n"
        "s = torch.randint(4, 255, (3, 40, 3), dtype=torch.uint8, generator=g)\n"
        "ids = torch.tensor([2, 0, 2])\n"
        "got = M.mxfp4_to_bf16(p, s, ids)\n"
        "want = mx_dequantize(p[ids], s[ids], dtype=torch.bfloat16)\n"
        "assert torch.equal(got.view(torch.int16), want.view(torch.int16))\n"
        "print('ok')\n")
    run_interpreted(script)


def test_fused_decode_self_check_rejects_a_wrong_kernel(monkeypatch):
    """The self-check has teeth: a decode that is off anywhere is refused (and the eager one used)."""
    from references.formats import mx_fused
    from references.formats.mx import mxfp4_bf16_eager

    def off_by_one_scale(packed, scales, ids):
        return mxfp4_bf16_eager(packed[ids], (scales[ids].clamp(max=253) + 1).to(torch.uint8))

    monkeypatch.setattr(mx_fused, "_STATE", {})
    monkeypatch.setattr(mx_fused, "_run", off_by_one_scale)
    why = mx_fused.status("cpu", mxfp4_bf16_eager)
    assert why is not None and "differ from the eager decode" in why
