"""The method comparison: same data, towers, budget and seeds for every method; then evaluation.

`run_comparison(methods, seeds, budget, output, results_dir)`:
  1. makes the synthetic data set once (`data.synthetic`, shared by every run through
     `data.dataset_dir`) and, when ../shared/data is found, converts the NIH ChestX-ray14 subset
     once (layout nih_cxr14, same image size);
  2. for every method and seed builds `method_config` (the method's own tiny heads, then one
     common size: resnet_small image tower, the first 2 layers of the pretrained MiniLM text tower,
     frozen, mean-token pooling, embed_dim 64, projection_hidden 128, the same steps / batch / lr /
     warm-up / seed for everyone), pretrains it with `mmrl.train.loop.train_and_evaluate` in
     `<output>/runs/<method>/seed_<k>` and evaluates the final checkpoint;
  3. evaluates a random-initialisation baseline per seed (ConVIRT's model, no training: random
     image tower and heads, the same frozen pretrained text tower);
  4. writes `<results_dir>/comparison.md` (mean +- std over seeds per metric per method, the
     command, date, machine, jax version, and an analysis written from the numbers),
     `comparison.json` (every metric of every run) and PNG plots, plus heat maps of seed 0.
A run whose `result.json` exists is not trained or evaluated again (the comparison resumes).

Global metrics come from `mmrl.evaluation.runner.EvalRunner` (retrieval, zero-shot, linear
probe) when that module exists, else from this package's retrieval evaluator and zero-shot
scoring; localisation from `mmrl.evaluation.localisation.LocalisationEvaluator`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import importlib
import json
import logging
import math
import multiprocessing
import os
import pathlib
import platform
import re
import resource
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from mmrl.evaluation import statistics as stats
from mmrl.machine_info import cpu_model

log = logging.getLogger(__name__)

ALL_METHODS = ("convirt", "gloria", "mgca", "lovt", "local_mi", "place", "mlip", "lrclr")
LOCAL_METHODS = tuple(m for m in ALL_METHODS if m != "convirt")
BASELINE = "random_init"
# Methods whose heads call the text tower again through the model (MLIP's knowledge encoder):
# the frozen-text feature cache refuses them, so they run the frozen tower every step.
NO_TEXT_CACHE = ("mlip",)
_SMALL_ARG = {"convirt": "smoke"}  # every other method config takes 'tiny'

# Headline metrics (regexes, in table order); every metric is in comparison.json.
LOCALISATION_METRICS = (
    r"^loc/synthetic/pointing$", r"^loc/synthetic/pointing_cell$",
    r"^loc/synthetic_templated/pointing$", r"^loc/synthetic_templated/pointing_cell$",
    r"^loc/synthetic_nolocation/pointing$", r"^loc/nih_templated/pointing$",
    r"^loc/nih_templated/pointing_cell$", r"^loc/nih_nolocation/pointing$")
GLOBAL_METRICS = (
    r"^retrieval/i2t_R@1$", r"^retrieval/i2t_R@10$", r"^retrieval/t2i_R@1$",
    r"^retrieval/t2i_R@10$", r"^zero_shot/mean_auc$", r"^linear_probe/.*macro_auroc$")
# The papers' own lenses (Budget.lenses): frozen linear segmentation and frozen detection of the
# synthetic findings, and the similarity-map (BioViL) read-out beside each method's own map.
LENS_METRICS = (
    r"^segmentation/linear/(10|100)pct/dice$", r"^segmentation/linear/(10|100)pct/dice_nonempty$",
    r"^detection/frozen/(10|100)pct/map$")
READOUT_METRICS = (
    r"^loc/(synthetic|synthetic_templated|nih_templated)/sim/pointing$",
    r"^loc/(synthetic|synthetic_templated|nih_templated)/sim/cnr$",
    r"^loc/(synthetic|synthetic_templated|nih_templated)/cnr$",
    r"^loc/.*_templated/sim/swap/drop$")
CHANCE_METRICS = (r"^loc/.*/gt_area$", r"^retrieval/chance_R@(1|10)$")


@dataclasses.dataclass(frozen=True)
class Budget:
  """The common size and training budget of every run."""
  steps: int = 80
  batch_size: int = 32
  image_size: int = 96
  patients: int = 600
  lr: float = 2e-3
  warmup_steps: int = 10
  eval_examples: int = 256
  synthetic_image_size: int = 256   # DICOM pixel-array size of the synthetic data set
  synthetic_short_side: int = 96    # stored size after conversion
  nih_items: int = 0                # convert only the first N NIH images (0 = all 902)
  nih_splits: tuple[str, ...] = ("validate", "test")
  image_tower: str = "resnet_small"  # resnet_small (stride 32) | resnet_small_s16 (stride 16)
  variant: str = "realistic"         # synthetic finding sizes: realistic | calibrated
  text_layers: int = 2               # first N layers of the pretrained MiniLM text tower
  freeze_text: bool = True           # freeze the text tower (False: it trains with the rest)
  text_lr_mult: float = 1.0          # the text tower's learning rate = lr x this (when trained)
  gloria_exact: bool = False         # GLoRIA's local attention in its code's form (softmax over
                                     # words, then over regions) instead of the paper's
  lovt_cell_threshold: float = 0.0   # > 0: LoVT image-side positives within this many grid
                                     # cells (absolute) instead of 0.5 of the grid diagonal
  lenses: bool = False               # also score the papers' frozen lenses: linear segmentation
                                     # (LoVT: 1x1 conv on the frozen grid, Dice over the whole
                                     # test set) and YOLOv3 detection (mAP) of the synthetic
                                     # findings at each of lens_fractions of the labels
  lens_fractions: tuple[str, ...] = ("0.1", "1.0")
  lens_train_examples: int = 512     # training images of the frozen heads
  text_cache: bool = False           # frozen text tower: features computed once per report


def budget_with(budget: Budget, assignments: Sequence[str]) -> Budget:
  """`budget` with fields set from 'name=value' strings (typed as the field's default)."""
  fields = {f.name: f for f in dataclasses.fields(Budget)}
  changes: dict[str, Any] = {}
  for item in assignments:
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or name not in fields:
      raise ValueError(f"--budget item {item!r}: expected name=value with name one of "
                       f"{', '.join(sorted(fields))}")
    default = getattr(Budget(), name)
    if isinstance(default, bool):
      if text.strip().lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"--budget {name}={text!r}: expected true or false")
      changes[name] = text.strip().lower() in ("true", "1")
    elif isinstance(default, tuple):
      changes[name] = tuple(x for x in text.split("+") if x)
    else:
      try:
        changes[name] = type(default)(text)
      except ValueError as e:
        raise ValueError(f"--budget {name}={text!r}: expected a {type(default).__name__}") from e
  return dataclasses.replace(budget, **changes)


