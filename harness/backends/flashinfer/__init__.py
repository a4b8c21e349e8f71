"""FlashInfer backends: the trimmed JIT build (``build``), the SM90 cutlass fused-MoE paths
(``sm90_w4a16``, ``sm90_cutlass``) and trtllm-gen (``trtllm_gen``). What the installed version
changes (the SM90 W4A16 layouts, the W4A16 race, the bf16 finalize) is decided here, once."""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

from harness.backends.libapi import Library

# Written from, and bound to, the 0.6.12 and 0.7.2.post1 wheels (tests/fixtures/api).
FI = Library("flashinfer-python", "flashinfer", ">=0.6.12,<0.7.3",
             ("flashinfer-python-0.6.12", "flashinfer-python-0.7.2.post1"), "PyPI wheels flashinfer_python-0.6.12, -0.7.2.post1")

# FlashInfer #3738 (5823159c) replaced the SM90 mixed-input collective and its layouts in 0.6.16;
# 0.6.16.post3, 0.6.16.post4 and 0.6.17 reverted it (1a055bbc, 1e06ad9d); 0.6.18 and 0.7.x keep it.
_REVERTED = {Version("0.6.16.post3"), Version("0.6.16.post4"), Version("0.6.17")}


def _version(v: str | None) -> Version | None:
    try:
        return Version(v) if v and v != "unknown" else None
    except InvalidVersion:
        return None


def sm90_layout(version: str | None = None) -> str:
    """``v1`` (<= 0.6.15.post1 and the reverts) or ``v2`` (0.6.16-0.6.16.post2, >= 0.6.18) SM90 W4A16 layouts."""
    v = _version(version or FI.installed())
    if v is None:
        return "v2"
    return "v2" if v >= Version("0.6.16") and v not in _REVERTED else "v1"


def w4a16_race(version: str | None = None) -> str | None:
    """The known SM90 W4A16 race of this version, if any (FlashInfer #5438)."""
    v = _version(version or FI.installed())
    if v is not None and Version("0.6.10") <= v and sm90_layout(str(v)) == "v1":
        return ("FlashInfer #5438: the SM90 W4A16 collective rewrites its TMA descriptors in global memory on every "
                "expert switch while the previous tile's loads may be in flight (0.6.10-0.6.15.post1, 0.6.16.post3/.post4, "
                "0.6.17): sporadically wrong tiles that change between identical calls; use 0.6.16-0.6.16.post2 or >= 0.6.18")
    return None


def fused_finalize_switch(version: str | None = None) -> bool:
    """Does ``cutlass_fused_moe`` take ``use_fused_finalize`` (0.7.x)? Without it (0.6.x) the bf16 path
    reduces top-k with atomics in a fused epilogue, so its output is not bitwise reproducible."""
    v = _version(version or FI.installed())
    return v is None or v >= Version("0.7")
