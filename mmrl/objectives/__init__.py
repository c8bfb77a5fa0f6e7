"""Objectives: one file per loss family, each a pure function of features -> (loss, metrics), by name."""
