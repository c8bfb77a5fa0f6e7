"""Evaluators over frozen encoders: retrieval (and, later, linear probe, zero-shot, localisation)."""
