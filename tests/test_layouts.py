"""Layouts: gate/up orders, SM90 interleaves (against a literal model of the CUDA kernel's thread
loops), AITER shuffle, padding."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import layouts as L


def kernel_loop_model(w: torch.Tensor) -> torch.Tensor:
    """Python model of ``interleave_fp4_weights_for_sm90_mixed_gemm_kernel``'s index math,
    iterating blocks/partitions/lanes exactly as the CUDA grid does (slow; small shapes only)."""
    rows, half = w.shape
    cols = half * 2
    src = w.flatten().tolist()
    dst = [None] * len(src)
    for block_id in range(rows // 2):
        for partition_id in range(cols // 64):
            for lane_id in range(32):
                row_id = block_id // 8 * 16 + block_id % 8
                dst_row = row_id + (lane_id // 8 % 2) * 8
                il = lane_id // 16 * 16 + (lane_id % 4) * 4 + (lane_id % 8) // 4 * 2
                col, dcol = partition_id * 32 + lane_id, partition_id * 32 + il
                a, b = src[row_id * half + col], src[(row_id + 8) * half + col]
                na = (a & 0x0F) | ((b & 0x0F) << 4)
                nb = (b & 0xF0) | ((a & 0xF0) >> 4)
                d = dst_row * half + dcol
                dst[d], dst[d + 1] = na, nb
    assert None not in dst, "the kernel's index map must be a permutation"
    return torch.tensor(dst, dtype=torch.uint8).reshape(rows, half)


@pytest.mark.parametrize("n,k", [(16, 64), (32, 128), (48, 192)])
def test_sm90_weight_interleave_matches_kernel_loop_model(n, k):
    g = torch.Generator().manual_seed(n + k)
    w = torch.randint(0, 256, (2, n, k // 2), dtype=torch.uint8, generator=g)
    ours = L.sm90_interleave_fp4_weights(w)
    for e in range(2):
        assert torch.equal(ours[e], kernel_loop_model(w[e]))


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_sm90_weight_interleave_inverse(e, n16, k64, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (e, 16 * n16, 32 * k64), dtype=torch.uint8, generator=g)
    il = L.sm90_interleave_fp4_weights(w)
    assert torch.equal(L.sm90_deinterleave_fp4_weights(il), w)
    # a permutation of nibbles: the multiset of codes is unchanged
    nib = lambda t: torch.sort(torch.cat([t & 0xF, t >> 4]).flatten()).values  # noqa: E731
    assert torch.equal(nib(il), nib(w))


def test_sm90_weight_interleave_is_not_identity_and_fails_on_bad_shapes():
    w = torch.arange(16 * 64, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(1, 16, 64)
    assert not torch.equal(L.sm90_interleave_fp4_weights(w), w)
    with pytest.raises(ValueError, match="n % 16 == 0 and K % 64 == 0"):
        L.sm90_interleave_fp4_weights(torch.zeros(1, 8, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="packed uint8"):
        L.sm90_interleave_fp4_weights(torch.zeros(1, 16, 32))


@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_sm90_scale_interleave_definition_and_inverse(e, rows, kb, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 255, (e, rows, 4 * kb), dtype=torch.uint8, generator=g)
    il = L.sm90_interleave_scales(s)
    assert il.shape == (e, kb, rows * 4)
    # definition: out[e, b, r*4 + j] = s[e, r, b*4 + j]
    r, b, j = rows - 1, kb - 1, 3
    assert il[0, b, r * 4 + j] == s[0, r, b * 4 + j]
    assert torch.equal(L.sm90_deinterleave_scales(il), s)


def test_scale_interleave_needs_k_multiple_of_128():
    with pytest.raises(ValueError, match="multiple of 128"):
        L.sm90_interleave_scales(torch.zeros(1, 4, 6, dtype=torch.uint8))


@pytest.mark.parametrize("order", list(L.GateUpOrder))
@pytest.mark.parametrize("dim", [-2, -1])
def test_gate_up_round_trip(order, dim):
    g, u = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    f = L.fuse_gate_up(g, u, order, dim)
    a, b = L.split_gate_up(f, order, dim)
    assert torch.equal(a, g) and torch.equal(b, u)


def test_gate_up_orders_are_what_they_say():
    g, u = torch.zeros(2, 1), torch.ones(2, 1)
    assert L.fuse_gate_up(g, u, "interleaved").flatten().tolist() == [0, 1, 0, 1]
    assert L.fuse_gate_up(g, u, "gate_up").flatten().tolist() == [0, 0, 1, 1]
    assert L.fuse_gate_up(g, u, "up_gate").flatten().tolist() == [1, 1, 0, 0]
    f = L.fuse_gate_up(g, u, "interleaved")
    assert torch.equal(L.convert_gate_up(L.convert_gate_up(f, "interleaved", "up_gate"), "up_gate", "interleaved"), f)
    with pytest.raises(ValueError, match="'sideways' is not a valid GateUpOrder"):
        L.split_gate_up(f, "sideways")


def test_padding():
    x = torch.ones(2, 100)
    p = L.pad_dim(x, -1, 128)
    assert p.shape == (2, 128) and p[:, 100:].abs().sum() == 0 and torch.equal(p[:, :100], x)
    w = L.fuse_gate_up(torch.ones(3, 4), 2 * torch.ones(3, 4), "up_gate", dim=-2)
    pw = L.pad_gate_up(w, "up_gate", 8, dim=-2)
    g, u = L.split_gate_up(pw, "up_gate", dim=-2)
    assert g.shape == (8, 4) and (g[:3] == 1).all() and (g[3:] == 0).all() and (u[:3] == 2).all()


@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_aiter_shuffle_inverse_and_tile_structure(n16, k32, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (2, 16 * n16, 32 * k32), dtype=torch.uint8, generator=g)
    s = L.aiter_shuffle_weight(w)
    assert torch.equal(L.aiter_unshuffle_weight(s), w)
    # the first 16 bytes of a shuffled tile are row 0's first 16 bytes, the next 16 are row 1's
    flat = s[0].flatten()
    assert torch.equal(flat[:16], w[0, 0, :16]) and torch.equal(flat[16:32], w[0, 1, :16])
