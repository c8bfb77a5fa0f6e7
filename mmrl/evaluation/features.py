"""Frozen-encoder features of an evaluation split, and restoring a checkpoint for evaluation.

`make_feature_step` is a jitted, mesh-sharded forward pass (train=False: BatchNorm running stats,
no dropout) returning per example: the image tower's pooled global feature, the projected
image/text embeddings (L2-normalised), and the local grid [gh, gw, D]. `extract_features` runs it
over evaluation batches (padded rows dropped with `valid`) and returns host numpy arrays, plus the
batches' labels and study ids (and masks when the batches carry them). Deterministic: record
order, no RNG.
`load_for_eval` restores a run's checkpoint onto a fresh mesh (no optimiser step, no data iterator).
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from data_pipeline import batch_spec
from mmrl.objectives.contrastive import l2_normalize
from mmrl.parallel import distributed
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import checkpoint as ckpt_lib
from mmrl.train import run_dir
from mmrl.train import state as state_lib

log = logging.getLogger(__name__)

# Host-side keys copied from the batches next to the features (study_id groups retrieval's
# positives; boxes feed detection), and with keep_images also the inputs the sheets draw.
_BATCH_OUTPUTS = ("labels", "label_mask", "study_id", "boxes", "box_labels",
                  "box_mask") + batch_spec.MASK_KEYS
_SHEET_OUTPUTS = ("image", "input_ids")


def make_feature_step(mesh: Mesh, state_shardings: Any
                      ) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
  """`step(state, batch) -> {image_global [B,Dg], image_embed [B,d], text_embed [B,d],
  image_local [B,gh,gw,Dl]}`, sharded along the batch like the input."""

  def step(state, batch):
    outputs = state.apply_fn(state.variables(), batch, train=False, rngs={"dropout": state.rng})
    image = outputs["image"]
    gh, gw = image.grid_hw
    local = image.local.reshape(image.local.shape[0], gh, gw, image.local.shape[-1])
    out = {"image_global": image.global_embedding.astype(np.float32),
           "image_local": local.astype(np.float32)}
    for key in ("image_embed", "text_embed"):
      if key in outputs:
        out[key] = l2_normalize(outputs[key].astype(np.float32))
    return out

  bs = mesh_lib.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(state_shardings, bs), out_shardings=bs)


def to_host(x: jax.Array) -> np.ndarray:
  """A global (batch-sharded) array as one host numpy array on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def model_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The batch without the evaluation-only mask keys (they stay on the host)."""
  return {k: v for k, v in batch.items() if k not in batch_spec.MASK_KEYS}


def extract_features(state: Any, step: Callable, batches: Iterable[Mapping[str, np.ndarray]],
                     mesh: Mesh, *, keep_local: bool = True, keep_images: bool = False
                     ) -> dict[str, np.ndarray]:
  """Runs `step` (from `make_feature_step`) over `batches`; concatenated valid rows, numpy.

  Returns keys image_global, image_embed, text_embed, image_local [N,gh,gw,D] (unless
  `keep_local` is False), labels, label_mask, study_id, boxes, box_labels, box_mask,
  masks/mask_labels/mask_present when the batches have them, and with `keep_images` the input
  images [N, H, W, 1] and input_ids [N, L] (for sheets and fine-tuning).
  """
  sharding = mesh_lib.batch_sharding(mesh)
  parts: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    valid = np.asarray(batch["valid"], bool)
    # Every process reads the whole evaluation batch and feeds its own rows; to_host gathers.
    rows = distributed.process_rows(model_batch(batch))
    out = step(state, distributed.global_batch_from_local(rows, mesh, sharding))
    if not keep_local:
      out.pop("image_local")
    for key, value in out.items():
      parts.setdefault(key, []).append(to_host(value)[valid])
    for key in _BATCH_OUTPUTS + (_SHEET_OUTPUTS if keep_images else ()):
      if key in batch:
        parts.setdefault(key, []).append(np.asarray(batch[key])[valid])
  if not parts:
    raise ValueError("no evaluation batches: the split is empty or every record was skipped; "
                     "check config.data.eval_split and config.eval.max_examples")
  return {k: np.concatenate(v) for k, v in parts.items()}


def checkpoint_dir(path: str | pathlib.Path) -> pathlib.Path:
  """A run directory (holding checkpoints/) or a checkpoints directory -> the checkpoints dir."""
  path = pathlib.Path(path).expanduser().absolute()
  if (path / "checkpoints").is_dir():
    return path / "checkpoints"
  if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
    return path
  raise FileNotFoundError(f"--checkpoint={path} holds neither checkpoints/ nor numbered step "
                          "folders; pass a run directory (the --workdir of experiments.pretrain) "
                          "or its checkpoints/ folder")


def load_for_eval(config: Any, checkpoint: str | pathlib.Path, *, step: Optional[int] = None
                  ) -> tuple[Any, Mesh, Any]:
  """(state, mesh, state_shardings): `checkpoint`'s state (latest step unless `step`) restored
  onto the mesh of `config.mesh`, for the frozen-encoder evaluators."""
  mesh = mesh_lib.make_mesh(config.mesh)
  abstract, shardings = state_lib.abstract_train_state(config, mesh)
  ckpt = ckpt_lib.Checkpointer(checkpoint_dir(checkpoint), async_save=False)
  try:
    restored = ckpt.restore(abstract, step, with_data_iter=False)
  finally:
    ckpt.close()
  log.info("restored %s at step %d for evaluation", ckpt.directory, restored.step)
  return restored.state, mesh, shardings


def restore_or_init(config: Any, checkpoint: str | pathlib.Path, *, step: Optional[int] = None,
                    init: str = "checkpoint") -> tuple[Any, Mesh, Any, int]:
  """(state, mesh, state_shardings, step) for an evaluation of `checkpoint` (latest complete
  step unless `step`). init='random' gives a freshly initialised state instead (config.seed) on
  the same mesh: the random-init baseline of the downstream protocols.
  `mmrl.train.run_dir.restore_for_eval` does it."""
  return run_dir.restore_for_eval(config, checkpoint, step=step, init=init)


__all__ = ["make_feature_step", "extract_features", "load_for_eval", "restore_or_init",
           "checkpoint_dir", "to_host", "model_batch"]
