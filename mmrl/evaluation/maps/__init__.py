"""Sentence maps: what a frozen state says about where each sentence is in its image.

Owns `alignment_maps` (each method's own sentence -> grid map, jitted and batch-sharded),
`similarity_maps` (BioViL's second read-out: cosine of projected region and sentence embeddings)
and `sentences` (which sentences are scored against which boxes: report sentences matched to the
findings they name, templated sentences written from a box). Read by the localisation and
grounding evaluators and the experiments' diagnostics; no metric math (mmrl/evaluation/metrics).
"""
