"""FlashInfer probes: the MX/NVFP4 quantizers (bit-exact against the references, naming the E8M0
rounding mode), ``silu_and_mul`` (ULPs), and what the quantizers do on an arch they do not support.

FlashInfer 0.6.12 / 0.7.2.post1: the quantize kernels' bodies are compiled for sm100+ only and the
outputs are allocated with ``torch.empty`` (``csrc/nv_internal/.../quantization.cuh``; FlashInfer's
own tests skip compute capability < 10), so on sm90 they return unwritten buffers without raising.
The bit-exact probes are gated to sm100+; ``flashinfer-quantize-unsupported-arch`` records the
sm90 behaviour as a finding.
"""

from __future__ import annotations

import torch

from harness.backends.flashinfer import FI
from harness.compare import compare_bits
from harness.probes.base import ProbeResult
from references import formats as F
from references.activations import Precision, silu_and_mul


def _inputs(m: int, k: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    # spread block magnitudes over many binades so every E8M0 rounding branch is hit
    x = x * torch.exp2(torch.randint(-12, 12, (m, k // 32), generator=g).float()).repeat_interleave(32, 1)
    return x.to(torch.bfloat16).to(device)


def unswizzle_128x4(sf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Undo the TRT-LLM/FlashInfer 128x4 scale-factor swizzle: storage [mTiles, kTiles, 32, 4, 4]
    with row = mTile*128 + mInner*32 + mOuter and col = kTile*4 + kInner."""
    mt, kt = -(-rows // 128), -(-cols // 4)
    flat = sf.reshape(-1)[: mt * kt * 512].reshape(mt, kt, 32, 4, 4)  # [mT, kT, mOuter, mInner, kInner]
    full = flat.permute(0, 3, 2, 1, 4).reshape(mt * 128, kt * 4)      # [mT, mInner, mOuter, kT, kInner]
    return full[:rows, :cols]


def _mode_match(q_k: torch.Tensor, s_k: torch.Tensor, x: torch.Tensor, elem: F.Element, gs: float | None = None):
    """Which interpretation (scale layout x input pre-scale x E8M0 mode) reproduces the kernel?

    Returns (exact interpretation or None, match fractions per interpretation, facts)."""
    m, k = x.shape
    q = q_k.cpu().view(torch.uint8).reshape(m, -1)
    s = s_k.cpu().view(torch.uint8)
    layouts = {"linear": lambda: s.reshape(-1)[: m * (k // 32)].reshape(m, k // 32),
               "swizzled-128x4": lambda: unswizzle_128x4(s, m, k // 32)}
    pres = {"x": 1.0} if gs is None else {"x": 1.0, "x*global_scale": gs}
    fr, exact = {}, None
    for lname, get in layouts.items():
        try:
            sl = get()
        except RuntimeError:
            continue
        for pname, mult in pres.items():
            for mode in F.ScaleMode:
                q_r, s_r = F.mx_quantize(x.float().cpu() * mult, elem, mode)
                key = f"{lname}/{pname}/{mode.value}"
                fr[key] = {"scales_equal": round(float((s_r == sl).float().mean()), 6),
                           "data_equal": round(float((q_r.view(torch.uint8).reshape(m, -1) == q).float().mean()), 6)}
                if exact is None and fr[key]["scales_equal"] == 1.0 and fr[key]["data_equal"] == 1.0:
                    exact = key
    facts = {"q": f"{tuple(q_k.shape)} {q_k.dtype}", "scales": f"{tuple(s_k.shape)} {s_k.dtype}"}
    return exact, fr, facts


def mx_probe(kind: str):
    def fn(device):
        mxfp8_quantize, fp4_quantize = FI.attr("flashinfer", "mxfp8_quantize"), FI.attr("flashinfer", "fp4_quantize")
        out = []
        for (m, k, seed) in ((128, 4096, 0), (7, 256, 1)):
            x = _inputs(m, k, seed, device)
            gs = None
            if kind == "mxfp8":
                q, s = mxfp8_quantize(x, is_sf_swizzled_layout=False)
                elem = F.Element.E4M3
            else:
                gsv = (448 * 6) / x.float().abs().max()
                q, s = fp4_quantize(x, gsv, sf_vec_size=32, sf_use_ue8m0=True, is_sf_swizzled_layout=False)
                elem, gs = F.Element.E2M1, float(gsv)
            exact, fr, facts = _mode_match(q, s, x, elem, gs)
            case = f"probe:{kind}_quantize[M={m},K={k}]"
            # Invariance check, independent of any interpretation: an MX quantizer must shift every
            # E8M0 scale by exactly +1 when its input doubles (for fp4 the global scale halves, so
            # the data must at least change). An output that does not follow the input is reported.
            if kind == "mxfp8":
                q2, s2 = mxfp8_quantize(2 * x, is_sf_swizzled_layout=False)
            else:
                q2, s2 = fp4_quantize(2 * x, (448 * 6) / (2 * x).float().abs().max(), sf_vec_size=32, sf_use_ue8m0=True,
                                      is_sf_swizzled_layout=False)
            sa, sb = s.view(torch.uint8).cpu().int(), s2.view(torch.uint8).cpu().int()
            same_data = torch.equal(q.view(torch.uint8).cpu(), q2.view(torch.uint8).cpu())
            facts["zero_scale_fraction"] = round(float((sa == 0).float().mean()), 4)
            facts["scales_shift_by_one_when_input_doubles"] = round(float((sb == sa + 1).float().mean()), 4)
            if kind == "mxfp8" and same_data and facts["scales_shift_by_one_when_input_doubles"] < 0.5:
                out.append(ProbeResult(case, "fail", "kernel output does not depend on its input: data identical for x and "
                                       f"2x, {facts['zero_scale_fraction']:.0%} of scales zero (buffers apparently not "
                                       "written on this device)", {"bit_exact": False, "interpretations": fr},
                                       {"e8m0_rounding": "undetermined (output not written)", **facts}))
                continue
            if exact:
                mode = exact.rsplit("/", 1)[1]
                out.append(ProbeResult(case, "pass", f"bit-exact with the reference as {exact}",
                                       {"bit_exact": True, "interpretation": exact}, {"e8m0_rounding": mode, **facts}))
            else:
                best = max(fr, key=lambda md: (fr[md]["scales_equal"], fr[md]["data_equal"]))
                out.append(ProbeResult(case, "fail", f"no interpretation reproduces it bit-exactly; closest {best}: "
                                       f"scales {fr[best]['scales_equal']:.2%} equal, data {fr[best]['data_equal']:.2%} equal",
                                       {"bit_exact": False, "interpretations": fr},
                                       {"e8m0_rounding": f"undetermined (closest {best})", **facts}))
        return out
    return fn


def nvfp4_probe(device):
    fp4_quantize = FI.attr("flashinfer", "fp4_quantize")
    out = []
    for (m, k, seed) in ((128, 4096, 0), (5, 256, 1)):
        x = _inputs(m, k, seed, device)
        gs = ((448 * 6) / x.float().abs().max()).reshape(1)
        q, s = fp4_quantize(x, gs, sf_vec_size=16, sf_use_ue8m0=False, is_sf_swizzled_layout=False)
        q_r, s_r, _ = F.nvfp4_quantize(x.float().cpu(), gs.cpu())
        bq = compare_bits(q.cpu().view(torch.uint8).reshape(q_r.shape), q_r)
        su = s.cpu().view(torch.uint8)
        cands = {"linear": su.reshape(-1)[: s_r.numel()].reshape(s_r.shape)}
        try:
            cands["swizzled-128x4"] = unswizzle_128x4(su, m, k // 16)
        except RuntimeError:
            pass
        bs = {n: compare_bits(v.contiguous(), s_r.view(torch.uint8)) for n, v in cands.items()}
        lay = min(bs, key=lambda n: bs[n]["differing"])
        ok = bq["bit_exact"] and bs[lay]["bit_exact"]
        out.append(ProbeResult(f"probe:nvfp4_quantize[M={m},K={k}]", "pass" if ok else "fail",
                               f"bit-exact with the NVFP4 reference ({lay} scales)" if ok else
                               f"data: {bq['differing']} bytes differ; E4M3 scales ({lay}): {bs[lay]['differing']} differ",
                               {"data": bq, "scales": bs[lay]},
                               {"q": f"{tuple(q.shape)} {q.dtype}", "scales": f"{tuple(s.shape)} {s.dtype}", "layout": lay}))
    return out


def silu_probe(device):
    # silu_and_mul is JIT-built from data/include/flashinfer/activation.cuh (jit/activation.py:134, 0.6.12 and
    # 0.7.2.post1); a wheel trimmed for prebuilt modules (tools/trim-flashinfer-wheel.py) has no such sources
    header = FI.attr("flashinfer.jit.env").FLASHINFER_INCLUDE_DIR / "flashinfer" / "activation.cuh"
    if not header.exists():
        return [ProbeResult("probe:silu_and_mul[M=64,d=1024]", "skipped",
                            "flashinfer-python is installed without its JIT sources (a trimmed wheel): "
                            "silu_and_mul cannot be built here")]
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(64, 2 * 1024, generator=g) * 4).to(torch.bfloat16).to(device)
    y = FI.attr("flashinfer", "silu_and_mul")(x)
    r = silu_and_mul(x, precision=Precision.KERNEL).to(torch.bfloat16)
    b = compare_bits(y, r)
    ok = b["max_ulp"] <= 1
    return [ProbeResult("probe:silu_and_mul[M=64,d=1024]", "pass" if ok else "fail",
                        f"max {b['max_ulp']} bf16 ULP from the reference (bit-exact: {b['bit_exact']}; "
                        f"{b['differing']} elements differ)", b)]


# ---- torch native FP8 GEMMs --------------------------------------------------------------


def unsupported_arch_probe(device):
    """Below sm100 the quantizers are not compiled in: does the library say so, or return garbage?
    Either way this is a fact about the library on this arch (a finding), not a kernel failure."""
    mxfp8_quantize = FI.attr("flashinfer", "mxfp8_quantize")
    x = _inputs(128, 1024, 0, device)
    case = "probe:mxfp8_quantize on an unsupported arch"
    try:
        q1, s1 = mxfp8_quantize(x, is_sf_swizzled_layout=False)
        q2, s2 = mxfp8_quantize(2 * x, is_sf_swizzled_layout=False)
        torch.cuda.synchronize()
    except Exception as e:  # the honest behaviour: refuse
        return [ProbeResult(case, "pass", f"raises on this arch: {type(e).__name__}: {' '.join(str(e).split())[:200]}")]
    follows = not torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) or not torch.equal(s1.view(torch.uint8), s2.view(torch.uint8))
    finding = ("returns without writing its outputs and without an error (the output does not follow the input: "
               "identical bytes for x and 2x); FlashInfer compiles the quantize kernels for sm100+ only")
    if follows:
        finding = "returns outputs that follow the input on this arch (quantizer apparently supported here)"
    return [ProbeResult(case, "pass", f"finding: {finding}", None, {"finding": finding})]
