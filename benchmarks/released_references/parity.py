"""Parity of an import against the PyTorch reference it came from (tests and the benchmark).

`run_parity(fmt, workdir, base_config, ...)` builds the format's reference
(`reference_torch`, seeded random weights), saves it in the release's file structure under
`workdir` (Lightning formats through a real `Trainer.save_checkpoint`, `lightning_files`),
imports it with `importer.convert` + `importer.build_config`, runs mmrl's model
(float32, eval mode) and the reference on the same images and token ids, and returns the largest
absolute difference of each embedding (global and local, image and text) plus the import's
tensor counts. Needs torch, torchvision, transformers, pytorch-lightning, omegaconf (and timm
for MGCA-ViT): the `torch` extra. Lives with the benchmarks: mmrl never imports it.
"""
from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmrl.models.released import common
from mmrl.models.released import importer

# ours -> reference output name, per format; 'masked' compares only real words / tokens.
COMPARE = {
    "gloria": {"image_global": "image_pooled", "image_embed": "image_embed",
               "image_regions": "image_regions", "text_embed": "text_embed",
               "text_words": "text_words"},
    "mgca": {"image_global": "image_pooled", "image_embed": "image_embed",
             "image_regions_local": "image_regions_local", "text_embed": "text_embed",
             "text_words_local": "text_words_local"},
    "biovil": {"image_global": "image_pooled", "image_embed": "image_embed",
               "image_regions": "image_regions", "text_embed": "text_embed",
               "text_tokens": "text_tokens"},
    "open_clip": {"image_global": "image_pooled", "image_embed": "image_embed",
                  "text_global": "text_pooled", "text_embed": "text_embed",
                  "text_tokens": "text_tokens"},
}


def _reference(fmt: str, workdir: pathlib.Path, variant: str, seed: int, sizes: dict,
               positions: str = "authors"):
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks.released_references import reference_torch as R  # pylint: disable=import-outside-toplevel
  if fmt == "gloria":
    model = R.gloria_reference(seed, **sizes.get("text", {}))
    path = R.save_gloria(model, workdir / "gloria.ckpt")
    vocab = R.write_vocab(workdir / "vocab", model.gloria.text_encoder.model.config.vocab_size)
    return path, vocab, (lambda x, ids, mask: model.gloria(x, ids, mask)), (0.5, 0.5)
  if fmt == "mgca":
    model = R.mgca_reference(variant, seed, vit=sizes.get("vit"), **sizes.get("text", {}))
    path = R.save_mgca(model, workdir / f"mgca_{variant}.ckpt")
    model.text_encoder_q.positions = positions
    vocab = R.write_vocab(workdir / "vocab", model.text_encoder_q.model.config.vocab_size)
    return path, vocab, model, (0.5, 0.5)
  if fmt == "open_clip":
    from benchmarks.released_references import open_clip_files as O  # pylint: disable=import-outside-toplevel
    folder = O.write_release(workdir / "open_clip", seed, full=bool(sizes.get("full")))
    model = O.load_reference(folder)  # open_clip's own loader on the written folder
    # Grey in [0, 1] repeated to RGB, then open_clip's per-channel Normalize (preprocess_cfg).
    mean_c = torch.tensor(O.CLIP_MEAN).view(1, 3, 1, 1)
    std_c = torch.tensor(O.CLIP_STD).view(1, 3, 1, 1)
    return folder, None, (lambda x, ids, mask: O.forward(model, (x - mean_c) / std_c, ids)), \
        (0.0, 1.0)
  image, text = R.biovil_reference(seed, **sizes.get("text", {}))
  folder = R.save_biovil(image, text, workdir / "biovil")

  def forward(x, ids, mask):
    return {**image(x), **text.encode(ids, mask)}
  return folder, None, forward, (0.0, 1.0)


