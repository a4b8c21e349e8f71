"""A backend plugin package as a kernel library would ship one (entry points in the
``moe_accuracy.backends`` group, found through its ``.dist-info``), whose kernels crash in every
way a real one can: segfault, abort, an unresolved symbol, hang, raise, poison the CUDA context. Used by
tests/test_isolation.py with this folder on PYTHONPATH; never installed."""

import ctypes
import os
import time

from harness.backends.emulated_cutlass import EmulatedSm90W4A16


class _Crashy(EmulatedSm90W4A16):
    hooks = ()

    def crash(self):  # pragma: no cover - replaced below
        raise NotImplementedError

    def run(self, p, data):
        self.crash()
        return super().run(p, data)


class Segfault(_Crashy):
    name = "crashy-segv"

    def crash(self):
        ctypes.string_at(0)  # reads address 0: SIGSEGV


class Abort(_Crashy):
    name = "crashy-abort"

    def crash(self):
        os.abort()


class SymbolLookup(_Crashy):
    """As a module linked without libcuda dies at its first driver call: the dynamic loader's line, exit 127."""

    name = "crashy-lookup"

    def crash(self):
        os.write(2, b"python3: symbol lookup error: mod.so: undefined symbol: cuLibraryLoadData\n")
        os._exit(127)


class Hang(_Crashy):
    name = "crashy-hang"

    def crash(self):
        time.sleep(10**6)


class Raise(_Crashy):
    name = "crashy-raise"

    def crash(self):
        raise ValueError("kernel rejected the input")


class PoisonCuda(_Crashy):
    """As a CUDA illegal memory access looks to Python: the call raises, the context is dead."""

    name = "crashy-poison"

    def crash(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class Healthy(EmulatedSm90W4A16):
    name = "crashy-healthy"
    hooks = ()


class Slow(Healthy):
    """Correct, and slow enough that a run can be killed part-way."""

    name = "crashy-slow"

    def run(self, p, data):
        time.sleep(0.4)
        return super().run(p, data)
