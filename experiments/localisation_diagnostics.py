"""Diagnostics behind docs/localisation.md ("Why the local methods did not localise").

  --run=DIR      peaked or flat, stuck or moving: statistics of a trained run's sentence maps
                 (its config.json and last checkpoint; report sentences of the held-out
                 synthetic split and templated one-sentence queries of its boxes): share of
                 constant maps, median max-min, median normalised entropy of the map made a
                 distribution, the share of maps whose maximum is the most common cell, and
                 the share whose maximum lies on the grid's outer ring (beside that ring's
                 share of the cells: a map that ignores the image peaks there more often).
  --text_probe   does the first N layers of the pretrained MiniLM (mean pooling) separate
                 location words? Cosines of templated sentences, raw and centred.

COMMAND: python -m experiments.localisation_diagnostics --run=runs/compare_loc/runs/lovt/seed_0
         python -m experiments.localisation_diagnostics --text_probe --layers=2,6
EXPECT:  under a minute on one core for 64 studies.
"""
from __future__ import annotations

import dataclasses
import pathlib

from absl import app
from absl import flags
import numpy as np

_RUN = flags.DEFINE_string("run", "", "a run directory (config.json + checkpoints/)")
_EXAMPLES = flags.DEFINE_integer("examples", 64, "held-out studies read")
_PROBE = flags.DEFINE_bool("text_probe", False, "run the text-tower location-word probe")
_LAYERS = flags.DEFINE_list("layers", ["2", "6"], "text-tower depths probed")


def map_statistics(maps: np.ndarray) -> dict[str, float]:
  """Flatness / stuckness of maps f[N, gh, gw] (module docstring)."""
  f = maps.reshape(len(maps), -1).astype(np.float64)
  span = f.max(1) - f.min(1)
  p = np.clip(f - f.min(1, keepdims=True), 0, None)
  p = p / np.maximum(p.sum(1, keepdims=True), 1e-30)
  ent = -(p * np.log(np.maximum(p, 1e-30))).sum(1) / np.log(f.shape[1])
  top = np.bincount(f.argmax(1)).max() / len(f)
  gh, gw = maps.shape[1:]
  ring = np.ones((gh, gw), bool)
  ring[1:-1, 1:-1] = False  # the outermost ring of cells (where zero padding reaches)
  return {"maps": float(len(f)), "constant_share": float(np.mean(span < 1e-6)),
          "median_span": float(np.median(span)), "median_entropy": float(np.median(ent)),
          "most_common_max_cell_share": float(top), "cells": float(f.shape[1]),
          "border_max_share": float(np.mean(ring.reshape(-1)[f.argmax(1)])),
          "border_cells_share": float(ring.mean())}


def _run_stats(run: pathlib.Path) -> None:
  from data_pipeline import pipeline, tokenization  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.maps import alignment_maps  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.maps.sentences import templated_sentence  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import distributed  # pylint: disable=g-import-not-at-top
  from mmrl.train import run_dir  # pylint: disable=g-import-not-at-top
  c = run_dir.read_config(run)
  state, mesh, shardings, _ = run_dir.restore_for_eval(c, run)
  fn = alignment_maps.make_alignment_fn(c, mesh, shardings)
  names = pipeline.dataset_info(c.data.dataset_dir)["label_names"]
  report, images, items = [], [], []
  for b in pipeline.make_eval_batches(c.data, split=c.data.eval_split,
                                      batch_size=int(c.eval.batch_size),
                                      max_examples=_EXAMPLES.value):
    out = fn(state, distributed.global_batch_from_local(
        {k: np.asarray(b[k]) for k in alignment_maps.ALIGNMENT_KEYS}, mesh))
    report.append(np.asarray(out["maps"])[np.asarray(out["sentence_mask"])])
    for i in np.flatnonzero(np.asarray(b["valid"]) & np.asarray(b["box_mask"]).any(1)):
      images.append(np.asarray(b["image"][i]))
      for j in np.flatnonzero(b["box_mask"][i]):
        items.append((len(images) - 1, templated_sentence(
            names[int(b["box_labels"][i, j])], b["boxes"][i, j])))
  tok = tokenization.ReportTokenizer(str(c.data.tokenizer))
  queries = alignment_maps.make_query_batch(
      np.stack(images), items, tok, max_tokens=int(c.data.max_tokens),
      max_sentences=int(c.data.max_sentences), batch_size=int(c.eval.batch_size))
  templated = np.concatenate([np.asarray(fn(state, distributed.global_batch_from_local(
      q, mesh))["maps"])[:, 0] for q in queries])[:len(items)]
  for name, maps in (("report sentences", np.concatenate(report)),
                     ("templated queries", templated)):
    print(run, name, {k: round(v, 3) for k, v in map_statistics(maps).items()})


def _text_probe() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipeline import tokenization  # pylint: disable=g-import-not-at-top
  from experiments.comparison import budget as budget_lib  # pylint: disable=g-import-not-at-top
  from experiments.comparison import method_configs  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.maps import alignment_maps  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  sents = [f"There is a nodule in the {s} {z} zone." for s in ("right", "left")
           for z in ("upper", "mid", "lower")]
  sents += ["There is a pleural effusion in the right upper zone.", "There is a nodule."]
  np.set_printoptions(precision=2, suppress=True, linewidth=150)
  for layers in (int(x) for x in _LAYERS.value):
    b = dataclasses.replace(budget_lib.PRESETS["localisation"], text_layers=layers, image_size=64)
    c = method_configs.method_config("convirt", b, seed=0)
    mesh = mesh_lib.make_mesh(c.mesh)
    state, _ = state_lib.create_train_state(c, jax.random.key(0), mesh)
    tok = tokenization.ReportTokenizer(str(c.data.tokenizer))
    batch = alignment_maps.make_query_batch(
        np.zeros((1, 64, 64, 1), np.float32), [(0, s) for s in sents], tok,
        max_tokens=int(c.data.max_tokens), max_sentences=int(c.data.max_sentences),
        batch_size=len(sents))[0]
    out = state.apply_fn(state.variables(state.params),
                         {k: batch[k] for k in alignment_maps.ALIGNMENT_KEYS if k != "valid"},
                         train=False)
    raw = np.asarray(out["text"].sentences)[:, 0]
    rn = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    x = raw - raw.mean(0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    print(f"layers={layers}: raw cosine right-upper vs left-lower {rn[0] @ rn[5]:.3f}, "
          f"right-upper vs left-upper {rn[0] @ rn[3]:.3f}, nodule vs effusion (right upper) "
          f"{rn[0] @ rn[6]:.3f}, right-upper vs no location {rn[0] @ rn[7]:.3f}")
    print("centred cosines (RU RM RL LU LM LL effusion-RU nodule):\n", xn @ xn.T)


def main(argv):
  del argv
  if _PROBE.value:
    _text_probe()
  if _RUN.value:
    _run_stats(pathlib.Path(_RUN.value))
  if not (_PROBE.value or _RUN.value):
    raise app.UsageError("give --run=DIR and/or --text_probe")


if __name__ == "__main__":
  app.run(main)
