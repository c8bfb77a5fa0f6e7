"""Every method's config at the comparison's common size, and what that size changes in it.

`method_config(method, budget, seed=...)` sets the 44 keys of the module docstring of
experiments/comparison/run.py on `experiments.configs.<method>` (the method's own tiny heads,
then one common size: image tower, text tower, embed_dim 64, projection_hidden 128, the same
steps / batch / lr / warm-up / seed for everyone). `fallbacks(method, budget)` lists what that
changes relative to the method's own config (the header of comparison.md). `set_lenses` and
`set_in_loop_eval` switch evaluators on the evaluation's copy of a config.
"""
from __future__ import annotations

from experiments.comparison.budget import ALL_METHODS, BASELINE, Budget
from experiments.configs import convirt
from experiments.configs import demo
from experiments.configs import gloria
from experiments.configs import local_mi
from experiments.configs import lovt
from experiments.configs import lrclr
from experiments.configs import mgca
from experiments.configs import mlip
from experiments.configs import place

# The config module of every method compared (experiments/configs/<method>.py).
METHOD_CONFIGS = {"convirt": convirt, "gloria": gloria, "mgca": mgca, "lovt": lovt,
                  "local_mi": local_mi, "place": place, "mlip": mlip, "lrclr": lrclr}
assert tuple(METHOD_CONFIGS) == ALL_METHODS, "METHOD_CONFIGS and budget.ALL_METHODS disagree"
# Methods whose heads call the text tower again through the model (MLIP's knowledge encoder):
# the frozen-text feature cache refuses them, so they run the frozen tower every step.
NO_TEXT_CACHE = ("mlip",)
_SMALL_ARG = {"convirt": "smoke"}  # every other method config takes 'tiny'


