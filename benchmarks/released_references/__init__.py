"""PyTorch references of the released models (parity tests and benchmarks; never imported by mmrl)."""
