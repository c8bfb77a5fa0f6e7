"""Parity table of the released-checkpoint importers (docs/released_checkpoints.md).

python -m benchmarks.released_checkpoint_parity            # small text towers, ResNet-50s (CPU, ~1 min)
python -m benchmarks.released_checkpoint_parity --full     # the released sizes: Bio_ClinicalBERT-size
                                                           # BERTs (12 / 6 layers), ViT-B/16, 224 px
For each format (GLoRIA; MGCA with its ViT and with its ResNet-50; BioViL; open_clip / BiomedCLIP)
it builds the PyTorch reference from the authors' code as called (benchmarks/released_references;
open_clip: open-clip-torch's own CustomTextCLIP, read back by open_clip.create_model), with seeded
random weights, saves it in the release's file structure (GLoRIA / MGCA: Lightning's own
`Trainer.save_checkpoint`, GLoRIA's hyper-parameters an OmegaConf DictConfig), imports it, and
prints the largest absolute and relative difference of every global and local embedding (mmrl
float32 vs torch float32, same inputs) and the tensor counts of the import (imported / dropped,
all tensors of the file including optimiser state). The `*_positions_0toL` rows measure what
importing MGCA with positions 0..L-1 (`--positions=arange`) does against the authors' forward
(every token at position 0): not a parity row, left out of the worst difference. Needs the
`torch` extra. Writes the rows as JSON with --output.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_FULL = flags.DEFINE_bool("full", False, "Released sizes instead of small text towers.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the rows as JSON here.")
_FORMATS = flags.DEFINE_list("formats", ["gloria", "mgca_vit", "mgca_resnet", "biovil",
                                          "open_clip",
                                          "mgca_vit_positions_0toL",
                                          "mgca_resnet_positions_0toL"],
                             "Which rows.")


def _cases(full: bool) -> dict[str, dict]:
  if full:
    bert12 = dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab_size=28996)
    bert6 = dict(bert12, layers=6)
    return {
        "gloria": dict(fmt="gloria", image_size=224, text_length=97, sizes={"text": bert12}),
        "mgca_vit": dict(fmt="mgca", variant="vit", image_size=224, text_length=112,
                         sizes={"text": bert6, "vit": dict(image_size=224, patch=16, width=768,
                                                           depth=12, heads=12)}),
        "mgca_resnet": dict(fmt="mgca", variant="resnet", image_size=224, text_length=112,
                            sizes={"text": bert6}),
        "biovil": dict(fmt="biovil", image_size=480, text_length=64,
                       sizes={"text": dict(hidden=768, layers=12, heads=12, intermediate=3072,
                                           vocab_size=30522, joint=128)}),
        "open_clip": dict(fmt="open_clip", image_size=224, text_length=256,
                          sizes={"full": True}),  # timm vit_base_patch16_224 + PubMedBERT sizes
    }
  small = dict(hidden=64, layers=4, heads=1, intermediate=128, vocab_size=64)
  return {
      "gloria": dict(fmt="gloria", image_size=64, text_length=24, sizes={"text": small}),
      "mgca_vit": dict(fmt="mgca", variant="vit", image_size=64, text_length=24,
                       sizes={"text": dict(small, layers=2),
                              "vit": dict(image_size=64, patch=16, width=384, depth=12,
                                          heads=6)}),
      "mgca_resnet": dict(fmt="mgca", variant="resnet", image_size=64, text_length=24,
                          sizes={"text": dict(small, layers=2)}),
      "biovil": dict(fmt="biovil", image_size=64, text_length=24,
                     sizes={"text": dict(small, heads=2, layers=2, joint=32)}),
      "open_clip": dict(fmt="open_clip", image_size=32, text_length=24),  # mmrl's vit_tiny sizes
  }


def _with_mismatch(cases: dict[str, dict]) -> dict[str, dict]:
  for name in ("mgca_vit", "mgca_resnet"):
    cases[name + "_positions_0toL"] = dict(cases[name], positions="arange",
                                           reference_positions="authors")
  return cases


def main(argv):
  del argv
  import importlib  # pylint: disable=import-outside-toplevel
  from benchmarks.released_references import parity  # pylint: disable=import-outside-toplevel
  rows = []
  cases = _with_mismatch(_cases(_FULL.value))
  with tempfile.TemporaryDirectory() as tmp:
    for name in _FORMATS.value:
      case = dict(cases[name])
      fmt = case.pop("fmt")
      base = importlib.import_module(f"experiments.configs.{fmt}").get_config()
      r = parity.run_parity(fmt, pathlib.Path(tmp) / name, base, **case)
      rows.append({"row": name, "max_abs_diff": r["max_abs_diff"], "scale": r["scale"],
                   "min_cosine": r["min_cosine"],
                   "counts": r["counts"], "dropped_by_reason": r["report"]["dropped_by_reason"],
                   "image_tower": str(r["config"].model.image.name),
                   "text_layers": int(r["config"].model.text.num_layers),
                   "seconds": {k: round(v, 1) for k, v in r["seconds"].items()}})
  print("| importer | image tower | text layers | max abs diff (embedding: value) | largest "
        "|ref| | max relative diff | min cosine (text_embed) | tensors imported / dropped "
        "(of all) |")
  print("|---|---|---|---|---|---|---|---|")
  for row in rows:
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in row["max_abs_diff"].items())
    rel = max(v / max(row["scale"][k], 1e-12) for k, v in row["max_abs_diff"].items())
    row["max_relative_diff"] = rel
    c = row["counts"]
    print(f"| {row['row']} | {row['image_tower']} | {row['text_layers']} | {diffs} | "
          f"{max(row['scale'].values()):.2g} | {rel:.1e} | "
          f"{row['min_cosine'].get('text_embed', float('nan')):.6f} | {c['imported']} / "
          f"{c['dropped']} ({c['tensors']}) |")
  parity_rows = [r for r in rows if "positions_0toL" not in r["row"]]
  if parity_rows:
    worst = max(max(r["max_abs_diff"].values()) for r in parity_rows)
    worst_rel = max(r["max_relative_diff"] for r in parity_rows)
    print(f"\nworst difference over the parity rows: {worst:.2e} abs, {worst_rel:.2e} relative "
          "(tolerance 1e-4)")
  if _OUTPUT.value:
    pathlib.Path(_OUTPUT.value).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
  app.run(main)
