"""The FlashInfer trtllm-gen MXFP4 x bf16 adapter: its gates on any machine, and (L1) its preprocessing
against FlashInfer's own helpers on the CPU where flashinfer-python is installed.

L1: ``prepare`` runs the real ``reorder_rows_for_gated_act_gemm`` and ``shuffle_matrix_a`` (plain torch
in 0.6.12 and 0.7.2.post1). ``shuffle_matrix_sf_a`` is a CUDA op on the CPU (``ValueError: device must
be a cuda device``), so it is replaced by its own body (``get_shuffle_matrix_sf_a_row_indices``, then the
128x4 interleave) with the interleave taken from the library's torch code where the version ships one
(0.7.2.post1: ``experimental/b12x``, the same reshape/permute as ``_block_scale_interleave_128x4_torch``,
"byte-preserving torch equivalent of FlashInfer/TRT-LLM block_scale_interleave", which needs cuda-python to
import); 0.6.12 ships none, and there the scales are checked up to the row permutation (the interleave is
then the identity on both sides). The same interleave runs on both sides, so that the CUDA op matches it
is the library's claim, settled on hardware. The expected buffers are FlashInfer's
test recipe (``prepare_static_weights_for_kernel``, tests/moe/test_trtllm_gen_fused_moe.py:402-533
@v0.6.12; biases tests/moe/trtllm_gen_fused_moe_utils.py:669-746 @fb28d724) applied by hand with the
library's permute-index helpers. Logs of runs against each pinned version live in ``reports/l1/``.
"""

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F

import harness.backends.flashinfer.trtllm_gen as T
import harness.backends.libapi as L
from harness.backends.flashinfer import FI
from harness.cases import make_inputs, validate_case
from references.layouts import split_gate_up

BACKEND = T.FlashInferTrtllmGenMxfp4()
TILE = 128
INTERLEAVES = (("flashinfer.experimental.b12x.moe._shared.kernels.reference_flashinfer", "_block_scale_interleave_128x4_torch"),
               ("flashinfer.experimental.b12x.testing.reference.helpers", "swizzle_block_scale_reference"))


def case(**kw):
    raw = {"name": "t", "tokens": 5, "hidden": 256, "intermediate": 128, "experts": 4, "topk": 2} | kw
    return validate_case(raw, "test")


# ---- gates (no FlashInfer needed) -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cpu", "sm90", "sm120", "gfx942"])
def test_device_gate_needs_sm100(kind):
    assert BACKEND.device_gate(kind) == f"needs sm100, found {kind}"


def test_library_gate_messages(monkeypatch):
    monkeypatch.delitem(sys.modules, "flashinfer", raising=False)
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    assert BACKEND.device_gate("sm100") == "flashinfer-python not installed"
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: object())
    for have in ("0.6.11", "0.7.3", "0.8.0"):
        monkeypatch.setattr(L.importlib.metadata, "version", lambda dist, have=have: have)
        assert BACKEND.device_gate("sm100") == (f"written for flashinfer-python>=0.6.12,<0.7.3, found {have} "
                                                "(--force to run anyway)")
    for have in ("0.6.12", "0.7.2.post1"):
        monkeypatch.setattr(L.importlib.metadata, "version", lambda dist, have=have: have)
        assert BACKEND.device_gate("sm100") is None
    monkeypatch.setattr(L.importlib.metadata, "version", lambda dist: "0.8.0")
    monkeypatch.setenv(L.FORCE_ENV, "1")
    assert BACKEND.device_gate("sm100") is None


@pytest.mark.parametrize("kw", [{}, {"bias": True, "activation": "gpt_oss", "shared_expert": True},
                                {"hidden": 160, "intermediate": 96, "checkpoint_layout": "interleaved"},
                                {"routing": "grouped", "experts": 8, "n_group": 2, "topk_group": 1},
                                {"experts": 2048, "topk": 32, "scale_mode": "rceil"}])
def test_case_gate_accepts(kw):
    assert BACKEND.case_gate(case(**kw)) is None


@pytest.mark.parametrize("kw,why", [
    ({"dtype": "float16"}, "hidden states must be bfloat16 (case dtype float16)"),
    ({"weight_format": "nvfp4"}, "weight format nvfp4 not supported (supports mxfp4)"),
    ({"weight_format": "mxfp8"}, "weight format mxfp8 not supported (supports mxfp4)"),
    ({"act_quant": "mxfp8"}, "activation quantization mxfp8 not supported"),
    ({"experts": 4096}, "experts=4096, topk=2: pre-computed routing has compiled tiers up to 2048 experts and top-32"),
    ({"experts": 64, "topk": 33}, "experts=64, topk=33: pre-computed routing has compiled tiers up to 2048"),
])
def test_case_gate_refuses(kw, why):
    assert why in BACKEND.case_gate(case(**kw))


