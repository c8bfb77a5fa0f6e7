"""PyTorch references of the released models, for parity tests and benchmarks (mmrl never
imports them)."""
