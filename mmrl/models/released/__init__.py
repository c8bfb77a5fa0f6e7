"""Importers of released checkpoints of other projects (GLoRIA, MGCA, BioViL, open_clip): their
tensors converted to our parameters and config. Writing the result as a run directory is
mmrl.train.released_import's (this room imports nothing from mmrl.train)."""
