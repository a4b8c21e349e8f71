"""Property-based cases against backends: strategies inside what a backend declares
(``strategies``) and the fuzz driver with shrinking, determinism and repro files (``engine``)."""