# Named budgets of `python -m experiments.compare --preset=...` (docs/localisation.md).
PRESETS: dict[str, Budget] = {
    "default": Budget(),
    # The localisation benchmark: calibrated finding sizes, 128 px, a stride-16 tower (8 x 8
    # grid, grid oracle >= 0.8), LoVT positives within one cell, GLoRIA's local term in its
    # code's form (in the paper's form it stayed at chance). The text tower: all 6 pretrained
    # MiniLM layers, frozen, its features computed once per report (3-4x cheaper steps than the
    # 2-layer tower trained at lr x 0.025 of the previous preset; docs/localisation.md), so that
    # every method trains 2,000 steps; scored also through the papers' frozen lenses.
    "localisation": Budget(steps=2000, batch_size=16, image_size=128, patients=600, lr=2e-3,
                           warmup_steps=100, eval_examples=128, synthetic_image_size=256,
                           synthetic_short_side=128, image_tower="resnet_small_s16",
                           variant="calibrated", text_layers=6, freeze_text=True,
                           text_cache=True, gloria_exact=True, lovt_cell_threshold=1.0,
                           lenses=True),
}
# The localisation preset compares these (ConVIRT, the four local methods the issue names).
PRESET_METHODS = {"default": ALL_METHODS,
                  "localisation": ("convirt", "gloria", "lovt", "local_mi", "place", "mlip", "lrclr",
                                 "mgca")}


def method_config(method: str, budget: Budget, *, seed: int, dataset_dir: str = "",
                  data_cache: str = ""):
  """`method`'s config at the comparison's common size (module docstring)."""
  from experiments.configs.demo import get_config as demo_config  # pylint: disable=g-import-not-at-top
  if method not in ALL_METHODS:
    raise ValueError(f"method {method!r} is not known; use one of {', '.join(ALL_METHODS)}")
  module = importlib.import_module(f"experiments.configs.{method}")
  c = module.get_config(_SMALL_ARG.get(method, "tiny"))
  d = demo_config()
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
  _set_in_loop_eval(c, False)
  if budget.text_cache and budget.freeze_text and method not in NO_TEXT_CACHE:
    c.model.text.cache_frozen_features = True
  return c


def _set_lenses(c, budget: Budget) -> None:
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
  from experiments.configs.demo import get_config as demo_config  # pylint: disable=g-import-not-at-top
  if method == BASELINE:
    return ["no training: ConVIRT's model at initialisation"]
  own = importlib.import_module(f"experiments.configs.{method}").get_config()
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
  del demo_config
  return out


def _set_in_loop_eval(c, enabled: bool) -> None:
  """Switches the training loop's own evaluators (either config schema) on or off."""
  for name in ("retrieval", "zero_shot", "linear_probe", "segmentation", "localisation"):
    if name not in c.eval:
      continue
    if isinstance(c.eval[name], bool):
      c.eval[name] = enabled if name == "retrieval" else c.eval[name]
    elif "enabled" in c.eval[name]:
      c.eval[name].enabled = enabled and name in ("retrieval", "zero_shot", "linear_probe")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def prepare_synthetic(budget: Budget, root: pathlib.Path) -> str:
  """The shared synthetic shards folder (generated and converted once under root)."""
  from data_pipeline import synthetic_dataset  # pylint: disable=g-import-not-at-top
  c = method_config("convirt", budget, seed=0)
  return str(synthetic_dataset.prepare_synthetic_dataset(c.data.synthetic, root, progress=False))


