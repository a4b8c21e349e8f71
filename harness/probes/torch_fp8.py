"""torch's native FP8 GEMMs with fp32 and UE8M0 scales: correctness against the dequantized GEMM and
the accuracy cost of power-of-two scales (SNR against the unquantized GEMM)."""

from __future__ import annotations

import torch

from harness.compare import THRESHOLDS, compute_metrics, judge
from harness.probes.base import ProbeResult
from references import formats as F


def _gemm_data(device, m=256, n=512, k=1024, seed=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(torch.bfloat16)
    b = (torch.randn(n, k, generator=g) / 16).to(torch.bfloat16)
    return a.to(device), b.to(device)


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    return F.ceil_to_ue8m0(s)


def scaled_mm_probe(device):
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


def grouped_probe(device):
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


