"""mmrl: chest X-ray representations learned from radiology reports, with local alignment.

Importable with no flags (Colab-friendly). Subpackages: models, heads, objectives, parallel,
train, evaluation, viz. The input pipeline lives in the sibling package `data_pipeline`.

    encoder = mmrl.load_encoder("exports/convirt")   # written by `python -m experiments.export`
    embeddings = encoder(images)                      # numpy uint8/uint16/float images -> [B, D]
"""
__version__ = "0.1.0"


def load_encoder(path, **kwargs):
  """The image encoder exported to `path` (see `mmrl.export.load_encoder`); imports JAX lazily."""
  from mmrl.export import load_encoder as _load  # pylint: disable=import-outside-toplevel
  return _load(path, **kwargs)