def prepare_nih(shared_dir: str, root: pathlib.Path, short_side: int, max_items: int = 0) -> str:
  """NIH ChestX-ray14 shards converted once under root ('' when shared_dir is '' or missing)."""
  if not shared_dir or not (pathlib.Path(shared_dir) / "nih_cxr14").is_dir():
    return ""
  from data_pipeline import convert as convert_lib  # pylint: disable=g-import-not-at-top
  out = root / f"nih_cxr14_{short_side}_{max_items or 'all'}"
  if not (out / "dataset_info.json").exists():
    dataset = convert_lib.load_layout("nih_cxr14", shared_dir)
    convert_lib.convert(dataset, out, convert_lib.ConvertOptions(
        short_side=int(short_side), bit_depth=8, max_items=int(max_items), progress=False))
  return str(out)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def _global_metrics(config, state, mesh, shardings, budget: Optional[Budget] = None
                    ) -> dict[str, float]:
  """Retrieval, zero-shot and linear probe through the runner (+ the frozen segmentation and
  detection lenses when budget.lenses), or the fallbacks."""
  try:
    runner_lib = importlib.import_module("mmrl.evaluation.runner")
  except ModuleNotFoundError as e:
    if e.name != "mmrl.evaluation.runner":
      raise
    runner_lib = None
  if runner_lib is not None:
    import ml_collections  # pylint: disable=g-import-not-at-top
    c = ml_collections.ConfigDict(config.to_dict())
    _set_in_loop_eval(c, True)
    if budget is not None and budget.lenses:
      _set_lenses(c, budget)
    names = [n for n in ("retrieval", "zero_shot", "linear_probe")
             if n in c.eval and not isinstance(c.eval[n], bool)]
    names += [n for n in ("segmentation", "detection") if c.eval[n].enabled]
    scalars, _ = runner_lib.EvalRunner(c, mesh, shardings)(state, names)
    return scalars
  return _fallback_global(config, state, mesh, shardings)


def _fallback_global(config, state, mesh, shardings) -> dict[str, float]:
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from data_pipeline import tokenization  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation import zero_shot  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.retrieval import retrieval_metrics  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import distributed  # pylint: disable=g-import-not-at-top
  from mmrl.train import step as step_lib  # pylint: disable=g-import-not-at-top
  eval_step = step_lib.make_eval_step(config, mesh, shardings)
  names = pipeline.dataset_info(config.data.dataset_dir)["label_names"]
  images, texts, labels, masks, studies = [], [], [], [], []
  for b in pipeline.make_eval_batches(config.data, split=config.data.eval_split,
                                      batch_size=int(config.eval.batch_size),
                                      max_examples=int(config.eval.max_examples)):
    out = jax.device_get(eval_step(state, distributed.global_batch_from_local(b, mesh)))
    ok = np.asarray(b["valid"], bool)
    images.append(np.asarray(out["image_embed"])[ok])
    texts.append(np.asarray(out["text_embed"])[ok])
    labels.append(np.asarray(b["labels"])[ok])
    masks.append(np.asarray(b["label_mask"], bool)[ok])
    if "study_id" in b:
      studies.append(np.asarray(b["study_id"])[ok])
  img, lab, lmask = np.concatenate(images), np.concatenate(labels), np.concatenate(masks)
  groups = np.concatenate(studies) if len(studies) == len(images) else None
  metrics = retrieval_metrics(img, np.concatenate(texts), labels=(lab == 1) & lmask,
                              groups=groups)
  tok = tokenization.ReportTokenizer(str(config.data.tokenizer))
  size = int(config.data.image_size)
  text_embed = jax.jit(lambda variables, batch: state.apply_fn(variables, batch,
                                                                train=False)["text_embed"])

  def apply_text(batch):
    batch = {k: np.asarray(v) for k, v in batch.items()}
    batch["image"] = np.zeros((len(batch["input_ids"]), size, size, 1), np.float32)
    return np.asarray(jax.device_get(text_embed(state.variables(), batch)))

  findings = [n for n in zero_shot.CHEXPERT_LABELS if n in names and n != "No Finding"]
  pos, neg = zero_shot.embed_prompts(apply_text, tok, zero_shot.build_prompts(findings),
                                     max_tokens=int(config.data.max_tokens),
                                     max_sentences=int(config.data.max_sentences))
  scores = zero_shot.zero_shot_scores(img, pos, neg)
  cols = [names.index(f) for f in findings]
  known = lmask[:, cols] & (lab[:, cols] != -1)  # uncertain labels are left out
  metrics.update(zero_shot.zero_shot_auc(scores, lab[:, cols] == 1, label_mask=known,
                                         findings=findings, prefix="zero_shot"))
  return metrics