def run_parity(fmt: str, workdir: str | pathlib.Path, base_config: Any, *, variant: str = "vit",
               image_size: int = 64, text_length: int = 24, batch: int = 2, seed: int = 0,
               sizes: dict | None = None, positions: str | None = None,
               reference_positions: str | None = None) -> dict[str, Any]:
  """See the module docstring. Returns {'max_abs_diff': {name: float}, 'scale': {name: max |ref|},
  'counts': the import report's counts, 'report': the report, 'seconds': {...}}.
  `positions` (MGCA): the import's text positions and the reference's call ('authors': the token
  types passed positionally as position ids, as MGCA's code does; 'arange': 0..L-1);
  `reference_positions` (default: the same) measures what a mismatch does."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks.released_references import reference_torch as R  # pylint: disable=import-outside-toplevel
  from mmrl.objectives.two_tower import build_model  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  path, vocab, ref_forward, (mean, std) = _reference(fmt, workdir, variant, seed, sizes or {},
                                                     reference_positions or positions or "authors")
  t1 = time.time()
  converted = importer.convert(fmt, path, positions=positions)
  config = importer.build_config(converted, base_config,
                                 tokenizer=None if vocab is None else str(vocab))
  config.data.image_size = image_size
  config.data.max_tokens = max(64, text_length)
  t2 = time.time()

  images = R.example_images(batch, image_size, seed)
  text = R.example_text(batch, text_length, seed)
  with torch.no_grad():
    ref = ref_forward(R.to_rgb_tensor(images, mean, std), torch.from_numpy(text["input_ids"]),
                      torch.from_numpy(text["attention_mask"]))
  ref = {k: v.numpy() for k, v in ref.items()}

  model = build_model(config)
  length = text_length
  content = (text["token_to_word"] >= 0)
  ours_batch = {
      "image": jnp.asarray((images - mean) / std),
      "input_ids": jnp.asarray(text["input_ids"], jnp.int32),
      "attention_mask": jnp.asarray(text["attention_mask"], jnp.int32),
      "token_to_sentence": jnp.asarray(np.where(content, 0, -1), jnp.int32),
      "token_to_word": jnp.asarray(text["token_to_word"], jnp.int32),
      "sentence_mask": jnp.ones((batch, 4), bool),
      "valid": jnp.ones((batch,), bool),
  }
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ours_batch, train=False))
  variables = {"params": common.fill(shapes["params"], converted.params, what="parameters",
                                         source=str(path))}
  if "batch_stats" in shapes:
    variables["batch_stats"] = common.fill(shapes["batch_stats"], converted.batch_stats,
                                               what="BatchNorm statistics", source=str(path))
  out = jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, ours_batch)
  ours = {k: v for k, v in out.items() if not isinstance(v, dict)}
  ours["image_global"] = out["image"].global_embedding
  ours["text_tokens"] = out["text"].tokens
  ours["text_global"] = out["text"].global_embedding
  t3 = time.time()

  diffs, scale, cosine = {}, {}, {}
  n_words = content.reshape(batch, length)
  for mine, theirs in COMPARE[fmt].items():
    a, b = np.asarray(ours[mine], np.float32), ref[theirs]
    if mine in ("text_words", "text_words_local", "text_tokens"):
      rows = []
      for i in range(batch):
        n = int(len(set(text["token_to_word"][i][n_words[i]])))  # real words of example i
        if mine == "text_words":       # [CLS] + words (ours: word 0 is [CLS]; theirs too)
          rows.append((a[i, :n + 1], b[i, :n + 1]))
        elif mine == "text_words_local":  # words after [CLS] (both drop [CLS]; [SEP] left out)
          rows.append((a[i, :n], b[i, :n]))
        else:                          # every attended token
          m = int(text["attention_mask"][i].sum())
          rows.append((a[i, :m], b[i, :m]))
      d = max(float(np.abs(x - y).max()) for x, y in rows)
      s = max(float(np.abs(y).max()) for _, y in rows)
    else:
      if a.shape != b.shape:
        raise ValueError(f"{fmt}: ours {mine} {a.shape} vs reference {theirs} {b.shape}")
      d, s = float(np.abs(a - b).max()), float(np.abs(b).max())
      if a.ndim == 2:  # [B, D] embeddings: the smallest cosine between ours and theirs
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        cosine[mine] = float(cos.min())
    diffs[mine], scale[mine] = d, s
  report = converted.report()
  return {"format": fmt, "variant": variant if fmt == "mgca" else "", "max_abs_diff": diffs,
          "scale": scale, "min_cosine": cosine, "counts": report["counts"], "report": report,
          "config": config, "source": str(path),
          "seconds": {"reference": t1 - t0, "convert": t2 - t1, "forward": t3 - t2}}
