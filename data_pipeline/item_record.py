"""One Item -> one StudyRecord: decode, resize, PNG, report -> sentences, boxes normalised,
masks resized like the image.

Owns `ConvertOptions` (how to convert) and `convert_item`. Bad input raises
`errors.InputError` subclasses; an item whose view (known only after decoding) is not wanted
raises `ViewFiltered`. The driver that shards, parallelises and writes is data_pipeline.convert.
"""
from __future__ import annotations

import dataclasses
import io
import math
import pathlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from data_pipeline import errors
from data_pipeline import image_codec
from data_pipeline import image_io
from data_pipeline.converters.base import Item, error_entry
from data_pipeline.record_spec import Box, StudyRecord


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """How to convert. See docs/data_format.md."""
  short_side: int = 512         # images larger than this are resized (never upsampled)
  bit_depth: int = 8            # PNG bit depth: 8 or 16
  num_shards: int = 0           # shards per split (capped at the split's item count); 0 = auto
  workers: int = 1              # processes; each writes whole shards
  views: tuple[str, ...] = ()   # keep only these views (upper-case, e.g. ('PA', 'AP')); () = all
  max_items: int = 0            # keep the first N items (stable order); 0 = all
  require_report: Optional[bool] = None  # None = the layout's default
  progress: bool = True         # tqdm progress bar on stderr
  array_record: bool = False    # also an ArrayRecord copy of each shard (TFDS random access)

  def validate(self) -> None:
    if self.bit_depth not in (8, 16):
      raise ValueError(f"bit_depth={self.bit_depth} is not supported; use 8 or 16")
    if self.short_side <= 0:
      raise ValueError(f"short_side={self.short_side} must be a positive number of pixels")
    if self.num_shards < 0 or self.workers < 1 or self.max_items < 0:
      raise ValueError(f"num_shards={self.num_shards}, workers={self.workers}, "
                       f"max_items={self.max_items}: need num_shards >= 0 (0 = auto), "
                       "workers >= 1, max_items >= 0 (0 = all)")


def _report(item: Item, require_report: bool):
  """ParsedReport, or None when the item has no report and none is required."""
  from data_pipeline import reports  # pylint: disable=import-outside-toplevel
  if item.report_path:
    p = pathlib.Path(item.report_path)
    if not p.is_file():
      if not require_report:
        return None
      raise errors.MissingFileError(item.item_id, f"report file {str(p)!r} does not exist")
    return reports.parse_report(p.read_bytes(), item_id=item.item_id)
  if item.report_text is not None and str(item.report_text).strip():
    return reports.parse_report(item.report_text, item_id=item.item_id)
  has_sections = any(s is not None and str(s).strip() for s in (item.findings, item.impression))
  if has_sections:
    return reports.report_from_sections(item.findings, item.impression, item_id=item.item_id)
  if require_report:
    raise errors.ReportError(item.item_id, "no report: the report text / findings / impression "
                             "are missing or empty (use require_report=False for image-only "
                             "data sets)")
  return None


def _normalise_boxes(item: Item, frame: tuple[int, int], warnings: list[dict]) -> list[Box]:
  h, w = frame
  out = []
  for b in item.boxes:
    x0, x1 = sorted((float(b.xmin) / w, float(b.xmax) / w))
    y0, y1 = sorted((float(b.ymin) / h, float(b.ymax) / h))
    x0, x1, y0, y1 = (min(max(v, 0.0), 1.0) for v in (x0, x1, y0, y1))
    if not all(math.isfinite(v) for v in (x0, x1, y0, y1)) or x1 <= x0 or y1 <= y0:
      warnings.append(error_entry(item.item_id, "bad_box", f"box {b} lies outside the "
                                  f"{w}x{h} frame or is empty; dropped", item.image,
                                  skipped=False))
      continue
    out.append(Box(b.label, x0, y0, x1, y1))
  return out


