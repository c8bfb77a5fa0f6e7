"""Record bytes -> one example of the batch contract (data_pipeline/batch_spec.py), fixed shapes.

Owns the per-record work of the Grain pipeline: parse the record, decode and view the image
(data_pipeline.augment), normalise it, tokenise the report (data_pipeline.tokenization), map
labels/boxes onto the data set's label vocabulary and hash the study/patient ids; for evaluation
with `with_masks`, the record's masks through the same view (`eval_masks`); and the
training-time report view (`config.data.sentence_sampling`, `sample_sentences`): 'all' sentences
(default), one 'random_sentence' (ConVIRT, METHODS.md §2.4 / §11.1 `sentence_select`) or a
'random_subset' (k ~ U{1..n} sentences without replacement, in report order). The choice is
drawn from the example's Grain rng after the image augmentation (so the image view is the same
in every mode), hence deterministic given config.seed and restored with the iterator state; the
chosen sentences are tokenised as the whole text, so shapes and masks are those of any report.
Evaluation always sees all sentences. Also owns the
bad-record policy (`config.data.on_bad_record`): a record that cannot be read, parsed or decoded
raises an `errors.InputError`; `ExampleLoader` logs it with its id and returns a `BadRecord`
marker under 'skip' (the pipeline filters and counts markers before batching) or re-raises
under 'fail'.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import numpy as np

from data_pipeline import augment
from data_pipeline import batch_spec
from data_pipeline import errors
from data_pipeline import records
from data_pipeline import tokenization

ON_BAD_RECORD = ("skip", "fail")
SENTENCE_SAMPLING = ("all", "random_sentence", "random_subset")


def sample_sentences(sentences: Sequence[str], mode: str,
                     rng: Optional[np.random.Generator]) -> list[str]:
  """The sentences a training step sees (module docstring); 'all' or no sentences: unchanged."""
  sentences = list(sentences)
  if mode == "all" or not sentences:
    return sentences
  if rng is None:
    raise ValueError(f"config.data.sentence_sampling={mode!r} needs the per-example rng")
  n = len(sentences)
  if mode == "random_sentence":
    return [sentences[int(rng.integers(n))]]
  if mode == "random_subset":
    k = int(rng.integers(1, n + 1))
    keep = np.sort(rng.choice(n, size=k, replace=False))
    return [sentences[i] for i in keep]
  raise ValueError(f"config.data.sentence_sampling={mode!r} is not one of {SENTENCE_SAMPLING}")


def check_on_bad_record(value: str) -> str:
  """Validates config.data.on_bad_record; returns it."""
  if value not in ON_BAD_RECORD:
    raise ValueError(f"config.data.on_bad_record={value!r} is not one of {ON_BAD_RECORD}; use "
                     "'skip' (count, log and drop bad records) or 'fail' (stop at the first)")
  return value


def stable_id_hash(text: str) -> int:
  """A stable, non-negative 31-bit hash of an id string (CRC-32; the same in every process)."""
  return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """Marker for a record that was skipped: its id, the error kind and the reason."""
  item: str
  kind: str
  reason: str


def is_bad(element: Any) -> bool:
  return isinstance(element, BadRecord)


def _plain(cfg: Any) -> Any:
  """ConfigDict / mapping -> plain dict (picklable, no locking semantics)."""
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  return dict(cfg)


class RecordTransform:
  """Turns record bytes into one example dict with the batch contract's per-example shapes.

  Args:
    data_cfg: config.data (image_size, max_tokens, max_sentences, max_boxes, mean, std, augment,
      tokenizer, lowercase).
    label_names: the data set's label vocabulary (mmrl_dataset_info.json label_names), K entries.
    train: random training view (needs an rng) or the deterministic evaluation view.
    box_label_names: the vocabulary `box_labels` index into (default `label_names`); e.g.
      `pipeline.box_label_vocabulary` for boxes whose label is a phrase (MS-CXR's
      '<category>: <phrase>'), so that the grounding evaluator can recover each box's string.
  """

  def __init__(self, data_cfg: Mapping[str, Any], label_names: Sequence[str], *, train: bool,
               box_label_names: Optional[Sequence[str]] = None):
    cfg = _plain(data_cfg)
    self.image_size = int(cfg["image_size"])
    self.max_tokens = int(cfg["max_tokens"])
    self.max_sentences = int(cfg["max_sentences"])
    self.max_boxes = int(cfg["max_boxes"])
    self.mean = float(cfg["mean"])
    self.std = float(cfg["std"])
    if self.std <= 0:
      raise ValueError(f"config.data.std={self.std} must be > 0")
    if self.max_tokens <= 0 or self.max_tokens % batch_spec.TOKEN_MULTIPLE:
      raise ValueError(f"config.data.max_tokens={self.max_tokens} must be a positive multiple of "
                       f"{batch_spec.TOKEN_MULTIPLE}; use e.g. 64, 128 or 256")
    for key in ("image_size", "max_sentences", "max_boxes"):
      if getattr(self, key) < 1:
        raise ValueError(f"config.data.{key}={getattr(self, key)} must be >= 1")
    self.augment = _plain(cfg.get("augment", {}))
    self.tokenizer_spec = str(cfg.get("tokenizer", ""))
    self.lowercase = bool(cfg.get("lowercase", True))
    self.sentence_sampling = str(cfg.get("sentence_sampling", "all"))
    if self.sentence_sampling not in SENTENCE_SAMPLING:
      raise ValueError(f"config.data.sentence_sampling={self.sentence_sampling!r} is not one of "
                       f"{SENTENCE_SAMPLING}; use 'all' (whole report), 'random_sentence' "
                       "(ConVIRT) or 'random_subset'")
    self.label_names = tuple(label_names)
    self._label_index = {n: i for i, n in enumerate(self.label_names)}
    self._box_label_index = (self._label_index if box_label_names is None else
                             {n: i for i, n in enumerate(box_label_names)})
    self.train = train
    self._tokenizer: Optional[tokenization.ReportTokenizer] = None
    self.with_masks = False  # set by `enable_masks` (evaluation only)
    self.max_masks = 0

  def enable_masks(self, max_masks: int) -> "RecordTransform":
    """Adds the optional mask keys (batch_spec.MASK_KEYS) to every example; evaluation only."""
    if self.train:
      raise ValueError("masks are an evaluation output; the training transform does not make them")
    if int(max_masks) < 1:
      raise ValueError(f"max_masks={max_masks} must be >= 1 (config.eval.segmentation.max_masks)")
    self.with_masks, self.max_masks = True, int(max_masks)
    return self

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_tokenizer"] = None  # Each process loads its own (lazily, on first use).
    return state

  @property
  def tokenizer(self) -> tokenization.ReportTokenizer:
    if self._tokenizer is None:
      self._tokenizer = tokenization.ReportTokenizer(self.tokenizer_spec, lowercase=self.lowercase)
    return self._tokenizer

  def __call__(self, data: bytes, rng: Optional[np.random.Generator], *, item: str = ""
               ) -> dict[str, np.ndarray]:
    """Raises errors.InputError (CorruptRecordError, BadImageError) for unusable records."""
    rec = records.parse_record(data, item=item)
    item = f"{rec.image_id} ({item})" if rec.image_id else item
    img = augment.decode_png(rec.image_png, item=item)
    box_arr = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in rec.boxes],
                       np.float32).reshape(-1, 4)
    if self.train:
      if rng is None:
        raise ValueError("the training transform needs a per-example rng (use random_map)")
      pixels, box_arr, keep = augment.train_view(img, box_arr, rng, self.image_size,
                                                 self.augment)
    else:
      pixels, box_arr, keep = augment.eval_view(img, box_arr, self.image_size)
    image = ((pixels - np.float32(self.mean)) * np.float32(1.0 / self.std))[..., None]

    sentences = rec.sentences
    if self.train:
      sentences = sample_sentences(sentences, self.sentence_sampling, rng)
    text = self.tokenizer.encode(sentences, self.max_tokens, self.max_sentences)
    present = np.zeros([self.max_sentences], bool)
    ids = text["token_to_sentence"]
    present[np.unique(ids[ids >= 0])] = True

    k = len(self.label_names)
    labels = np.zeros([k], np.float32)
    label_mask = np.zeros([k], bool)
    if rec.labels is not None and np.size(rec.labels):
      values = np.asarray(rec.labels, np.float32).reshape(-1)
      if values.size != k:
        raise errors.CorruptRecordError(
            item, f"{values.size} label values but mmrl_dataset_info.json has {k} label_names")
      label_mask = ~np.isnan(values)
      labels = np.where(label_mask, values, 0.0).astype(np.float32)

    nb = self.max_boxes
    boxes = np.zeros([nb, 4], np.float32)
    box_labels = np.full([nb], -1, np.int32)
    box_mask = np.zeros([nb], bool)
    kept = np.flatnonzero(keep)[:nb]
    boxes[:len(kept)] = box_arr[kept]
    box_labels[:len(kept)] = [self._box_label_index.get(rec.boxes[i].label, -1) for i in kept]
    box_mask[:len(kept)] = True

    out = {
        "image": image.astype(np.float32, copy=False),
        **text,
        "sentence_mask": present,
        "n_sentences": np.int32(present.sum()),
        "labels": labels,
        "label_mask": label_mask,
        "study_id": np.int32(stable_id_hash(rec.study_id)),
        "patient_id": np.int32(stable_id_hash(rec.patient_id)),
        "boxes": boxes,
        "box_labels": box_labels,
        "box_mask": box_mask,
        "valid": np.bool_(True),
    }
    if self.with_masks:
      out.update(eval_masks(rec, img.size, self.image_size, self.max_masks, self._label_index,
                            item=item))
    return out

  def padding_example(self) -> dict[str, np.ndarray]:
    """An all-padding example (valid=False) with the same shapes, for eval's last batch."""
    s, l, k, nb = self.image_size, self.max_tokens, len(self.label_names), self.max_boxes
    return {
        "image": np.zeros([s, s, 1], np.float32),
        "input_ids": np.zeros([l], np.int32),
        "attention_mask": np.zeros([l], np.int32),
        "token_to_sentence": np.full([l], -1, np.int32),
        "token_to_word": np.full([l], -1, np.int32),
        "sentence_mask": np.zeros([self.max_sentences], bool),
        "n_sentences": np.int32(0),
        "labels": np.zeros([k], np.float32),
        "label_mask": np.zeros([k], bool),
        "study_id": np.int32(0),
        "patient_id": np.int32(0),
        "boxes": np.zeros([nb, 4], np.float32),
        "box_labels": np.full([nb], -1, np.int32),
        "box_mask": np.zeros([nb], bool),
        "valid": np.bool_(False),
        **({"masks": np.zeros([self.max_masks, s, s], np.float32),
            "mask_labels": np.full([self.max_masks], -1, np.int32),
            "mask_present": np.zeros([self.max_masks], bool)} if self.with_masks else {}),
    }


