"""TrainState, optimiser, sharded step, loop, Orbax checkpoints, metric writers, and run
directories: finding, reading, writing and restoring them (`run_dir`, `released_import`)."""
