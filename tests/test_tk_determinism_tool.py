"""tools/tk-determinism.py's scale move (Findings 10) on the CPU: the moved scales keep their values and strides,
the tail holds the fill, and the original goes back."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

spec = importlib.util.spec_from_file_location("tk_determinism", Path(__file__).resolve().parents[1] / "tools" / "tk-determinism.py")
tk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tk)


@pytest.mark.parametrize("fill", [0x00, 0x7F, 0xFF])
def test_scales_move_into_a_filled_buffer(fill):
    dense = torch.arange(24, dtype=torch.uint8).view(2, 3, 4)
    t = dense.permute(0, 2, 1)                     # a permutation of a dense buffer, as the Hopper layout is
    scale = SimpleNamespace(storage=SimpleNamespace(data=t))
    original = tk.poisoned_tail(scale, fill, pad=16)
    moved = scale.storage.data
    assert original is t and torch.equal(moved, t) and moved.stride() == t.stride()
    buf = torch.as_strided(moved, (24 + 16,), (1,), 0)
    assert torch.equal(buf[:24], dense.flatten()) and bool((buf[24:] == fill).all())


def test_a_view_into_a_larger_storage_is_refused():
    t = torch.zeros(10, dtype=torch.uint8)[2:6]
    with pytest.raises(SystemExit, match="not a permutation of a dense buffer"):
        tk.poisoned_tail(SimpleNamespace(storage=SimpleNamespace(data=t)))
