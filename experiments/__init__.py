"""Thin absl entry points (pretrain, convert, evaluate, compare, ...), ml_collections configs, and
the method comparison's orchestration (comparison/: budget, method configs, runs, report)."""
