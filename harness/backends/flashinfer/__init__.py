"""FlashInfer backends: the trimmed JIT build (``build``) and one module per kernel path."""

from harness.backends.libapi import Library

# Written from, and bound to, the 0.6.12 and 0.7.2.post1 wheels (tests/fixtures/api). The SM90 W4A16
# layouts are keyed on the installed version (harness.backends.flashinfer.sm90_w4a16).
FI = Library("flashinfer-python", "flashinfer", ">=0.6.12,<0.7.3",
             ("flashinfer-python-0.6.12", "flashinfer-python-0.7.2.post1"), "PyPI wheels flashinfer_python-0.6.12, -0.7.2.post1")
