"""The references' arithmetic is the same on every device: no division of a tensor by a Python number
that is not a power of two (torch's CUDA kernel multiplies by its rounded reciprocal instead,
``references/formats/arith.py``), checked statically here; the bits on a GPU in tests/gpu/test_device_arith_cuda.py."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import torch

from references.formats.arith import div, rdiv

ROOT = Path(__file__).resolve().parents[1] / "references"
# names the references bind to non-power-of-two numbers (a division by one of these on a tensor is device-dependent)
CONSTANTS = {"E4M3_MAX", "E2M1_MAX", "maxv", "max_elem"}


def _device_dependent(node: ast.BinOp) -> bool:
    r = node.right
    if isinstance(r, ast.Constant) and isinstance(r.value, float | int) and not isinstance(r.value, bool):
        v = abs(float(r.value))
        return v != 0 and not math.log2(v).is_integer()
    return isinstance(r, ast.Name) and r.id in CONSTANTS


def test_no_reference_divides_a_tensor_by_a_python_number():
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _device_dependent(node):
                bad.append(f"{f.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "device-dependent division (use references.formats.arith.div):\n" + "\n".join(bad)


def test_the_lint_sees_the_pattern():
    for src, want in (("amax / E4M3_MAX", True), ("amax / 448.0", True), ("x / 2.0", False), ("x / y", False),
                      ("448.0 / amax", False), ("a / maxv", True)):
        assert _device_dependent(ast.parse(src, mode="eval").body) is want, src


def _bf16_amax() -> torch.Tensor:
    a = torch.arange(1, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return a[a >= torch.finfo(torch.float32).tiny]


def test_div_is_the_correctly_rounded_quotient():
    a = _bf16_amax()
    assert torch.equal(div(a, 448.0), (a.double() / 448.0).float())   # fp64 quotient rounded once: exact for fp32 operands
    assert torch.equal(div(a, 6.0), (a.double() / 6.0).float())


def test_rdiv_is_torchs_reciprocal_then_multiply():
    a = _bf16_amax()
    assert torch.equal(rdiv(448.0, a), 448.0 / a)
    assert torch.equal(rdiv(448.0, a), (torch.reciprocal(a) * 448.0))
    # and it is not the correctly rounded quotient (the two roundings show on 8,258 of the 32,512 values)
    assert int((rdiv(448.0, a) != (448.0 / a.double()).float()).sum()) == 8258
