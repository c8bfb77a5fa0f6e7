"""Importers of released checkpoints of other projects (GLoRIA, MGCA, BioViL) into mmrl runs."""