def evaluate_state(config, state, mesh, shardings, *, nih_dir: str, budget: Budget,
                   heatmap_dir: Optional[pathlib.Path]) -> dict[str, float]:
  """Global + localisation metrics of one state (heat maps written when heatmap_dir is set)."""
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation import heatmaps  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.localisation import LocalisationEvaluator  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  metrics = dict(_global_metrics(config, state, mesh, shardings, budget))
  t1 = time.time()
  loc = LocalisationEvaluator(
      config, mesh, shardings,
      label_names=pipeline.dataset_info(config.data.dataset_dir)["label_names"],
      nih_dataset_dir=nih_dir, nih_splits=budget.nih_splits,
      num_heatmaps=1 if heatmap_dir is not None else 0)

  def batches():
    return pipeline.make_eval_batches(config.data, split=config.data.eval_split,
                                      batch_size=int(config.eval.batch_size),
                                      max_examples=int(config.eval.max_examples))
  scalars, images = loc(state, batches)
  metrics.update(scalars)
  if heatmap_dir is not None and images:
    heatmaps.write_heatmap_pngs(heatmap_dir, images)
  metrics["time/global_eval_s"] = t1 - t0
  metrics["time/localisation_eval_s"] = time.time() - t1
  return metrics


def _cpu_s() -> float:
  """CPU seconds of this process so far (all threads, user + system): a cost that holds on a
  shared machine, where wall-clock time does not."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run_one(method: str, seed: int, budget: Budget, *, dataset_dir: str, nih_dir: str,
            workdir: pathlib.Path, heatmap_dir: Optional[pathlib.Path]) -> dict[str, Any]:
  """Pretrains (unless BASELINE) and evaluates one (method, seed); cached in result.json."""
  done = workdir / "result.json"
  if done.exists():
    return json.loads(done.read_text())
  import jax  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import loop  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  workdir.mkdir(parents=True, exist_ok=True)
  config = method_config("convirt" if method == BASELINE else method, budget, seed=seed,
                         dataset_dir=dataset_dir)
  t0, c0 = time.time(), _cpu_s()
  train_metrics: dict[str, Any] = {}
  if method != BASELINE:
    train_metrics = loop.train_and_evaluate(config, workdir)
  train_s, train_cpu_s = time.time() - t0, _cpu_s() - c0
  c1 = _cpu_s()
  mesh = mesh_lib.make_mesh(config.mesh)
  state, shardings = state_lib.create_train_state(config, jax.random.key(config.seed), mesh)
  step = 0
  if method != BASELINE:
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
    restored = ckpt.restore(state, with_data_iter=False)
    state, step = restored.state, restored.step
    ckpt.close()
  metrics = evaluate_state(config, state, mesh, shardings, nih_dir=nih_dir, budget=budget,
                           heatmap_dir=heatmap_dir)
  metrics["time/train_s"] = train_s
  metrics["time/train_cpu_s"] = train_cpu_s
  metrics["time/eval_cpu_s"] = _cpu_s() - c1
  if "loss" in train_metrics:
    metrics["train/final_loss"] = float(train_metrics["loss"])
  result = {"method": method, "seed": seed, "step": int(step), "metrics": metrics}
  done.write_text(json.dumps(result, indent=1, default=float))
  return result


# ---------------------------------------------------------------------------------------------
# Summary, table, analysis, plots
# ---------------------------------------------------------------------------------------------


def summarise(results: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
  """method -> metric -> `statistics.describe` over seeds as a dict (mean, sample std with
  ddof 1, n, 95 % t-interval ci_low / ci_high), NaNs left out; plus 'by_seed' {seed: value}
  for the paired tests."""
  by: dict[str, dict[str, dict[int, float]]] = {}
  for r in results:
    for k, v in r["metrics"].items():
      if isinstance(v, (int, float)):
        by.setdefault(r["method"], {}).setdefault(k, {})[int(r.get("seed", 0))] = float(v)
  out = {}
  for method, metrics in by.items():
    out[method] = {}
    for k, vals in metrics.items():
      d = stats.describe(list(vals.values()))
      if d.n:
        out[method][k] = {**d.as_dict(), "by_seed": {str(s): v for s, v in vals.items()
                                                     if not math.isnan(v)}}
  return out


def _select(summary, patterns) -> list[str]:
  keys = sorted({k for m in summary.values() for k in m})
  return [k for p in patterns for k in keys if re.search(p, k)]


def _cell(summary, method, key, digits=3) -> str:
  v = summary.get(method, {}).get(key)
  if v is None:
    return "–"
  if v["n"] < 2 or v["std"] is None or math.isnan(v["std"]):
    return f"{v['mean']:.{digits}f} (n={v['n']})"
  return (f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f} "
          f"[{v['ci_low']:.{digits}f}, {v['ci_high']:.{digits}f}]")


def _table(summary, methods, keys) -> list[str]:
  lines = ["| method | " + " | ".join(f"`{k}`" for k in keys) + " |",
           "|---|" + "---|" * len(keys)]
  for m in methods:
    if m in summary:
      lines.append(f"| {m} | " + " | ".join(_cell(summary, m, k) for k in keys) + " |")
  return lines


# Model-free rows of the localisation table: (row name, metric suffix replacing '/pointing').
REFERENCE_ROWS = (("grid oracle", "grid_oracle/pointing"), ("best fixed cell", "best_fixed_cell/pointing"),
                  ("random map", "random_map/pointing"))


def _reference_table(summary, sets: Sequence[str]) -> list[str]:
  """The grid oracle, best-fixed-cell and random-map pointing (pixel and cell level) of each
  localisation set, read from the random_init runs (they depend only on the boxes and the
  grid, the same for every method)."""
  src = summary.get(BASELINE) or next(iter(summary.values()), {})
  head = ["| reference | " + " | ".join(f"`loc/{x}/pointing`" for x in sets)
          + " | " + " | ".join(f"`loc/{x}/pointing_cell`" for x in sets) + " |",
          "|---|" + "---|" * (2 * len(sets))]
  for name, suffix in REFERENCE_ROWS:
    px = [src.get(f"loc/{x}/{suffix}") for x in sets]
    cell_suffix = suffix.replace("/pointing", "/pointing_cell")
    cl = [src.get(f"loc/{x}/{cell_suffix}") if "oracle" not in suffix else None for x in sets]
    fmt = lambda v: "–" if v is None else f"{v['mean']:.3f}"
    head.append(f"| {name} | " + " | ".join(fmt(v) for v in px) + " | "
                + " | ".join(fmt(v) if "oracle" not in suffix else "1.000" for v in cl) + " |")
  return head


def paired(summary, a: str, b: str, key: str) -> Optional[stats.PairedTest]:
  """The paired t-test of method a vs b on `key` over the seeds both have (None if missing)."""
  va, vb = summary.get(a, {}).get(key), summary.get(b, {}).get(key)
  if va is None or vb is None:
    return None
  seeds = sorted(set(va["by_seed"]) & set(vb["by_seed"]), key=int)
  if not seeds:
    return None
  return stats.paired_t_test([va["by_seed"][s] for s in seeds],
                             [vb["by_seed"][s] for s in seeds])


def _verdict(test: Optional[stats.PairedTest], what: str) -> str:
  if test is None:
    return f"{what}: not measured"
  return stats.format_test(test, name=what)


def analysis(summary) -> list[str]:
  """Plain sentences answering 'do local methods localise better than ConVIRT, and at what cost
  in global metrics?', written from the numbers. A difference is called better / worse only when
  the paired t-test over seeds gives p < 0.05 (`mmrl.evaluation.statistics`); otherwise it is
  'not distinguishable with N seeds'."""
  lines = []
  loc_keys = [k for k in ("loc/synthetic/pointing", "loc/synthetic_templated/pointing",
                          "loc/nih_templated/pointing")
              if any(k in s for s in summary.values())]
  glob_keys = [k for k in ("retrieval/i2t_R@1", "zero_shot/mean_auc")
               if any(k in s for s in summary.values())]
  glob_keys += _select(summary, (r"^linear_probe/.*macro_auroc$",))[:1]
  lens_keys = _select(summary, LENS_METRICS) + [
      k for k in ("loc/synthetic/sim/pointing", "loc/synthetic_templated/sim/pointing",
                  "loc/nih_templated/sim/pointing", "loc/synthetic/cnr",
                  "loc/synthetic/sim/cnr") if any(k in s for s in summary.values())]
  if "convirt" not in summary:
    return ["ConVIRT was not run, so the question cannot be answered from this table."]
  seeds = min((v["n"] for m in summary.values() for v in m.values()), default=0)
  if seeds < 2:
    lines.append("- Only one seed per method: differences are listed, none can be called "
                 "(run with --seeds >= 2; 3 or more for a paired test with any power).")
  better = {k: [] for k in loc_keys}
  for m in [m for m in LOCAL_METHODS if m in summary]:
    parts = [_verdict(paired(summary, m, "convirt", k), f"`{k}`") for k in loc_keys + glob_keys]
    lines.append(f"- **{m} vs ConVIRT**: " + "; ".join(parts) + ".")
    if lens_keys:
      parts = [_verdict(paired(summary, m, "convirt", k), f"`{k}`") for k in lens_keys]
      lines.append(f"  - papers' lenses and the similarity read-out: " + "; ".join(parts) + ".")
    for k in loc_keys:
      t = paired(summary, m, "convirt", k)
      if t is not None and stats.verdict(t) == "better":
        better[k].append(m)
  for k in loc_keys:
    conv = summary["convirt"].get(k)
    ref = summary.get(BASELINE) or summary["convirt"]
    oracle = ref.get(k.replace("/pointing", "/grid_oracle/pointing"))
    rnd_map = ref.get(k.replace("/pointing", "/random_map/pointing"))
    best = ref.get(k.replace("/pointing", "/best_fixed_cell/pointing"))
    rnd = summary.get(BASELINE, {}).get(k)
    ctx = []
    if conv is not None:
      ctx.append(f"ConVIRT {conv['mean']:.3f}")
    if rnd is not None:
      ctx.append(f"random init {rnd['mean']:.3f}")
    if rnd_map is not None:
      ctx.append(f"random map {rnd_map['mean']:.3f}")
    if best is not None:
      ctx.append(f"best fixed cell {best['mean']:.3f}")
    if oracle is not None:
      ctx.append(f"grid oracle {oracle['mean']:.3f}")
    n_local = len([m for m in LOCAL_METHODS if m in summary])
    line = (f"- On `{k}` ({', '.join(ctx)}), {len(better[k])} of {n_local} local methods "
            f"localise better than ConVIRT by the paired t-test (p < 0.05)"
            + (f": {', '.join(better[k])}." if better[k] else "."))
    if oracle is not None and oracle["mean"] > 0:
      half = [m for m in LOCAL_METHODS if m in summary and k in summary[m]
              and summary[m][k]["mean"] >= 0.5 * oracle["mean"]]
      line += (f" Reaching >= 50 % of the grid oracle ({0.5 * oracle['mean']:.3f}): "
               f"{', '.join(half) if half else 'none'}.")
    lines.append(line)
  for k in glob_keys:
    worse = [m for m in LOCAL_METHODS if m in summary
             and (t := paired(summary, m, "convirt", k)) is not None
             and stats.verdict(t) == "worse"]
    lines.append(f"- Global cost on `{k}`: worse than ConVIRT by the paired t-test: "
                 f"{', '.join(worse) if worse else 'none'}.")
  return lines


def plots(summary, methods: Sequence[str], out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Bar charts (localisation, global; mean with std error bars) and a localisation-vs-global
  scatter; returns the PNG paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  methods = [m for m in methods if m in summary]
  paths = []
  for name, patterns in (("localisation", LOCALISATION_METRICS), ("global", GLOBAL_METRICS)):
    keys = _select(summary, patterns)
    if not keys:
      continue
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(methods) * max(1, len(keys)) / 2), 4))
    width = 0.8 / len(keys)
    x = np.arange(len(methods))
    for i, k in enumerate(keys):
      mean = [summary[m].get(k, {}).get("mean", np.nan) for m in methods]
      std = np.nan_to_num([summary[m].get(k, {}).get("std", 0.0) for m in methods])
      ax.bar(x + i * width, mean, width, yerr=std, capsize=2, label=k)
    ax.set_xticks(x + 0.4 - width / 2, methods, rotation=30)
    ax.set_ylabel("mean ± std over seeds")
    ax.set_title(f"{name} metrics")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"comparison_{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  loc_key = next(iter(_select(summary, (r"^loc/synthetic/pointing$",))), None)
  glob_key = next(iter(_select(summary, (r"^retrieval/i2t_R@1$", r"^zero_shot/mean_auc$"))), None)
  if loc_key and glob_key:
    fig, ax = plt.subplots(figsize=(5, 4))
    for m in methods:
      a, b = summary[m].get(glob_key), summary[m].get(loc_key)
      if a and b:
        ax.errorbar(a["mean"], b["mean"], xerr=np.nan_to_num(a["std"]),
                    yerr=np.nan_to_num(b["std"]), fmt="o", capsize=2)
        ax.annotate(m, (a["mean"], b["mean"]), fontsize=8)
    ax.set_xlabel(glob_key)
    ax.set_ylabel(loc_key)
    ax.set_title("localisation vs global")
    fig.tight_layout()
    path = out_dir / "comparison_tradeoff.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths




def markdown(summary, methods: Sequence[str], meta: dict) -> str:
  """The comparison.md text."""
  from mmrl.evaluation.alignment_maps import map_source  # pylint: disable=g-import-not-at-top
  rows = [m for m in list(methods) + [BASELINE] if m in summary]
  lines = [
      "# Method comparison: localisation vs global metrics", "",
      f"- **Command:** `{meta['command']}`",
      f"- **Date:** {meta['start']} → {meta['end']} (UTC); wall {meta['wall_s'] / 60:.1f} min",
      f"- **Machine:** {meta['nproc']} CPU cores, {meta['cpu']}; load average at start "
      f"{meta['load_start']}, at end {meta['load_end']}; jax {meta['jax']}, "
      f"Python {platform.python_version()}",
      f"- **Budget (every method):** {meta['budget']}; seeds {meta['seeds']}",
      f"- **Common model:** {meta['budget'].get('image_tower', 'resnet_small')} image tower at "
      f"{meta['budget'].get('image_size')} px, first {meta['budget'].get('text_layers', 2)} "
      f"layers of the pretrained MiniLM text tower "
      f"({'frozen' if meta['budget'].get('freeze_text', True) else 'trained'}, mean-token "
      "pooling), each method's own heads at embed_dim 64; synthetic data "
      f"({meta['budget'].get('variant', 'realistic')} finding sizes) made once and shared by every "
      "run; `random_init` = ConVIRT's model without training.",
      f"- **NIH ChestX-ray14:** {meta['nih']}",
      *([f"- **NOT RUN / NOT FINISHED (no result, not in any row):** "
         f"{', '.join(meta['missing'])}"] if meta.get("missing") else []),
      "- **Templated sentences:** the `synthetic_templated` and `nih_templated` localisation "
      "rows score sentences WE WROTE from each box's label and position (e.g. \"There is a "
      "nodule in the right upper zone.\"), not radiologist text; NIH ChestX-ray14 has no "
      "reports. `synthetic` scores the synthetic reports' own sentences that name a boxed "
      "finding (docs/localisation.md).",
      "- **Statistics** (`mmrl/evaluation/statistics.py`): each cell is mean ± sample std "
      "(ddof 1) over seeds [95 % Student-t interval of the mean]; a method is called better or "
      "worse than ConVIRT only when the two-sided paired t-test over seeds gives p < 0.05, "
      "otherwise 'not distinguishable with N seeds'.",
      "- **Identical inputs:** every method reads the whole report (`data.sentence_sampling="
      "all`; ConVIRT's own config samples one sentence) and the same images, augmentation, "
      "steps, batch, learning rate and seeds.",
      "- **What the common small model changes in each method:**"]
  for m in [m for m in list(methods) + [BASELINE] if m in summary]:
    try:
      changes = fallbacks(m, meta["budget_obj"]) if "budget_obj" in meta else []
    except Exception as e:  # pylint: disable=broad-except
      changes = [f"(could not list: {e})"]
    lines.append(f"  - {m}: " + ("; ".join(changes) if changes else "none"))
  lines += [
      "- **Chance and ceiling:** `random map` is the exact expected pointing of a map of i.i.d. "
      "random cells on the same grid, `best fixed cell` always points at the one cell best on "
      "these very boxes (a location prior that ignores image and sentence), `grid oracle` "
      "scores each grid cell by its overlap with the box (the best a map on this grid can do). "
      "`pointing_cell` counts a hit when the map's maximum cell contains any box pixel. "
      "`gt_area` (mean box area) is not the chance level of a coarse map.",
      "- **Swap test:** `<set>_templated/swap/drop` = pointing with the true sentence minus "
      "pointing with 'left' and 'right' swapped (same box); `swap/moved_cell` = fraction of "
      "sentences whose maximum moves to another cell. A map that reads the side words drops.",
      "- **Location-free templates:** `<set>_nolocation` scores \"There is a nodule.\" (no side, "
      "no zone) on the same boxes: grounding the finding alone.", "",
      "## Localisation", ""]
  lines += _table(summary, rows, _select(summary, LOCALISATION_METRICS))
  loc_sets = [x for x in ("synthetic", "synthetic_templated", "synthetic_nolocation",
                          "nih_templated", "nih_nolocation")
              if any(f"loc/{x}/pointing" in v for v in summary.values())]
  lines += ["", "### Model-free references (same boxes, same grid)", ""]
  lines += _reference_table(summary, loc_sets)
  lines += ["", "### Swap test (left <-> right in the templated sentences)", ""]
  lines += _table(summary, rows, _select(summary, (r"^loc/.*/swap/(drop|moved_cell)$",)))
  if _select(summary, READOUT_METRICS):
    lines += ["", "### Similarity maps (BioViL's read-out: cosine of the projected region and "
              "sentence embeddings) and CNR", ""]
    lines += _table(summary, rows, _select(summary, READOUT_METRICS))
  if _select(summary, LENS_METRICS):
    lines += ["", "## The papers' lenses: frozen linear segmentation (Dice over the whole test "
              "set / over the images with a finding) and frozen YOLOv3 detection (mAP), at 10 % "
              "and 100 % of the labels", ""]
    lines += _table(summary, rows, _select(summary, LENS_METRICS))
  lines += ["", "## Global metrics", ""]
  lines += _table(summary, rows, _select(summary, GLOBAL_METRICS))
  lines += ["", "## Chance levels", ""]
  lines += _table(summary, rows[:1], _select(summary, CHANCE_METRICS))
  lines += ["", "## Do the local methods localise better than ConVIRT, and at what cost?", "",
            "Written from the numbers above (paired t-test over seeds, two-sided, p < 0.05; "
            "the interval is the 95 % t-interval of the per-seed difference):", ""]
  lines += analysis(summary)
  lines += ["", "## Where each method's maps come from", ""]
  lines += [f"- {m}: {map_source(m)}" for m in methods]
  lines += ["", "## Cost", ""]
  lines += _table(summary, rows, _select(summary, (r"^time/.*$", r"^train/final_loss$")))
  lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in meta.get("plots", [])), ""]
  return "\n".join(lines)


def _run_seed(runs: Sequence[str], seed: int, budget: Budget, dataset_dir: str, nih_dir: str,
              output: str, heat_root: str) -> None:
  """A worker process of run_comparison(jobs > 1): every run of one seed, in order."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # Grain reads absl flags; a spawned worker has not parsed them
    flags.FLAGS.mark_as_parsed()
  for method in runs:
    run_one(method, seed, budget, dataset_dir=dataset_dir, nih_dir=nih_dir,
            workdir=pathlib.Path(output) / "runs" / method / f"seed_{seed}",
            heatmap_dir=pathlib.Path(heat_root) / "heatmaps" / method if heat_root else None)


