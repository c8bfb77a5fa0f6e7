"""StudyRecord <-> tf.train.Example bytes, following the record contract in record_spec.FEATURES.

Owns the mapping between the in-memory `StudyRecord` and the serialised features: every key of
`record_spec.FEATURES` is written (lists may be empty), and parsing checks each key's presence,
kind and count, raising `errors.CorruptRecordError` with the key and the reason. No TensorFlow;
`feature_spec_tf()` builds TensorFlow's parse spec lazily for users who read shards with tf.data.
"""
from __future__ import annotations

import numpy as np

from data_pipeline import errors
from data_pipeline import example_proto
from data_pipeline import record_spec
from data_pipeline.record_spec import Box, StudyRecord

FEATURES = record_spec.FEATURES


def _s(text: str) -> bytes:
  return text.encode("utf-8")


def serialize_record(rec: StudyRecord) -> bytes:
  """tf.train.Example bytes with exactly the keys of record_spec.FEATURES."""
  labels = [] if rec.labels is None else np.asarray(rec.labels, np.float32).reshape(-1)
  if len(rec.sentences) != len(rec.sentence_sections):
    raise ValueError(f"record {rec.image_id}: {len(rec.sentences)} sentences but "
                     f"{len(rec.sentence_sections)} sentence_sections; give one section each")
  if len(rec.mask_labels) != len(rec.masks_png):
    raise ValueError(f"record {rec.image_id}: {len(rec.mask_labels)} mask_labels but "
                     f"{len(rec.masks_png)} masks_png; give one label per mask")
  features = {
      "image/encoded": ("bytes", [rec.image_png]),
      "image/format": ("bytes", [b"png"]),
      "image/height": ("int64", [rec.height]),
      "image/width": ("int64", [rec.width]),
      "image/bit_depth": ("int64", [rec.bit_depth]),
      "image/original_height": ("int64", [rec.original_height]),
      "image/original_width": ("int64", [rec.original_width]),
      "image/id": ("bytes", [_s(rec.image_id)]),
      "image/view": ("bytes", [_s(rec.view)]),
      "image/source": ("bytes", [_s(rec.source)]),
      "study/id": ("bytes", [_s(rec.study_id)]),
      "patient/id": ("bytes", [_s(rec.patient_id)]),
      "split": ("bytes", [_s(rec.split)]),
      "report/text": ("bytes", [_s(rec.report_text)]),
      "report/findings": ("bytes", [_s(rec.findings)]),
      "report/impression": ("bytes", [_s(rec.impression)]),
      "report/sentences": ("bytes", [_s(s) for s in rec.sentences]),
      "report/sentence_section": ("bytes", [_s(s) for s in rec.sentence_sections]),
      "labels/values": ("float", labels),
      "boxes/label": ("bytes", [_s(b.label) for b in rec.boxes]),
      "boxes/xmin": ("float", [b.xmin for b in rec.boxes]),
      "boxes/ymin": ("float", [b.ymin for b in rec.boxes]),
      "boxes/xmax": ("float", [b.xmax for b in rec.boxes]),
      "boxes/ymax": ("float", [b.ymax for b in rec.boxes]),
      "masks/label": ("bytes", [_s(m) for m in rec.mask_labels]),
      "masks/encoded": ("bytes", list(rec.masks_png)),
  }
  assert features.keys() == FEATURES.keys(), "records.py is out of date with record_spec.FEATURES"
  return example_proto.encode_example(features)


