"""Kernel contracts as families: each twin (the emulated model of a contract) with the faults of
the catalogue that can break it; and the mutants (a backend with one fault's hook replaced).
Real backends name their family here; the fault zoo and diagnosis read it. A new contract is
one entry here."""

from __future__ import annotations

from harness.backends.base import Backend, Family
from harness.backends.emulated import EmulatedAiterMxfp4, EmulatedInterleavedMx
from harness.backends.emulated_cutlass import (EmulatedCutlassBf16, EmulatedFp8Block, EmulatedFp8BlockUpGate,
                                               EmulatedSm90W4A16, EmulatedSm90W4A16V2)
from harness.backends.torch_grouped import EmulatedTorchGroupedBf16, EmulatedTorchScaledGroupedFp8
from harness.faults import FAULTS_BY_NAME, Fault


def _family(name: str, twin: type, *faults: str) -> Family:
    fam = Family(name, twin, tuple(FAULTS_BY_NAME[f] for f in faults))
    twin.family = fam  # the twin and every real backend derived from it belong to the family
    return fam


_SM90 = ("weights-not-sm90-interleaved", "gate-up-swapped", "checkpoint-rows-not-deinterleaved", "swiglu-limit-dropped",
         "swiglu-params-dropped", "beta-dropped", "limit-operands-swapped", "gate-clamped-both-sides",
         "rsf-applied-to-shared", "fp4-nibbles-swapped", "e8m0-bias-off-by-one", "e8m0-ceil-instead-of-floor")
SM90_W4A16 = _family("sm90-w4a16", EmulatedSm90W4A16, *_SM90, "scales-not-sm90-interleaved")
SM90_W4A16_V2 = _family("sm90-w4a16-v2", EmulatedSm90W4A16V2, *_SM90, "scales-not-sm90-folded")
CUTLASS_BF16 = _family("cutlass-bf16", EmulatedCutlassBf16, "gate-up-swapped", "checkpoint-rows-not-deinterleaved",
                       "swiglu-limit-dropped", "swiglu-params-dropped", "beta-dropped", "rsf-applied-to-shared")
FP8_BLOCK = _family("fp8-block", EmulatedFp8Block, "silu-mul-quant-limit-dropped", "rsf-applied-to-shared",
                    "ue8m0-scales-for-fp32")
FP8_BLOCK_UP_GATE = _family("fp8-block-up-gate", EmulatedFp8BlockUpGate, "gate-up-swapped", "silu-mul-quant-limit-dropped",
                            "rsf-applied-to-shared", "ue8m0-scales-for-fp32")
INTERLEAVED_MXFP4 = _family("interleaved-mxfp4", EmulatedInterleavedMx, "separated-rows-where-interleaved-expected")
AITER_MXFP4 = _family("aiter-mxfp4", EmulatedAiterMxfp4, "shuffle-flag-lost")
_TORCH = ("gate-up-swapped", "checkpoint-rows-not-deinterleaved", "rsf-applied-to-shared")
TORCH_GROUPED_BF16 = _family("torch-grouped-bf16", EmulatedTorchGroupedBf16, *_TORCH)
TORCH_GROUPED_FP8 = _family("torch-grouped-fp8", EmulatedTorchScaledGroupedFp8, *_TORCH, "silu-mul-quant-limit-dropped",
                            "ue8m0-scales-for-fp32")
FAMILIES = (SM90_W4A16, SM90_W4A16_V2, CUTLASS_BF16, FP8_BLOCK, FP8_BLOCK_UP_GATE, INTERLEAVED_MXFP4, AITER_MXFP4,
            TORCH_GROUPED_BF16, TORCH_GROUPED_FP8)


def honours(base: Backend, fault: Fault) -> bool:
    """Does ``base`` expose the step ``fault`` replaces?"""
    return fault.hook.__name__ in {h.__name__ for h in base.hooks}


def mutant(base: Backend, fault: Fault) -> Backend:
    """A new backend: ``base`` with ``fault``'s hook replaced."""
    fam = base.family
    if fam is None or fault not in fam.faults:
        raise ValueError(f"fault {fault.name} is not one of {base.name}'s family's faults ({fam.name if fam else None})")
    if not honours(base, fault):
        raise ValueError(f"backend {base.name} does not honour hook {fault.hook.__name__!r}")

    def case_gate(self, case):
        if not fault.needs(case):
            return f"fault {fault.name} is not exercised by this case"
        return type(base).case_gate(self, case)

    cls = type(f"Zoo_{fault.name.replace('-', '_')}_{type(base).__name__}", (type(base),),
               {fault.hook.__name__: fault.impl, "name": f"zoo:{fault.name}@{base.name}", "case_gate": case_gate,
                "description": f"fault zoo: {fault.cause}", "verified": base.verified, "fault": fault})
    return cls()


def zoo_backends(bases: list[Backend]) -> list[Backend]:
    """Every (fault, base) pair that the base's family lists and the base honours."""
    return [mutant(b, f) for b in bases if b.family is not None for f in b.family.faults if honours(b, f)]
