"""triton_kernels v3.6.0 ``topk`` with caller-provided ids: the bitmatrix it packs, for int16 and int32 ids.

Finding (read in the source, reproduced here on the GPU): ``_topk_forward`` loads the provided ids in
their own dtype (``topk_details/_topk_forward.py:116-119``) and packs ``1 << (ids % 32)``
(``:140-149``); triton 3.6.0 gives a Python-int operand the tensor's type (``language/semantic.py:67-78``),
so with int16 ids the shift is int16: experts 16-31 of each 32-wide word vanish and expert 15 sign-extends
to 0xFFFF8000 on the uint32 store (spurious experts 15-31). int16 is the library's own index dtype
(``topk.py:44``) and the docstring sets no dtype (``topk.py:123-125``): a library bug, not API misuse.
The metadata built on such a bitmatrix disagrees with the ids (NaN, garbage, illegal memory access
downstream), so this probe reads the bitmatrix only (``topk_forward``, no ``SparseMatrix``).
"""

from __future__ import annotations

import torch

from harness.backends.triton_kernels import TK
from harness.probes.base import ProbeResult

IDS = ((1, 3, 7, 17), (1, 3, 7, 15), (0, 14, 16, 31), (33, 47, 48, 63))   # experts of 4 tokens, E = 64, k = 4
EXPERTS = 64


def expected_bits(ids: torch.Tensor, experts: int) -> list[list[int]]:
    words = (experts + 31) // 32
    out = [[0] * words for _ in range(ids.shape[0])]
    for t, row in enumerate(ids.tolist()):
        for e in row:
            out[t][e // 32] |= 1 << (e % 32)
    return out


def int16_probe(device) -> list[ProbeResult]:
    topk_forward = TK.attr("triton_kernels.topk", "topk_forward")
    want = expected_bits(torch.tensor(IDS), EXPERTS)
    logits = torch.randn(len(IDS), EXPERTS, generator=torch.Generator().manual_seed(0)).to(device)
    results = []
    for dtype in (torch.int32, torch.int16):
        ids = torch.tensor(IDS, dtype=dtype, device=device)
        _, _, bitmatrix = topk_forward(x=logits, k=len(IDS[0]), apply_softmax=False, y_indx=ids)   # triton_kernels/topk.py:24 (triton v3.6.0)
        torch.cuda.synchronize()
        got = [[w & 0xFFFFFFFF for w in row] for row in bitmatrix.storage.data[: len(IDS)].to(torch.int64).tolist()]
        case = f"probe:topk bitmatrix from provided {str(dtype).removeprefix('torch.')} ids"
        metrics = {"rows_wrong": sum(g != w for g, w in zip(got, want))}
        notes = {"got": [[hex(v) for v in r] for r in got], "expected": [[hex(v) for v in r] for r in want]}
        if got == want:
            results.append(ProbeResult(case, "pass", "bitmatrix equals the ids", metrics, notes))
        else:
            bad = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            results.append(ProbeResult(case, "fail", (
                f"finding (library bug, triton_kernels v3.6.0): ids {list(IDS[bad])} packed as "
                f"{notes['got'][bad]}, expected {notes['expected'][bad]} ({metrics['rows_wrong']} of {len(IDS)} rows "
                "wrong; 1 << (ids % 32) is computed in the ids' int16, _topk_forward.py:140-149)"), metrics, notes))
    return results
