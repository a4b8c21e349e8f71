"""FlashInfer backends: the trimmed JIT build (``build``) and one module per kernel path."""

# the distribution, its import name and the oldest version the adapters were written for
PACKAGE = {"flashinfer-python": ("flashinfer", "0.6.12")}