def run_comparison(methods: Sequence[str], seeds: Sequence[int], budget: Budget, *,
                   output: str | pathlib.Path, results_dir: str | pathlib.Path,
                   shared_data: str = "", command: str = "", data_root: str = "",
                   progress: Callable[[str], None] = print, only_existing: bool = False,
                   jobs: int = 1) -> dict:
  """Runs everything (module docstring); returns {'summary', 'results', 'meta'}.

  only_existing=True trains and evaluates nothing: it summarises the runs under `output` that
  have a result.json (e.g. runs made by several processes side by side) and lists the missing
  (method, seed) pairs in the table's header. jobs > 1 runs the seeds in that many worker
  processes side by side (the same run_one per (method, seed); results identical to jobs=1)."""
  import jax  # pylint: disable=g-import-not-at-top
  unknown = [m for m in methods if m not in ALL_METHODS]
  if unknown:
    raise ValueError(f"--methods: unknown {unknown}; known: {', '.join(ALL_METHODS)}")
  output, results_dir = pathlib.Path(output).absolute(), pathlib.Path(results_dir).absolute()
  results_dir.mkdir(parents=True, exist_ok=True)
  t_start = time.time()
  start = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
  load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  root = pathlib.Path(data_root) if data_root else output / "data"
  progress(f"data: synthetic ({budget.patients} patients) under {root}")
  dataset_dir = prepare_synthetic(budget, root)
  nih_dir = prepare_nih(shared_data, root, budget.image_size, budget.nih_items)
  results, missing = [], []
  runs = list(methods) + [BASELINE]
  if jobs > 1 and not only_existing:
    # One worker process per seed (spawned: a forked JAX runtime is not safe). Each worker
    # trains and evaluates its seed's runs in order and caches them in result.json, so the
    # loop below only reads them back.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(int(jobs), mp_context=ctx) as pool:
      futures = {pool.submit(_run_seed, runs, int(seed), budget, dataset_dir, nih_dir,
                             str(output), str(results_dir) if seed == seeds[0] else ""): seed
                 for seed in seeds}
      for f in concurrent.futures.as_completed(futures):
        f.result()
        progress(f"seed {futures[f]}: done ({time.time() - t_start:.0f}s since start)")
  for seed in seeds:
    for method in runs:
      t0 = time.time()
      if only_existing and not (output / "runs" / method / f"seed_{seed}" /
                                "result.json").exists():
        missing.append(f"{method} seed {seed}")
        continue
      heat = results_dir / "heatmaps" / method if seed == seeds[0] else None
      r = run_one(method, int(seed), budget, dataset_dir=dataset_dir, nih_dir=nih_dir,
                  workdir=output / "runs" / method / f"seed_{seed}", heatmap_dir=heat)
      results.append(r)
      progress(f"{method} seed {seed}: {time.time() - t0:.0f}s; " + ", ".join(
          f"{k} {v:.3f}" for k, v in r["metrics"].items()
          if k in ("loc/synthetic/pointing", "loc/nih_templated/pointing", "retrieval/i2t_R@1")))
  summary = summarise(results)
  meta = {"command": command, "start": start,
          "end": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
          "wall_s": time.time() - t_start, "nproc": os.cpu_count(), "cpu": cpu_model(),
          "load_start": load_start,
          "load_end": ", ".join(f"{x:.2f}" for x in os.getloadavg()), "jax": jax.__version__,
          "budget": dataclasses.asdict(budget), "seeds": list(seeds), "methods": list(methods),
          "budget_obj": budget, "missing": missing,
          "nih": (f"converted from {shared_data} (splits {'+'.join(budget.nih_splits)})"
                  if nih_dir else
                  "not found (set --shared_data or MMRL_SHARED_DATA); NIH rows are missing")}
  meta["plots"] = [str(p.relative_to(results_dir)) for p in plots(summary, list(methods) +
                                                                   [BASELINE], results_dir)]
  (results_dir / "comparison.md").write_text(markdown(summary, methods, meta))
  meta.pop("budget_obj")
  (results_dir / "comparison.json").write_text(json.dumps(
      {"meta": meta, "summary": summary, "runs": results}, indent=1, default=float))
  return {"summary": summary, "results": results, "meta": meta}


