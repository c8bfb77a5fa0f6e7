"""The method comparison (`python -m experiments.compare`) and its learning curves
(`python -m experiments.learning_curves`): orchestration above the library.

budget.py          the common budget (`Budget`), its --budget parser and the named presets
method_configs.py  every method's config at that common size (experiments.configs.<method>)
run.py             data preparation, one (method, seed) run, the process pool, run_comparison
report.py          statistics over seeds, the analysis prose, tables, plots, reanalyse
curves.py          learning curves: checkpoints kept at chosen steps, each evaluated like a run
"""
