"""TrainState, optimiser, sharded step, loop, Orbax checkpoints and metric writers."""
