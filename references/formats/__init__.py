"""Number formats, one module each: E2M1 (``e2m1``), E8M0 scales and their rounding modes
(``e8m0``), MX block quantization (``mx``), NVFP4 (``nvfp4``), FP8 with fp32/UE8M0 block scales
(``fp8``), ULP helpers (``bits``); ``registry`` holds each weight format as one object.

Conventions: quantized codes are uint8 or torch float8 tensors; dequantized values are fp32;
the block dimension is the last one (the reduction dim K of a ``[rows, K]`` weight); bad input
(unaligned K, NaN in data or scales) raises ``ValueError`` naming the tensor and the index.
"""

from references.formats.bits import float_to_ordered_int
from references.formats.e2m1 import E2M1_EMAX, E2M1_MAX, e2m1_decode, e2m1_decode_packed, e2m1_encode, e2m1_table, pack_fp4, unpack_fp4
from references.formats.e8m0 import E4M3_EMAX, E4M3_MAX, E8M0_BIAS, E8M0_NAN, Element, ScaleMode, e8m0_decode, e8m0_from_exponent, mx_scale_exponent
from references.formats.fp8 import DEEPGEMM_TEST, SGLANG, TRTLLM, TRTLLM_SM90_FAST_MATH, VLLM, Fp8Rule, Fp8Scale, ceil_to_ue8m0, fp8_block_dequantize, fp8_block_quantize, fp8_group_dequantize, fp8_group_quantize
from references.formats.mx import MX_BLOCK, mx_dequantize, mx_quantize
from references.formats.nvfp4 import NVFP4_BLOCK, nvfp4_dequantize, nvfp4_global_scale, nvfp4_quantize
from references.formats.registry import (WEIGHT_FORMATS, ActQuant, QTensor, QuantRecipe, WeightFormat, fake_quant_activation,
                                         weight_format)

__all__ = [
    "DEEPGEMM_TEST", "E2M1_EMAX", "E2M1_MAX", "E4M3_EMAX", "E4M3_MAX", "E8M0_BIAS", "E8M0_NAN", "MX_BLOCK", "NVFP4_BLOCK", "WEIGHT_FORMATS",
    "ActQuant", "Element", "Fp8Rule", "Fp8Scale", "QTensor", "QuantRecipe", "ScaleMode", "WeightFormat",
    "ceil_to_ue8m0", "e2m1_decode", "e2m1_decode_packed", "e2m1_encode", "e2m1_table", "e8m0_decode", "e8m0_from_exponent",
    "fake_quant_activation", "float_to_ordered_int", "fp8_block_dequantize", "fp8_block_quantize", "fp8_group_dequantize",
    "fp8_group_quantize", "mx_dequantize", "mx_quantize", "mx_scale_exponent", "nvfp4_dequantize", "nvfp4_global_scale",
    "nvfp4_quantize", "pack_fp4", "unpack_fp4", "weight_format", "SGLANG", "TRTLLM", "TRTLLM_SM90_FAST_MATH", "VLLM",
]
