"""LoVT ablations on planted features (docs/localisation.md, Mechanism test): drops terms of
lovt_objectives() or changes one option. RUN: PYTHONPATH=. python tests/mechanism_scripts/lovt_ablation.py
<base|no_global|global_only|report_local_only|image_local_only|no_weights|attnorm_none> <seed>"""
import sys, numpy as np, ml_collections as mlc
from tests import mechanism_harness as h
from tests import planted_features as pf
from experiments.configs.lovt import lovt_objectives
variant = sys.argv[1]; seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
cfg = h.load_config("lovt")
objs = lovt_objectives()
if variant == "no_global": objs = objs[1:]
if variant == "global_only": objs = objs[:1]
if variant == "report_local_only": objs = [objs[2]]
if variant == "image_local_only": objs = [objs[1]]
if variant == "no_weights":
  for o in objs[1:]: o.use_weights = False
cfg.method.objectives = objs
if variant == "attnorm_none": cfg.method.attention_norm = "none"
if variant == "attnorm_layer": cfg.method.attention_norm = "layer"
world = pf.make_world(seed)
model, v, cpu, losses = h.train_heads(cfg, world, seed=seed, steps=200)
sc = h.pointing_scores(cfg, model, v, world, seed=seed)
rng = np.random.default_rng(99)
b, truth = pf.planted_batch(world, rng, 16)
m = h.maps_of(cfg, model, v, b)
flat = m.reshape(16, m.shape[1], -1)
am = flat.argmax(-1)[b["sentence_mask"]]
mx = flat.max(-1)[b["sentence_mask"]]
print(variant, seed, {k: round(x, 3) for k, x in sc.items() if 'ratio' in k or 'pointing' in k},
      "cpu", round(cpu, 1), "loss", round(float(losses[:10].mean()), 2), round(float(losses[-10:].mean()), 2),
      "argmax cells", np.bincount(am, minlength=64).argmax(), "share top cell", round(np.bincount(am).max() / len(am), 2),
      "mean max att", round(float(mx.mean()), 3), flush=True)
