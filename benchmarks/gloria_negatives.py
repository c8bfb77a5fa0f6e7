"""GLoRIA's local loss with negatives from blocks of G examples (gloria_local negatives_group=G)
against the exact (whole-batch) form: the loss value and the gradient direction, on fixed
synthetic features at GLoRIA's sizes (issue 17, section 2).

COMMAND: nice -n 15 python benchmarks/gloria_negatives.py --batches=128,256 --groups=16,64 \
           --seeds=3 --json_out=results/scaling/gloria_negatives.jsonl

Features: words f32[B, W=96, D=768] (a random number of real words per caption, 8..96) and
regions f32[B, R=49, D]. Two regimes: 'random' (independent standard normals: the start of
training, where the exact loss is ~log B) and 'aligned' (each caption's words are noisy
copies of random regions of its own image, so positives score high: a partly trained model).
For each (regime, B, G, seed) one JSON line: exact loss, grouped loss, their
ratio, and the cosine between the exact and the subset gradients w.r.t. words and regions.
This measures the objective at fixed features, not the effect on training (which needs runs).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))


def features(regime: str, b: int, seed: int, w: int = 96, r: int = 49, d: int = 768):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  regions = rng.standard_normal((b, r, d)).astype(np.float32)
  if regime == "random":
    words = rng.standard_normal((b, w, d)).astype(np.float32)
  elif regime == "aligned":
    pick = rng.integers(0, r, size=(b, w))
    words = regions[np.arange(b)[:, None], pick] + 1.5 * rng.standard_normal((b, w, d))
    words = words.astype(np.float32)
  else:
    raise ValueError(f"regime {regime!r}: use random | aligned")
  n_words = rng.integers(8, w + 1, size=b)
  wmask = np.arange(w)[None, :] < n_words[:, None]
  return (jnp.asarray(words), jnp.asarray(wmask), jnp.asarray(regions),
          jnp.ones((b, r), bool))


def summarize(path: pathlib.Path) -> str:
  """Markdown: mean (min..max over seeds) of each (regime, B, G)."""
  import collections  # pylint: disable=g-import-not-at-top
  groups = collections.defaultdict(list)
  for line in path.read_text().splitlines():
    if line.strip():
      r = json.loads(line)
      groups[(r["regime"], r["batch"], r["group"])].append(r)
  out = ["| features | B | G | seeds | exact loss | grouped loss | grouped / exact | "
         "grad cosine (words) | grad cosine (regions) |", "|---|---|---|---|---|---|---|---|---|"]

  def cell(rows, key, fmt="{:.3f}"):
    v = [r[key] for r in rows]
    m = sum(v) / len(v)
    return fmt.format(m) + ("" if len(v) == 1 else f" ({fmt.format(min(v))}..{fmt.format(max(v))})")
  for (regime, b, k), rows in sorted(groups.items()):
    out.append(f"| {regime} | {b} | {k} | {len(rows)} | {cell(rows, 'exact_loss')} | "
               f"{cell(rows, 'subset_loss')} | {cell(rows, 'ratio')} | "
               f"{cell(rows, 'grad_cos_words')} | {cell(rows, 'grad_cos_regions')} |")
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batches", default="128,256")
  p.add_argument("--groups", default="16,64", help="negatives_group values G")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--regimes", default="random,aligned")
  p.add_argument("--json_out", default="")
  p.add_argument("--summarize", default="", help="print the markdown table of this JSONL file")
  args = p.parse_args(argv)
  if args.summarize:
    print(summarize(pathlib.Path(args.summarize)))
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mmrl.objectives import gloria  # pylint: disable=g-import-not-at-top

  def loss(words, wmask, regions, rmask, rng, negatives):
    out = {"text_words": words, "word_mask": wmask, "image_regions": regions,
           "region_mask": rmask}
    return gloria.gloria_local(out, {}, rng=rng, negatives_group=negatives, caption_chunk=8)[0]

  vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)), static_argnums=(5,))

  def cos(a, b):
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))

  rows = []
  for regime in args.regimes.split(","):
    for b in (int(x) for x in args.batches.split(",")):
      for seed in range(args.seeds):
        words, wmask, regions, rmask = features(regime, b, seed)
        key = jax.random.key(seed)
        exact, g_exact = vg(words, wmask, regions, rmask, key, 0)
        for k in (int(x) for x in args.groups.split(",")):
          sub, g_sub = vg(words, wmask, regions, rmask, key, k)
          row = {"regime": regime, "batch": b, "group": k, "seed": seed,
                 "exact_loss": float(exact), "subset_loss": float(sub),
                 "ratio": float(sub) / float(exact),
                 "grad_cos_words": cos(g_exact[0], g_sub[0]),
                 "grad_cos_regions": cos(g_exact[1], g_sub[1])}
          rows.append(row)
          print(json.dumps(row), flush=True)
          if args.json_out:
            with open(args.json_out, "a") as f:
              f.write(json.dumps(row) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
