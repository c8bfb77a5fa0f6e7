"""Segmentation masks in evaluation batches: they match the records' PNGs in the image's frame."""
import io

import numpy as np
from PIL import Image

from data_pipeline import batch_spec
from data_pipeline import pipeline
from data_pipeline import records
from data_pipeline import synthetic_dataset
from experiments.configs import convirt


def _data_cfg(cache):
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(cache)
  c.data.synthetic.workers = 1
  c.data.dataset_dir = str(synthetic_dataset.resolve_dataset_dir(c.data, cache, make=True))
  return c.data


def _reference_view(png: bytes, size: int) -> np.ndarray:
  """Nearest-neighbour sampling of the mask at each output pixel centre of the letterboxed view
  (pad to a centred square, scale to size): an independent route to the same frame."""
  m = np.asarray(Image.open(io.BytesIO(png)).convert("L")) > 127
  h, w = m.shape
  scale = size / max(h, w)
  nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
  px, py = (size - nw) // 2, (size - nh) // 2
  ys, xs = np.mgrid[0:size, 0:size]
  u = np.floor((xs - px + 0.5) * w / nw).astype(int)
  v = np.floor((ys - py + 0.5) * h / nh).astype(int)
  inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
  out = np.zeros((size, size), bool)
  out[inside] = m[v[inside], u[inside]]
  return out


def test_masks_in_eval_batches_match_the_record_pngs(synthetic_cache):
  data = _data_cfg(synthetic_cache)
  info = pipeline.dataset_info(data.dataset_dir)
  source = pipeline.split_source(data.dataset_dir, "train", info)
  batches = list(pipeline.make_eval_batches(data, split="train", batch_size=8, max_examples=16,
                                            with_masks=True, max_masks=3))
  size = data.image_size
  assert batches[0]["masks"].shape == (8, 3, size, size)
  row, checked = 0, 0
  for batch in batches:
    for i in np.flatnonzero(batch["valid"]):
      rec = records.parse_record(source[row])
      row += 1
      n = min(3, len(rec.masks_png))
      assert batch["mask_present"][i].tolist() == [j < n for j in range(3)]
      assert not batch["masks"][i, n:].any()
      for j in range(n):
        assert batch["mask_labels"][i, j] == info["label_names"].index(rec.mask_labels[j])
        ref = _reference_view(rec.masks_png[j], size)
        got = batch["masks"][i, j] > 0.5
        assert set(np.unique(batch["masks"][i, j])) <= {0.0, 1.0}
        assert np.mean(got == ref) > 0.97
        assert got.any() == ref.any()
        if ref.any():  # same place: centroids within 1.5 px; large masks also overlap well
          dist = np.linalg.norm(np.argwhere(got).mean(0) - np.argwhere(ref).mean(0))
          assert dist < 1.5, (row, j, dist)
          if ref.sum() >= 20:
            assert (got & ref).sum() / (got | ref).sum() > 0.6, (row, j)
        checked += 1
  assert checked >= 3  # the synthetic frontal views carry finding masks


def test_training_and_default_eval_batches_carry_no_masks(synthetic_cache):
  data = _data_cfg(synthetic_cache)
  batch = next(iter(pipeline.make_eval_batches(data, split="train", batch_size=4,
                                               max_examples=4)))
  assert not set(batch_spec.MASK_KEYS) & set(batch)
  it = pipeline.make_train_iterator(data, global_batch_size=4)
  try:
    assert set(next(it)) == set(batch_spec.BATCH_KEYS)
  finally:
    it.close()