@pytest.mark.parametrize("version,dtype", [("0.6.12", torch.bfloat16), ("0.6.18", torch.bfloat16),
                                           ("0.7.1", torch.bfloat16), ("0.7.2", torch.float32),
                                           ("0.7.2.post1", torch.float32), ("unknown", torch.bfloat16),
                                           (None, torch.bfloat16), ("not-a-version", torch.bfloat16)])
def test_routing_weights_dtype_per_version(version, dtype):
    assert T.routing_weights_dtype(version) is dtype


@pytest.mark.parametrize("version,dtype", [("0.6.12", torch.bfloat16), ("0.7.2.post1", torch.float32)])
def test_run_passes_everything_by_keyword(monkeypatch, version, dtype):
    """Plumbing only (no kernel numerics): what ``run`` hands the entry point, and what it keeps of the output."""
    seen = {}

    def routed_moe(**kw):
        seen.update(kw)
        return [torch.ones(kw["hidden_states"].shape, dtype=torch.bfloat16)]

    enum = type("ActivationType", (), {"Swiglu": type("M", (), {"value": 3})})
    objs = {"trtllm_fp4_block_scale_routed_moe": routed_moe, "ActivationType": enum}
    monkeypatch.setattr(T, "import_flashinfer", lambda: None)
    monkeypatch.setattr(type(FI), "attr", lambda self, module, name=None: objs[name])
    monkeypatch.setattr(type(FI), "installed", lambda self: version)
    data = make_inputs(case(hidden=160))
    e, t, u = 4, torch.empty(4, 256, 128, dtype=torch.uint8), torch.empty(0)
    p = T.TrtllmGenBuffers(torch.zeros(5, 256, dtype=torch.bfloat16), t, u, None, t, u, None, None, None, None,
                           torch.ones(e), 128)
    out = BACKEND.run(p, data)
    ids, weights = seen["topk_ids"]
    assert ids.dtype == torch.int32 and weights.dtype == dtype and ids.is_contiguous() and weights.is_contiguous()
    assert torch.equal(weights.float(), data.topk_weights.to(dtype).float())
    assert seen["intermediate_size"] == 128 and seen["num_experts"] == seen["local_num_experts"] == 4
    assert seen["local_expert_offset"] == 0 and seen["activation_type"] == 3 and seen["do_finalize"] is True
    assert all(seen[k] is p.ones for k in ("output1_scale_scalar", "output1_scale_gate_scalar", "output2_scale_scalar"))
    assert out.shape == (5, 160) and out.dtype == torch.bfloat16 and bool((out == 1).all())


# ---- L1: FlashInfer's own helpers on the CPU ----------------------------------------------------------
@pytest.fixture(scope="module")
def fi():
    mod = pytest.importorskip("flashinfer", reason="flashinfer-python not installed (the L1 checks need it)")
    why = FI.gate()
    if why:
        pytest.skip(why)
    return mod


def library_interleave():
    """(name, fn) of the library's own torch 128x4 interleave, or None where the version ships none."""
    for module, name in INTERLEAVES:
        try:
            return name, getattr(importlib.import_module(module), name)
        except Exception:  # noqa: BLE001 - its package may need CUDA libraries (cuda-python, cutlass) to import
            continue
    return None


def sf_stand_in(interleave):
    """``shuffle_matrix_sf_a``'s body (quantization/fp4_quantization.py:1569-1574 (0.7.2.post1), :1127-1132
    (0.6.12)) with the CUDA-only ``block_scale_interleave`` replaced by ``interleave`` (flat, as the original)."""
    rows_of = importlib.import_module("flashinfer.utils").get_shuffle_matrix_sf_a_row_indices

    def shuffle_matrix_sf_a(input_tensor, epilogue_tile_m, num_elts_per_sf=16):
        return interleave(input_tensor[rows_of(input_tensor, epilogue_tile_m)]).reshape(-1)
    return shuffle_matrix_sf_a


@pytest.fixture(scope="module")
def interleave(fi):
    found = library_interleave()
    return (found[0], lambda s: found[1](s).reshape(-1)) if found else ("none (row permutation only)", lambda s: s)


