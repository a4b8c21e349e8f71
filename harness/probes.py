"""Kernel probes: single quantization/activation/GEMM kernels checked against the references.

Each probe feeds deterministic inputs to one library kernel and compares it with the matching
reference: bit-exactly where the contract is bit-exact (MX/NVFP4 quantizers: it also names the
E8M0 rounding mode that reproduces the kernel), by ULP for activations, and by metrics for
FP8 GEMMs (where the report also shows the accuracy cost of UE8M0 scales next to fp32 ones).
Rows use the same schema as MoE rows (backend = probe name, case = ``probe:<what>``).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from harness.backends.base import Backend, Requirements
from harness.backends.flashinfer import FI
from harness.compare import THRESHOLDS, compare_bits, compute_metrics, judge
from harness.results import ResultRow, Status
from references import formats as F
from references.activations import Precision, silu_and_mul


@dataclass
class ProbeResult:
    case: str
    status: str
    message: str
    metrics: dict | None = None
    notes: dict | None = None


class Probe(Backend):
    """A probe reuses Backend's device gate; ``probe(device)`` yields results."""

    fn: Callable = None

    def probe(self, device: str) -> list[ProbeResult]:
        return type(self).fn(device)


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


def _mx_probe(kind: str):
    def fn(device):
        import flashinfer
        out = []
        for (m, k, seed) in ((128, 4096, 0), (7, 256, 1)):
            x = _inputs(m, k, seed, device)
            gs = None
            if kind == "mxfp8":
                q, s = flashinfer.mxfp8_quantize(x, is_sf_swizzled_layout=False)
                elem = F.Element.E4M3
            else:
                gsv = (448 * 6) / x.float().abs().max()
                q, s = flashinfer.fp4_quantize(x, gsv, 32, True, False)  # as mxfp4_quantize, linear scales
                elem, gs = F.Element.E2M1, float(gsv)
            exact, fr, facts = _mode_match(q, s, x, elem, gs)
            case = f"probe:{kind}_quantize[M={m},K={k}]"
            # Invariance check, independent of any interpretation: an MX quantizer must shift every
            # E8M0 scale by exactly +1 when its input doubles (for fp4 the global scale halves, so
            # the data must at least change). An output that does not follow the input is reported.
            if kind == "mxfp8":
                q2, s2 = flashinfer.mxfp8_quantize(2 * x, is_sf_swizzled_layout=False)
            else:
                q2, s2 = flashinfer.fp4_quantize(2 * x, (448 * 6) / (2 * x).float().abs().max(), 32, True, False)
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


def _nvfp4_probe(device):
    import flashinfer
    out = []
    for (m, k, seed) in ((128, 4096, 0), (5, 256, 1)):
        x = _inputs(m, k, seed, device)
        gs = ((448 * 6) / x.float().abs().max()).reshape(1)
        q, s = flashinfer.fp4_quantize(x, gs, 16, False, False)
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


def _silu_probe(device):
    import flashinfer
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(64, 2 * 1024, generator=g) * 4).to(torch.bfloat16).to(device)
    y = flashinfer.silu_and_mul(x)
    r = silu_and_mul(x, precision=Precision.KERNEL).to(torch.bfloat16)
    b = compare_bits(y, r)
    ok = b["max_ulp"] <= 1
    return [ProbeResult("probe:silu_and_mul[M=64,d=1024]", "pass" if ok else "fail",
                        f"max {b['max_ulp']} bf16 ULP from the reference (bit-exact: {b['bit_exact']}; "
                        f"{b['differing']} elements differ)", b)]