def parse_record(data: bytes, *, item: str = "") -> StudyRecord:
  """Parses serialised record bytes; raises errors.CorruptRecordError(item, reason) when they are
  not a tf.train.Example or break the record contract (missing key, wrong kind or count)."""
  try:
    feats = example_proto.decode_example(data)
  except ValueError as e:
    raise errors.CorruptRecordError(item, f"not a tf.train.Example: {e}") from None

  def get(key: str) -> list:
    dtype, count, _ = FEATURES[key]
    if key not in feats:
      raise errors.CorruptRecordError(
          item, f"missing feature {key!r} (record spec v{record_spec.SPEC_VERSION}); "
          "re-convert the data set with this version of mmrl")
    kind, values = feats[key]
    if kind and kind != dtype:
      raise errors.CorruptRecordError(item, f"feature {key!r} is a {kind} list, expected {dtype}")
    if count == "scalar" and len(values) != 1:
      raise errors.CorruptRecordError(item, f"feature {key!r} has {len(values)} values, "
                                      "expected exactly 1")
    return values

  def text(key: str) -> str:
    try:
      return get(key)[0].decode("utf-8")
    except UnicodeDecodeError:
      raise errors.CorruptRecordError(item, f"feature {key!r} is not UTF-8 text") from None

  def texts(key: str) -> list[str]:
    try:
      return [v.decode("utf-8") for v in get(key)]
    except UnicodeDecodeError:
      raise errors.CorruptRecordError(item, f"feature {key!r} holds non-UTF-8 text") from None

  sentences = texts("report/sentences")
  sections = texts("report/sentence_section")
  if len(sentences) != len(sections):
    raise errors.CorruptRecordError(item, f"{len(sentences)} report/sentences but {len(sections)} "
                                    "report/sentence_section values")
  box_label = texts("boxes/label")
  coords = [get(k) for k in ("boxes/xmin", "boxes/ymin", "boxes/xmax", "boxes/ymax")]
  if any(len(c) != len(box_label) for c in coords):
    raise errors.CorruptRecordError(item, f"box lists differ in length: labels {len(box_label)}, "
                                    f"coordinates {[len(c) for c in coords]}")
  mask_labels = texts("masks/label")
  masks = get("masks/encoded")
  if len(mask_labels) != len(masks):
    raise errors.CorruptRecordError(item, f"{len(mask_labels)} masks/label but {len(masks)} "
                                    "masks/encoded values")
  labels = get("labels/values")
  bit_depth = get("image/bit_depth")[0]
  if bit_depth not in (8, 16):
    raise errors.CorruptRecordError(item, f"image/bit_depth is {bit_depth}, expected 8 or 16")
  fmt = get("image/format")[0]
  if fmt != b"png":
    raise errors.CorruptRecordError(item, f"image/format is {fmt!r}, expected b'png'")
  return StudyRecord(
      image_png=get("image/encoded")[0],
      height=get("image/height")[0],
      width=get("image/width")[0],
      bit_depth=bit_depth,
      original_height=get("image/original_height")[0],
      original_width=get("image/original_width")[0],
      image_id=text("image/id"),
      study_id=text("study/id"),
      patient_id=text("patient/id"),
      view=text("image/view"),
      source=text("image/source"),
      split=text("split"),
      report_text=text("report/text"),
      findings=text("report/findings"),
      impression=text("report/impression"),
      sentences=sentences,
      sentence_sections=sections,
      labels=np.asarray(labels, np.float32) if labels else None,
      boxes=[Box(lb, *c) for lb, *c in zip(box_label, *coords)],
      mask_labels=mask_labels,
      masks_png=list(masks),
  )


def records_equal(a: StudyRecord, b: StudyRecord) -> bool:
  """Field-wise equality of two records (labels compared with NaN == NaN; floats as float32)."""
  for f in ("image_png", "height", "width", "bit_depth", "original_height", "original_width",
            "image_id", "study_id", "patient_id", "view", "source", "split", "report_text",
            "findings", "impression", "sentences", "sentence_sections", "mask_labels",
            "masks_png"):
    if getattr(a, f) != getattr(b, f):
      return False
  la = np.zeros(0, np.float32) if a.labels is None else np.asarray(a.labels, np.float32)
  lb = np.zeros(0, np.float32) if b.labels is None else np.asarray(b.labels, np.float32)
  if la.shape != lb.shape or not np.array_equal(la, lb, equal_nan=True):
    return False
  if len(a.boxes) != len(b.boxes):
    return False
  for x, y in zip(a.boxes, b.boxes):
    cx = np.float32([x.xmin, x.ymin, x.xmax, x.ymax])
    cy = np.float32([y.xmin, y.ymin, y.xmax, y.ymax])
    if x.label != y.label or not np.array_equal(cx, cy):
      return False
  return True


def feature_spec_tf() -> dict:
  """TensorFlow's parse spec for `tf.io.parse_single_example` (imports TensorFlow here only).

  Scalars are `FixedLenFeature([], dtype)`, lists `VarLenFeature(dtype)` (SparseTensors).
  """
  import tensorflow as tf  # pytype: disable=import-error  # Optional: only for TF users.
  dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
  spec = {}
  for key, (dtype, count, _) in FEATURES.items():
    if count == "scalar":
      spec[key] = tf.io.FixedLenFeature([], dtypes[dtype])
    else:
      spec[key] = tf.io.VarLenFeature(dtypes[dtype])
  return spec