def reanalyse(results_dir: str | pathlib.Path, *, command: str = "",
              note: str = "") -> dict:
  """Rewrites `results_dir`/comparison.md (and the summary in comparison.json) from the per-seed
  runs stored in comparison.json with this module's current statistics; trains nothing. The
  table's header keeps the original run's command, date, machine and budget and adds
  `command` (the re-analysis) and `note`."""
  results_dir = pathlib.Path(results_dir)
  doc = json.loads((results_dir / "comparison.json").read_text())
  meta, runs = doc["meta"], doc["runs"]
  summary = summarise(runs)
  meta = {**meta, "reanalysis": {"command": command, "note": note}}
  text = markdown(summary, meta["methods"], meta)
  # Header lines that describe how today's code runs a comparison, not how these runs were made.
  today_only = ("- **Identical inputs:**", "- **What the common small model changes",
                "- **Chance and ceiling:**", "- **Swap test:**", "- **Location-free templates:**")
  kept, skipping = [], False
  for line in text.split("\n"):
    if line.startswith("- **"):
      skipping = line.startswith(today_only)
    elif not line.startswith("  "):
      skipping = False
    if not skipping:
      kept.append(line)
  head, _, rest = "\n".join(kept).partition("\n\n")
  extra = [f"- **Re-analysed** with the current statistics (`{command}`): sample std (ddof 1), "
           "95 % t-intervals and paired t-tests over seeds; the runs themselves are unchanged."]
  if note:
    extra.append(f"- **Note:** {note}")
  (results_dir / "comparison.md").write_text(head + "\n\n" + "\n".join(extra) + "\n" + rest)
  (results_dir / "comparison.json").write_text(json.dumps(
      {"meta": meta, "summary": summary, "runs": runs}, indent=1, default=float))
  return {"summary": summary, "meta": meta}


__all__ = ["ALL_METHODS", "BASELINE", "Budget", "method_config", "run_comparison", "summarise",
           "analysis", "markdown", "plots", "evaluate_state", "run_one", "reanalyse"]