# ---- torch native FP8 GEMMs --------------------------------------------------------------
def _gemm_data(device, m=256, n=512, k=1024, seed=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(torch.bfloat16)
    b = (torch.randn(n, k, generator=g) / 16).to(torch.bfloat16)
    return a.to(device), b.to(device)


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    return F.ceil_to_ue8m0(s)


def _scaled_mm_probe(device):
    """torch._scaled_mm / F.scaled_mm with fp32 and UE8M0 scales: correctness vs the dequantized
    reference GEMM (pass/fail) and SNR vs the unquantized GEMM (the accuracy cost)."""
    a, b = _gemm_data(device)
    exact = a.float() @ b.float().T
    out = []
    th = THRESHOLDS["w8a8"].with_overrides(max_rel_l2=0.01, min_cosine=0.9999)
    for recipe in ("tensorwise", "rowwise", "blockwise_1x128_128x128"):
        for sfmt in ("fp32", "ue8m0"):
            case = f"probe:scaled_mm[{recipe},{sfmt} scales]"
            try:
                y, a_dq, b_dq, api = _run_scaled_mm(a, b, recipe, sfmt)
                ref = a_dq @ b_dq.T
                m = compute_metrics(y, ref, th)
                v = judge(m, th)
                snr = compute_metrics(y, exact, th).snr_db
                out.append(ProbeResult(case, "pass" if v.passed else "fail",
                                       f"{v.message}; SNR vs unquantized GEMM {snr:.2f} dB", m.as_dict(),
                                       {"api": api, "snr_vs_unquantized_db": round(snr, 3)}))
            except Exception as e:
                out.append(ProbeResult(case, "error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
    return out


def _run_scaled_mm(a, b, recipe, sfmt):
    fp8 = torch.float8_e4m3fn
    if recipe == "tensorwise":
        sa = a.float().abs().max().clamp_min(1e-4) / 448
        sb = b.float().abs().max().clamp_min(1e-4) / 448
        if sfmt == "ue8m0":
            sa, sb = _pow2_ceil(sa), _pow2_ceil(sb)
        qa, qb = (a.float() / sa).to(fp8), (b.float() / sb).to(fp8)
        y = torch._scaled_mm(qa, qb.T, scale_a=sa.reshape(()), scale_b=sb.reshape(()), out_dtype=torch.bfloat16)
        return y, qa.float() * sa, qb.float() * sb, "torch._scaled_mm tensorwise"
    if recipe == "rowwise":
        sa = a.float().abs().amax(1, keepdim=True).clamp_min(1e-4) / 448
        sb = b.float().abs().amax(1, keepdim=True).clamp_min(1e-4) / 448
        if sfmt == "ue8m0":
            sa, sb = _pow2_ceil(sa), _pow2_ceil(sb)
        qa, qb = (a.float() / sa).to(fp8), (b.float() / sb).to(fp8)
        y = torch._scaled_mm(qa, qb.T, scale_a=sa, scale_b=sb.T.contiguous(), out_dtype=torch.bfloat16)
        return y, qa.float() * sa, qb.float() * sb, "torch._scaled_mm rowwise"
    qa, sa = F.fp8_group_quantize(a, 128, F.Fp8Scale(sfmt))  # [M, K/128]
    qb, sb = F.fp8_block_quantize(b, (128, 128), F.Fp8Scale(sfmt))  # [N/128, K/128]
    import torch.nn.functional as NF
    st = NF.ScalingType
    errors = []
    # scale storage that cuBLAS accepts has varied across torch releases: try the documented
    # candidates in order and record the one that ran (a wrong one raises, it does not run)
    for la, sa_t in (("outer-major", sa.t().contiguous().t()), ("row-major", sa.contiguous())):
        for lb, sb_t in (("[K/128,N/128] contiguous", sb.T.contiguous()), ("[K/128,N/128] view", sb.T),
                         ("[N/128,K/128]", sb.contiguous())):
            try:
                y = NF.scaled_mm(qa, qb.T, sa_t, st.BlockWise1x128, sb_t, st.BlockWise128x128,
                                 output_dtype=torch.bfloat16)
            except (RuntimeError, ValueError, TypeError) as e:
                errors.append(f"{la}/{lb}: {' '.join(str(e).split())[:80]}")
                continue
            return (y, F.fp8_group_dequantize(qa, sa), F.fp8_block_dequantize(qb, sb),
                    f"torch.nn.functional.scaled_mm BlockWise1x128 ({la}) x BlockWise128x128 ({lb})")
    raise RuntimeError("no scale layout accepted: " + " | ".join(errors))


def _grouped_probe(device):
    if not hasattr(torch, "_scaled_grouped_mm"):
        return [ProbeResult("probe:scaled_grouped_mm", "skipped", "torch._scaled_grouped_mm not in this torch")]
    fp8 = torch.float8_e4m3fn
    g = torch.Generator().manual_seed(7)
    groups, n, k = 4, 256, 512
    ms = [64, 0, 128, 48]
    a = torch.randn(sum(ms), k, generator=g).to(torch.bfloat16).to(device)
    b = (torch.randn(groups, n, k, generator=g) / 16).to(torch.bfloat16).to(device)
    offs = torch.tensor(ms, device=device).cumsum(0).to(torch.int32)
    out = []
    th = THRESHOLDS["w8a8"].with_overrides(max_rel_l2=0.01, min_cosine=0.9999)
    for sfmt in ("fp32", "ue8m0"):
        case = f"probe:scaled_grouped_mm[rowwise,{sfmt} scales]"
        try:
            sa = a.float().abs().amax(1).clamp_min(1e-4) / 448
            sb = b.float().abs().amax(2).clamp_min(1e-4) / 448
            if sfmt == "ue8m0":
                sa, sb = _pow2_ceil(sa), _pow2_ceil(sb)
            qa = (a.float() / sa[:, None]).to(fp8)
            qb = (b.float() / sb[:, :, None]).to(fp8)
            y = torch._scaled_grouped_mm(qa, qb.transpose(-2, -1), sa, sb, offs=offs, out_dtype=torch.bfloat16)
            a_dq, b_dq = qa.float() * sa[:, None], qb.float() * sb[:, :, None]
            ref = torch.cat([a_dq[s:e] @ b_dq[i].T for i, (s, e) in
                             enumerate(zip([0] + offs[:-1].tolist(), offs.tolist()))])
            exact = torch.cat([a.float()[s:e] @ b.float()[i].T for i, (s, e) in
                               enumerate(zip([0] + offs[:-1].tolist(), offs.tolist()))])
            m = compute_metrics(y, ref, th)
            v = judge(m, th)
            snr = compute_metrics(y, exact, th).snr_db
            out.append(ProbeResult(case, "pass" if v.passed else "fail", f"{v.message}; SNR vs unquantized {snr:.2f} dB",
                                   m.as_dict(), {"snr_vs_unquantized_db": round(snr, 3)}))
        except Exception as e:
            out.append(ProbeResult(case, "error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
    return out


def _mk(name, kernel, req, fn):
    return type(f"Probe_{name.replace('-', '_')}", (Probe,), {"name": name, "kernel": kernel, "requirements": req,
                                                            "fn": staticmethod(fn), "verified": "unverified"})()


def all_probes() -> list[Probe]:
    cuda = ("cuda",)
    return [
        _mk("flashinfer-mxfp8-quantize", "flashinfer.mxfp8_quantize", Requirements(devices=("sm90+",), libraries=(FI,)), _mx_probe("mxfp8")),
        _mk("flashinfer-mxfp4-quantize", "flashinfer.fp4_quantize(sf_vec_size=32, ue8m0)", Requirements(devices=("sm90+",), libraries=(FI,)), _mx_probe("mxfp4")),
        _mk("flashinfer-nvfp4-quantize", "flashinfer.fp4_quantize(sf_vec_size=16)", Requirements(devices=("sm90+",), libraries=(FI,)), _nvfp4_probe),
        _mk("flashinfer-silu-and-mul", "flashinfer.silu_and_mul", Requirements(devices=cuda, libraries=(FI,)), _silu_probe),
        _mk("torch-scaled-mm", "torch._scaled_mm / torch.nn.functional.scaled_mm", Requirements(devices=("sm90+",)), _scaled_mm_probe),
        _mk("torch-scaled-grouped-mm", "torch._scaled_grouped_mm", Requirements(devices=("sm90+",)), _grouped_probe),
    ]


def run_probes(probes: list[Probe], device: str, device_kind: str, on_row) -> list[ResultRow]:
    rows = []
    for p in probes:
        def row(case, status, message, **kw):
            r = ResultRow(case=case, backend=p.name, status=Status(status), message=message, tags=["probe"],
                          repro=f"moeacc probe --probe {p.name}", shape=p.kernel, **kw)
            on_row(r)
            rows.append(r)
        why = p.device_gate(device_kind)
        if why:
            row(f"probe:{p.name}", "skipped", why)
            continue
        t0, tb = time.perf_counter(), None
        try:
            results = p.probe(device)
        except Exception as e:
            results = [ProbeResult(f"probe:{p.name}", "error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")]
            tb = traceback.format_exc(limit=6)
        dt = round(time.perf_counter() - t0, 3)
        for r in results:
            row(r.case, r.status, r.message, metrics=r.metrics, backend_notes=r.notes, duration_s=dt, traceback=tb)
    return rows
