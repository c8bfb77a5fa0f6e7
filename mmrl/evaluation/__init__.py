"""Evaluators over frozen encoders: retrieval, zero-shot, linear probe, segmentation (and
localisation), run by `mmrl.evaluation.runner.EvalRunner`; docs/evaluation.md."""
