"""Benchmarks, outside the library: throughput (step, input pipeline, MFU, cost model), the PyTorch
reference step and parity checks against released checkpoints (released_references), each a
script run as `python benchmarks/<name>.py` or `python -m benchmarks.<name>`; results in
RESULTS.md. mmrl never imports this package (setup.cfg import-linter: benchmarks is the top layer).
"""