def _mask_png(item: Item, label: str, path: str, size: tuple[int, int]) -> bytes:
  """Binary mask file -> 8-bit 0/255 PNG of `size` (width, height), nearest-neighbour."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise errors.MissingFileError(item.item_id, f"mask file {str(p)!r} (label {label!r}) does "
                                  "not exist")
  try:
    with Image.open(p) as pil:
      grey = np.asarray(pil.convert("L"))
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.BadImageError(item.item_id, f"cannot read mask file {str(p)!r}: "
                               f"{type(e).__name__}: {e}") from e
  binary = Image.fromarray(np.where(grey > 127, 255, 0).astype(np.uint8), mode="L")
  if binary.size != size:
    binary = binary.resize(size, resample=Image.Resampling.NEAREST)
  buf = io.BytesIO()
  binary.save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def _rle_mask_png(item: Item, rles: Sequence[str], frame: tuple[int, int],
                  size: tuple[int, int]) -> bytes:
  """SIIM RLE strings (data_pipeline.mask_rle) decoded in the source `frame` (height, width), OR-ed
  -> 8-bit 0/255 PNG of `size` (width, height), nearest-neighbour."""
  from data_pipeline import mask_rle  # pylint: disable=import-outside-toplevel
  return _binary_png(mask_rle.decode_union(rles, *frame, item=item.item_id), size)


def _shape_mask_png(shapes: Sequence[Sequence[float]], frame: tuple[int, int],
                    size: tuple[int, int]) -> bytes:
  """Polygons (data_pipeline.mask_shapes) filled in the source `frame` (height, width) -> 8-bit
  0/255 PNG of `size` (width, height), nearest-neighbour."""
  from data_pipeline import mask_shapes  # pylint: disable=import-outside-toplevel
  return _binary_png(mask_shapes.rasterise(shapes, *frame), size)


def _binary_png(mask: np.ndarray, size: tuple[int, int]) -> bytes:
  binary = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
  if binary.size != size:
    binary = binary.resize(size, resample=Image.Resampling.NEAREST)
  buf = io.BytesIO()
  binary.save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


class ViewFiltered(Exception):
  """The item's view (known only after decoding) is not among the requested views."""


def convert_item(item: Item, options: ConvertOptions, *, split: str,
                 require_report: bool = True) -> tuple[StudyRecord, list[dict]]:
  """Converts one Item; returns (record, warnings). Raises errors.InputError for bad input."""
  report = _report(item, require_report)  # First: cheap, and spares decoding a useless image.
  image, dicom_view = image_io.load_source(item.image, item_id=item.item_id)
  view = (item.view or dicom_view or "").strip().upper()
  if options.views and view not in options.views:
    raise ViewFiltered(view)
  original_h, original_w = image.shape
  resized = image_codec.resize_short_side(image, options.short_side)
  height, width = resized.shape
  warnings: list[dict] = []
  if report is not None and report.used_fallback:
    warnings.append(error_entry(item.item_id, "report_fallback", "no FINDINGS/IMPRESSION section; "
                                "used the last paragraphs as the report text",
                                item.report_path or item.image, skipped=False))
  boxes = _normalise_boxes(item, item.box_frame or (original_h, original_w), warnings)
  masks = [_mask_png(item, label, path, (width, height)) for label, path in item.masks]
  masks += [_rle_mask_png(item, rles, (original_h, original_w), (width, height))
            for _, rles in item.rle_masks]
  masks += [_shape_mask_png(shapes, (original_h, original_w), (width, height))
            for _, shapes in item.shape_masks]
  rec = StudyRecord(
      image_png=image_codec.encode_png(resized, options.bit_depth),
      height=height, width=width, bit_depth=options.bit_depth,
      original_height=original_h, original_width=original_w,
      image_id=item.item_id,
      study_id=item.study_id or item.item_id,
      patient_id=item.patient_id or item.item_id,
      view=view, source=item.source, split=split,
      report_text=report.text if report else "",
      findings=report.findings if report else "",
      impression=report.impression if report else "",
      sentences=list(report.sentences) if report else [],
      sentence_sections=list(report.sentence_sections) if report else [],
      labels=None if item.labels is None else np.asarray(item.labels, np.float32),
      boxes=boxes,
      mask_labels=[label for label, _ in item.masks + item.rle_masks + item.shape_masks],
      masks_png=masks)
  return rec, warnings