def eval_masks(rec: records.StudyRecord, image_size_wh: tuple[int, int], size: int,
               max_masks: int, label_index: Mapping[str, int], *, item: str = ""
               ) -> dict[str, np.ndarray]:
  """The record's masks in the evaluation view's frame (augment.eval_view: pad to square, resize
  to size², bilinear, then >= half the mask's peak value), as batch_spec.MASK_KEYS for one example.

  Raises:
    errors.BadImageError: a mask PNG that does not decode or differs in size from the image.
  """
  masks = np.zeros([max_masks, size, size], np.float32)
  labels = np.full([max_masks], -1, np.int32)
  present = np.zeros([max_masks], bool)
  empty_boxes = np.zeros([0, 4], np.float32)
  for j, (name, png) in enumerate(zip(rec.mask_labels[:max_masks], rec.masks_png[:max_masks])):
    m = augment.decode_png(png, item=f"{item} mask {j} ({name})")
    if m.size != tuple(image_size_wh):
      raise errors.BadImageError(item, f"mask {j} ({name}) is {m.size[0]}x{m.size[1]} but the "
                                 f"image is {image_size_wh[0]}x{image_size_wh[1]}; masks/encoded "
                                 "must have the image's size (record_spec)")
    peak = float(np.max(augment.to_float01(m)))  # 1 for 0/255 PNGs; also accepts 0/1 PNGs
    view, _, _ = augment.eval_view(m, empty_boxes, size)
    if peak > 0:
      masks[j] = (view >= 0.5 * peak).astype(np.float32)
    labels[j] = label_index.get(name, -1)
    present[j] = True
  return {"masks": masks, "mask_labels": labels, "mask_present": present}


class ExampleLoader:
  """Reads a record from a source, transforms it and applies the bad-record policy.

  `load(record_number, rng)` returns the example dict, or a `BadRecord` under 'skip' (logged
  with the record's id); under 'fail' the `errors.InputError` propagates. Picklable.
  """

  def __init__(self, source, transform: RecordTransform, on_bad_record: str):
    self.source = source
    self.transform = transform
    self.on_bad_record = check_on_bad_record(on_bad_record)

  def load(self, record: int, rng: Optional[np.random.Generator] = None):
    record = int(record)
    try:
      item = self.source.item_name(record)
      return self.transform(self.source[record], rng, item=item)
    except errors.InputError as e:
      if self.on_bad_record == "fail":
        raise
      logging.warning("skipping bad record %s (%s): %s", e.item, e.kind, e.reason)
      return BadRecord(item=e.item, kind=e.kind, reason=e.reason)
