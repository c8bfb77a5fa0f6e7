"""TrainState, optimiser, sharded step, Orbax checkpoints, metric writers, config validation, and
run directories: finding, reading, writing and restoring them (`run_dir`, `released_import`).

The loop that drives the step and the evaluators sits above both, in `mmrl/loop.py`; the layers
are written in setup.cfg's [importlinter] contracts."""