def method_config(method: str, budget: Budget, *, seed: int, dataset_dir: str = "",
                  data_cache: str = ""):
  """`method`'s config at the comparison's common size (module docstring)."""
  if method not in METHOD_CONFIGS:
    raise ValueError(f"method {method!r} is not known; use one of {', '.join(ALL_METHODS)}")
  c = METHOD_CONFIGS[method].get_config(_SMALL_ARG.get(method, "tiny"))
  d = demo.get_config()
  c.seed = int(seed)
  c.data.dataset_dir = dataset_dir
  c.data.synthetic.num_patients = int(budget.patients)
  c.data.synthetic.image_size = int(budget.synthetic_image_size)
  c.data.synthetic.short_side = int(budget.synthetic_short_side)
  c.data.synthetic.cache_dir = data_cache
  c.data.synthetic.variant = str(budget.variant)
  c.data.image_size = int(budget.image_size)
  c.data.sentence_sampling = "all"  # identical inputs for every method (ConVIRT: not one sentence)
  c.data.max_tokens = d.data.max_tokens
  c.data.max_sentences = d.data.max_sentences
  c.data.augment = d.data.augment
  c.data.num_workers = 0
  c.model.dtype = "float32"
  c.model.image.name = str(budget.image_tower)
  c.model.image.norm = "batch"
  c.model.text.weights = d.model.text.weights
  c.model.text.num_layers = int(budget.text_layers)
  c.model.text.global_pool = "mean_tokens"
  c.method.embed_dim = 64
  c.method.projection_hidden = 128
  words = int(c.data.max_tokens)  # every word of a report gets a slot
  if "max_words" in c.method:
    c.method.max_words = words
  for sub in ("mlip", "lrclr"):
    if sub in c.method and "max_words" in c.method[sub]:
      c.method[sub].max_words = words
  c.optim.lr = float(budget.lr)
  c.optim.weight_decay = d.optim.weight_decay
  c.optim.warmup_steps = min(int(budget.warmup_steps), max(int(budget.steps) - 1, 0))
  c.optim.freeze.text = bool(budget.freeze_text)
  if not budget.freeze_text:
    c.optim.freeze.text_embeddings = False
    c.optim.freeze.text_first_n_layers = 0
    c.optim.lr_mult.text = float(budget.text_lr_mult)
  if method == "gloria" and budget.gloria_exact:
    for o in c.method.objectives:
      if o.name == "gloria_local":
        o.exact = True
  if method == "local_mi" and str(c.method.get("text_feature", "")) == "sentence":
    # One sentence encoded alone needs random_sentence sampling; every method here reads the
    # whole report, so the sentence is pooled from the jointly encoded report (fallbacks()).
    c.method.text_feature = "sentence_in_report"
  if method == "lovt" and budget.lovt_cell_threshold > 0:
    for o in c.method.objectives:
      if o.name == "intra_local_nce" and o.side == "image":
        o.threshold = float(budget.lovt_cell_threshold)
        o.threshold_type = "absolute"
  c.train.batch_size = int(budget.batch_size)
  c.train.num_steps = int(budget.steps)
  c.train.log_every = max(1, int(budget.steps) // 10)
  c.train.eval_every = int(budget.steps)
  c.train.checkpoint_every = int(budget.steps)
  c.train.async_checkpoint = False
  c.train.keep_last = 1
  c.eval.batch_size = int(budget.batch_size)
  c.eval.max_examples = int(budget.eval_examples)
  set_in_loop_eval(c, False)
  if budget.text_cache and budget.freeze_text and method not in NO_TEXT_CACHE:
    c.model.text.cache_frozen_features = True
  return c


def set_lenses(c, budget: Budget) -> None:
  """The papers' frozen lenses, set on the evaluation's copy of the config only (never in the
  training loop): segmentation of
  the synthetic findings (empty mask = no finding, scored) and detection of their boxes."""
  fractions = tuple(float(f) for f in budget.lens_fractions)
  seg = c.eval.segmentation
  seg.enabled = True
  seg.head = "linear"
  seg.target = "any"
  seg.require_mask = False
  seg.fractions = fractions
  seg.num_seeds = 1
  seg.max_train = int(budget.lens_train_examples)
  seg.max_test = 0
  seg.num_sheet_examples = 0
  det = c.eval.detection
  det.enabled = True
  det.mode = "frozen"
  det.fractions = fractions
  det.seeds = 1
  det.max_train = int(budget.lens_train_examples)
  det.max_test = 0
  det.steps = min(int(det.steps), 200)


def fallbacks(method: str, budget: Budget) -> list[str]:
  """What the common small model changes in `method` relative to its own config (the header of
  comparison.md lists these for every method compared)."""
  if method == BASELINE:
    return ["no training: ConVIRT's model at initialisation"]
  own = METHOD_CONFIGS[method].get_config()
  c = method_config(method, budget, seed=0)
  out = []
  if str(own.model.image.name) != str(c.model.image.name):
    out.append(f"image tower {own.model.image.name} -> {c.model.image.name}")
  if str(own.data.get("sentence_sampling", "all")) != "all":
    out.append(f"text view {own.data.sentence_sampling} -> all (every method reads the whole "
               "report)")
  if str(own.model.text.global_pool) != "mean_tokens":
    out.append(f"text tower pooling {own.model.text.global_pool} -> mean_tokens")
  layers = "all" if int(own.model.text.get("num_layers", -1)) <= 0 else own.model.text.num_layers
  out.append(f"text tower {own.model.text.weights or 'random'} ({layers} layers) -> "
             f"{c.model.text.weights} first {c.model.text.num_layers} layers"
             + (", frozen" if c.optim.freeze.text else ", trained"))
  if str(own.model.image.get("name", "")).startswith("vit") and method in ("mgca", "mlip"):
    out.append("token weights: the image side has no [CLS] attention under a ResNet, so "
               "MGCA's patch weights fall back to uniform (as the authors' ResNet code does)")
  elif method in ("mgca", "mlip"):
    out.append("patch weights uniform (ResNet has no [CLS] attention, as in MGCA's ResNet code)")
  if (method == "local_mi" and str(own.method.get("text_feature", "")) == "sentence"
      and str(c.method.text_feature) == "sentence_in_report"):
    out.append("local MI's sentence feature: pooled from the jointly encoded whole report "
               "(text_feature='sentence_in_report') instead of one random sentence encoded "
               "alone, since every method reads the whole report")
  if method == "gloria" and budget.freeze_text:
    out.append("text tower frozen: GLoRIA has no text projection (as the authors' "
               "BertEncoder: emb_global / emb_local stay None), so nothing on its text side "
               "learns; the authors fine-tune BERT")
  if budget.text_cache and budget.freeze_text:
    out.append("frozen text features computed once per report in eval mode (no dropout; "
               "mmrl.train.text_feature_cache)" if method not in NO_TEXT_CACHE else
               "frozen text tower run every step (the feature cache refuses methods that call "
               "the text tower through the model)")
  if not budget.freeze_text and budget.text_lr_mult != 1.0:
    out.append(f"text tower learning rate lr x {budget.text_lr_mult:g}")
  if method == "gloria" and budget.gloria_exact:
    out.append("gloria_local in the authors' code form (softmax over words, then tau1 x it "
               "over regions; no 1/tau2) instead of the paper's form")
  if method == "lovt" and budget.lovt_cell_threshold > 0:
    out.append(f"image-side local NCE positives: within {budget.lovt_cell_threshold:g} grid "
               "cell(s) (absolute) instead of 0.5 of the grid diagonal (degenerate on small "
               "grids: most cells are positives)")
  out.append(f"embed_dim {own.method.embed_dim} -> {c.method.embed_dim}, projection_hidden "
             f"{own.method.projection_hidden} -> {c.method.projection_hidden}")
  return out


def set_in_loop_eval(c, enabled: bool) -> None:
  """Switches the training loop's own evaluators (either config schema) on or off."""
  for name in ("retrieval", "zero_shot", "linear_probe", "segmentation", "localisation"):
    if name not in c.eval:
      continue
    if isinstance(c.eval[name], bool):
      c.eval[name] = enabled if name == "retrieval" else c.eval[name]
    elif "enabled" in c.eval[name]:
      c.eval[name].enabled = enabled and name in ("retrieval", "zero_shot", "linear_probe")