def up_gate_padded(data, ip, hp):
    """The kernel's input by hand: [up; gate] from the checkpoint's own order, each half padded."""
    ex = data.experts

    def fc1(t, kpad, value, dim=1):
        g, u = split_gate_up(t, ex.order, dim=dim)
        pad = (0, ip - g.shape[dim]) if t.dim() == 2 else (0, kpad, 0, ip - g.shape[dim])
        return torch.cat([F.pad(u, pad, value=value), F.pad(g, pad, value=value)], dim=dim)

    def fc2(t, kpad, value):
        return F.pad(t, (0, kpad, 0, hp - t.shape[1]), value=value)
    (w1, s1), (w2, s2) = (ex.w1.data, ex.w1.scale), (ex.w2.data, ex.w2.scale)
    k1, k2 = hp // 2 - w1.shape[2], ip // 2 - w2.shape[2]
    return dict(w1=fc1(w1, k1, 0), s1=fc1(s1, hp // 32 - s1.shape[2], 127),
                w2=fc2(w2, k2, 0), s2=fc2(s2, ip // 32 - s2.shape[2], 127),
                b1=None if ex.b1 is None else fc1(ex.b1.float(), 0, 0.0),
                b2=None if ex.b2 is None else F.pad(ex.b2.float(), (0, hp - ex.b2.shape[1])))


def flashinfer_test_recipe(t, interleave):
    """prepare_static_weights_for_kernel's permutation steps, one expert at a time, in FlashInfer's order."""
    core = importlib.import_module("flashinfer.fused_moe.core")
    w3_w1, w2p, cache = core._maybe_get_cached_w3_w1_permute_indices, core.get_w2_permute_indices_with_cache, {}
    out = {k: [] for k in ("w1", "s1", "b1", "w2", "s2", "b2")}
    for i in range(t["w1"].shape[0]):
        out["w1"].append(t["w1"][i][w3_w1(cache, t["w1"][i], TILE, is_gated_act_gemm=True)].contiguous())
        p_sf = w3_w1(cache, t["s1"][i], TILE, num_elts_per_sf=16, is_gated_act_gemm=True)
        out["s1"].append(interleave(t["s1"][i][p_sf].contiguous()))
        if t["b1"] is not None:
            b = t["b1"][i].reshape(-1, 1)
            out["b1"].append(b[w3_w1(cache, b, TILE, is_gated_act_gemm=True)].contiguous())
        out["w2"].append(t["w2"][i][w2p(cache, t["w2"][i], TILE)].contiguous())
        out["s2"].append(interleave(t["s2"][i][w2p(cache, t["s2"][i], TILE, num_elts_per_sf=16)].contiguous()))
        if t["b2"] is not None:
            b = t["b2"][i].reshape(-1, 1)
            out["b2"].append(b[w2p(cache, b, TILE)].contiguous())
    e = t["w1"].shape[0]
    done = {k: torch.stack(v) for k, v in out.items() if v}
    for k in ("s1", "s2"):
        done[k] = done[k].view(torch.float8_e4m3fn).reshape(e, t[k].shape[1], t[k].shape[2])
    for k in ("b1", "b2"):
        done[k] = done[k].reshape(e, -1) if k in done else None
    return done


SHAPES = [dict(hidden=256, intermediate=128, experts=4, topk=2, bias=True, activation="gpt_oss"),
          dict(hidden=160, intermediate=96, experts=3, topk=2, bias=True, checkpoint_layout="interleaved", activation="clamp7"),
          dict(hidden=128, intermediate=224, experts=2, topk=1, checkpoint_layout="up_gate"),
          dict(hidden=384, intermediate=256, experts=5, topk=3, bias=True, seed=3)]


@pytest.fixture(params=SHAPES, ids=lambda kw: f"H{kw['hidden']}-I{kw['intermediate']}-{kw.get('checkpoint_layout', 'gate_up')}")
def prepared(request, fi, interleave, monkeypatch):
    monkeypatch.setattr(fi, "shuffle_matrix_sf_a", sf_stand_in(interleave[1]))
    data = make_inputs(case(**request.param))
    p = BACKEND.prepare(data, "cpu")
    hp, ip = -(-data.case.hidden // 128) * 128, -(-data.case.intermediate // 128) * 128
    return data, p, up_gate_padded(data, ip, hp), hp, ip


def test_prepare_equals_flashinfer_test_recipe(prepared, interleave):
    data, p, src, hp, ip = prepared
    want = flashinfer_test_recipe(src, interleave[1])
    for k in ("w1", "s1", "w2", "s2"):
        got = getattr(p, k)
        assert got.dtype == want[k].dtype and got.shape == want[k].shape, (k, got.dtype, got.shape, want[k].shape)
        assert torch.equal(got.view(torch.uint8), want[k].view(torch.uint8)), f"{k} differs ({interleave[0]})"
    for k in ("b1", "b2"):
        got = getattr(p, k)
        assert (got is None) == (want[k] is None)
        assert got is None or (got.dtype == torch.float32 and torch.equal(got, want[k])), k
    e = data.case.experts
    assert p.w1.shape == (e, 2 * ip, hp // 2) and p.s1.dtype == torch.float8_e4m3fn and p.ip == ip
    assert p.x.dtype == torch.bfloat16 and p.x.shape == (data.case.tokens, hp)
    assert torch.equal(p.x[:, : data.case.hidden], data.x) and not p.x[:, data.case.hidden:].any()
    assert p.ones.dtype == torch.float32 and torch.equal(p.ones, torch.ones(e))
    sw = data.case.swiglu
    if sw.is_plain:
        assert p.alpha is None and p.beta is None and p.limit is None
    else:
        assert torch.equal(p.alpha, torch.full((e,), sw.alpha)) and torch.equal(p.beta, torch.full((e,), sw.beta))
        assert torch.equal(p.limit, torch.full((e,), sw.limit))


def unshuffle(t, rows):
    """Undo shuffle_matrix_a's row permutation (rows: the prepared tensor's row count)."""
    idx = importlib.import_module("flashinfer.utils").get_shuffle_matrix_a_row_indices(torch.empty(rows, 1), TILE)
    return t[torch.argsort(idx)]


def linear_scales(p, which, rows, kg, found):
    """The prepared scales back in the linear layout (through the library's own 128x4 inverse where it has one)."""
    s = getattr(p, which).view(torch.uint8)
    if found is None:
        return s
    inverse = importlib.import_module("flashinfer.trace.templates.gemm")._unswizzle_batched_sf_128x4
    return inverse(s.reshape(-1), s.shape[0], rows, kg)


def test_fc1_rows_pair_up_and_gate_in_weights_scales_and_bias(prepared):
    """Undoing the shuffle leaves the gated-act order [up_0, gate_0, up_1, gate_1, ...] (core.py:548-573):
    weight, scale and bias rows of one (up, gate) pair stay together, and the first half is up."""
    data, p, src, hp, ip = prepared
    scales = linear_scales(p, "s1", 2 * ip, hp // 32, library_interleave())
    for e in range(data.case.experts):
        for got, want in ((p.w1[e], src["w1"][e]), (scales[e], src["s1"][e])) + (
                ((p.b1[e].reshape(-1, 1), src["b1"][e].reshape(-1, 1)),) if p.b1 is not None else ()):
            r = unshuffle(got, 2 * ip)
            assert torch.equal(r[0::2], want[:ip]) and torch.equal(r[1::2], want[ip:])
    g, u = split_gate_up(data.experts.w1.data, data.experts.order)
    assert torch.equal(src["w1"][:, : g.shape[1], : u.shape[2]], u)  # [up; gate]: up first


def test_fc2_rows_are_shuffled_only(prepared):
    data, p, src, hp, ip = prepared
    scales = linear_scales(p, "s2", hp, ip // 32, library_interleave())
    for e in range(data.case.experts):
        assert torch.equal(unshuffle(p.w2[e], hp), src["w2"][e]) and torch.equal(unshuffle(scales[e], hp), src["s2"][e])
        if p.b2 is not None:
            assert torch.equal(unshuffle(p.b2[e], hp), src["b2"][e])


def test_old_bias_handling_is_caught(prepared):
    """Not vacuous: the previous adapter's biases (fc1 reordered only, fc2 as is, case dtype) differ."""
    data, p, src, hp, ip = prepared
    if p.b1 is None:
        pytest.skip("case without biases")
    reorder = importlib.import_module("flashinfer.fused_moe").reorder_rows_for_gated_act_gemm
    old_b1 = torch.stack([reorder(b.reshape(-1, 1)).reshape(-1) for b in src["b1"]])
    assert not torch.equal(old_b1, p.b1) and not torch.equal(src["b2"], p.b2)
    assert p.b1.dtype == p.b2.dtype == torch.float32 and data.experts.b1.dtype == torch.bfloat16


def test_scale_interleave_is_the_librarys(fi, interleave):
    """Which 128x4 interleave the scale checks ran with (the log shows it); the library's inverse undoes it."""
    found = library_interleave()
    if found is None:
        pytest.skip(f"flashinfer-python {FI.installed()} ships no CPU 128x4 interleave (block_scale_interleave is a "
                    "CUDA op): its scale checks cover the row permutation only")
    s = torch.randint(0, 256, (2, 256, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flat = torch.cat([interleave[1](s[i]) for i in range(2)])
    inverse = importlib.import_module("flashinfer.trace.templates.gemm")._unswizzle_batched_sf_128x4
    assert torch.equal(inverse(flat, 2, 256, 12), s) and not torch.equal(flat, s.reshape(-1)), found[0]


def test_shuffle_matrix_sf_a_is_cuda_only(fi):
    """Why the stand-in: the real helper refuses CPU tensors (pinned to the installed version)."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="cuda"):
        fi.shuffle_matrix_sf_a(torch.zeros(128, 4, dtype=torch.uint8), 128)
