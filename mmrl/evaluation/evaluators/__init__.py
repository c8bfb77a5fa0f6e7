"""The evaluators: one module per task, each a class `(config, ...) -> __call__(state, ...) ->
(scalars, images)` that `mmrl.evaluation.runner` builds from config.eval.

Owns what an evaluation does with a frozen state (which split, which heads are trained, which
pairs are scored); the metric math is in mmrl/evaluation/metrics, the sentence maps in
mmrl/evaluation/maps, the pictures in mmrl/viz. The task modules do not import each other;
`protocol` (label fractions, seeds, minibatches) and `dense_segmentation` (the dense decoders of
the segmentation evaluator) sit below them (setup.cfg import-linter contracts).
"""
