"""Faults outside the catalogue (tests only), written as mixins over any backend of the SM90 W4A16
contract: the emulated twin on the CPU (tests/test_localize.py) and the real FlashInfer kernel on an
sm90 GPU (tests/gpu/test_localize_real.py), so localization is checked the same way on both."""

from dataclasses import replace

import torch

from references import formats as F
from references.activations import swiglu
from references.formats import QTensor


class ExpertOffByOne:
    """The last expert is fed its neighbour's weights (an off-by-one expert index)."""

    def prepare(self, data, device):
        ex = data.experts
        shift = lambda t: torch.cat([t[:-1], t[-2:-1]]) if t is not None else None  # noqa: E731
        moved = replace(ex, w1=ex.w1.map(shift), w2=ex.w2.map(shift))
        return super().prepare(replace(data, experts=moved), device)


class TokenTail:
    """Rows from 64 on (past the first 64-token tile) are scaled."""

    def run(self, p, data):
        out = super().run(p, data).clone()
        out[64:] *= 1.5
        return out


class ChannelPeriod:
    """Output columns 5 mod 32 are zeroed."""

    def run(self, p, data):
        out = super().run(p, data).clone()
        out[:, 5::32] = 0
        return out


class Fc2CeilScales:
    """fc2's weights re-quantized with ceil E8M0 rounding (fc1 untouched)."""

    def prepare(self, data, device):
        ex = data.experts
        q, s = F.mx_quantize(F.mx_dequantize(ex.w2.data, ex.w2.scale), F.Element.E2M1, F.ScaleMode.CEIL)
        return super().prepare(replace(data, experts=replace(ex, w2=QTensor(q, s))), device)


class GateRowsSwapped:
    """Rows 0 and 1 of fc1's gate half exchanged (a layout fault in fc1 only)."""

    def prepare(self, data, device):
        ex = data.experts
        from references.layouts import fuse_gate_up, split_gate_up
        def swap(t):
            g, u = split_gate_up(t, ex.order)
            g = g.clone()
            g[:, [0, 1]] = g[:, [1, 0]]
            return fuse_gate_up(g, u, ex.order)
        return super().prepare(replace(data, experts=replace(ex, w1=QTensor(swap(ex.w1.data), swap(ex.w1.scale)))), device)


class KBlockScaled:
    """fc1 input block 1 (channels 32-63) counted twice."""

    def run(self, p, data):
        x = p.x.clone()
        x[:, 32:64] *= 2
        return super().run(replace(p, x=x), data)


class AbsGate:
    """The activation takes |gate| before the SiLU (a sign lost in the fused kernel)."""

    def activation_fn(self):
        return lambda g, u, params, prec: swiglu(g.abs(), u, params, prec)


class WeightsIgnored:
    """Routing weights ignored: every selected expert counted with weight 1."""

    def run(self, p, data):
        return super().run(p, replace(data, topk_weights=torch.ones_like(data.topk_weights)))


class SharedTwice:
    """The shared expert added twice."""

    def combine(self, routed, data):
        from harness.cases import layer_output
        return layer_output(routed, data, lambda r, s, rsf: r.float() * rsf + (0 if s is None else 2 * s))


class Fc2ScaleDoubled:
    """fc2's E8M0 scales one too high (fc1 untouched): a scale fault in one GEMM."""

    def prepare(self, data, device):
        ex = data.experts
        s2 = (ex.w2.scale.to(torch.int16) + 1).to(torch.uint8)
        return super().prepare(replace(data, experts=replace(ex, w2=QTensor(ex.w2.data, s2))), device)


# faults that act where the real kernel lets a wrapper act (prepare, inputs, output, combine): not inside
# its activation, which a compiled kernel does not expose
AROUND_A_KERNEL = (ExpertOffByOne, TokenTail, ChannelPeriod, Fc2CeilScales, GateRowsSwapped, KBlockScaled, WeightsIgnored,
                   SharedTwice, Fc2ScaleDoubled)


def over(fault: type, base: type) -> type:
    """``fault`` applied to ``base``: a backend class named after both."""
    return type(f"{fault.__name__}Over{base.__name__}", (fault, base), {"name": f"{fault.__name__}@{base.name}"})
