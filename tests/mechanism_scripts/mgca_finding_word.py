"""MGCA: pointing of the sentence map (mean over words) vs the finding word's tca attention row alone,
on planted features (docs/localisation.md). RUN: PYTHONPATH=. python tests/mechanism_scripts/mgca_finding_word.py mgca
The evaluation images differ from mechanism_harness.pointing_scores' after the first batch (no
query batches drawn in between)."""
import sys, numpy as np, jax, jax.numpy as jnp
from tests import mechanism_harness as h
from tests import planted_features as pf
from mmrl.evaluation.maps import alignment_maps as am
from mmrl.evaluation.metrics import localisation
from mmrl.objectives.methods import method_config, objective_options
m = sys.argv[1]
cfg = h.load_config(m); world = pf.make_world(0)
model, v, cpu, losses = h.train_heads(cfg, world, seed=0, steps=200)
opts = objective_options(method_config(cfg.method), "tca") or objective_options(method_config(cfg.method), "lrclr_region")
rng = np.random.default_rng(5000)
hits_all, hits_f = [], []
for _ in range(4):
  b, truth = pf.planted_batch(world, rng, 16)
  jb = {k: jnp.asarray(x) for k, x in b.items()}
  out = model.apply({k: x for k, x in v.items() if x}, jb, train=False)
  maps = np.asarray(h.maps_of(cfg, model, v, b))
  regions = out[str(opts["regions_key"])] if m == "mgca" else None
  if regions is None: break
  att = np.asarray(am.word_patch_attention(out[str(opts["words_key"])], out[str(opts["word_mask_key"])], regions, float(opts["tau"])))
  for i, row in enumerate(truth):
    for s, t in enumerate(row):
      if t is None: continue
      # the finding word is word 3 of the sentence; word index = position in report
      toks = np.where(b["token_to_sentence"][i] == s)[0]
      w = b["token_to_word"][i, toks[3]]
      gt = pf.box_masks([t[1]], world.grid)
      hits_all.append(localisation.pointing_game(maps[i, s][None], gt)[0])
      hits_f.append(localisation.pointing_game(att[i, w].reshape(1, 8, 8), gt)[0])
print(m, "sentence map", np.mean(hits_all), "finding word only", np.mean(hits_f), "n", len(hits_f))
