"""mmrl: chest X-ray representations learned from radiology reports, with local alignment.

Importable with no flags (Colab-friendly). Rooms, top to bottom (each imports only those below it;
setup.cfg's [importlinter] contracts, checked by `lint-imports`): `loop` (the training loop) and
`export`; `evaluation`; `train` (state, step, checkpoints, run directories, config validation);
`objectives` (losses, methods, the two-tower model); `heads`; `models` (towers); `parallel`,
`knowledge`, `viz`; `ops` (masking, pooling); `config` (schema, type checks), `registry`,
`machine_info`; `config_errors`. The input pipeline is the sibling package `data_pipeline`.

    encoder = mmrl.load_encoder("exports/convirt")   # written by `python -m experiments.export`
    embeddings = encoder(images)                      # numpy uint8/uint16/float images -> [B, D]
"""
__version__ = "0.1.0"


def load_encoder(path, **kwargs):
  """The image encoder exported to `path` (see `mmrl.export.load_encoder`); imports JAX lazily."""
  from mmrl.export import load_encoder as _load  # pylint: disable=import-outside-toplevel
  return _load(path, **kwargs)
