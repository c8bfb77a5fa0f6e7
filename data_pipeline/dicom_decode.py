"""DICOM -> display-ready float image: owns reading, pixel decoding and the grey-level pipeline.

`decode_dicom` reads one DICOM instance (path or bytes) with pydicom and returns a float32 [H, W]
image in [0, 1] in which bright = dense, plus the few header fields the converters need. The grey
pipeline follows PS3.3 C.11 / C.7.6.3:

  stored values (BitsStored respected, signed if PixelRepresentation = 1)
  -> Modality LUT (RescaleSlope/Intercept or Modality LUT Sequence)
  -> VOI: VOI LUT Sequence, else WindowCenter/WindowWidth (first value of multi-valued windows,
     VOILUTFunction LINEAR / LINEAR_EXACT / SIGMOID), else robust 0.5-99.5 % percentile window
  -> MONOCHROME1 inversion (after windowing, so bright = dense).

Compressed transfer syntaxes go through pydicom's decoders (RLE built in; JPEG 2000 via Pillow or
pylibjpeg-openjpeg; JPEG Lossless via pylibjpeg-libjpeg; JPEG-LS via pyjpegls). Every failure is
re-raised as one of the named errors of `data_pipeline.errors`, carrying the item id or path.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import warnings
from typing import Any

import numpy as np
import pydicom
import pydicom.errors
from pydicom import pixels as dcm_pixels
from pydicom.dataelem import RawDataElement

from data_pipeline import errors
from data_pipeline import image_codec

# Robust window used when a file carries neither a VOI LUT nor a window.
PERCENTILE_WINDOW = (0.5, 99.5)
# Above this many pixels, percentiles are estimated on a strided subsample (speed; same result
# to well within one 8-bit grey level).
_PERCENTILE_MAX_PIXELS = 1 << 18

_TRUNCATION_WARNING = re.compile(r"(?i)end of file|truncat|fewer bytes|delimiter")

# Which package would decode a transfer syntax that pydicom has no decoder for at all.
_SYNTAX_HINTS = {
    "1.2.840.10008.1.2.4.100": "MPEG-2 video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.101": "MPEG-2 video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.102": "MPEG-4 video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.103": "MPEG-4 video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.104": "MPEG-4 video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.105": "MPEG-4 video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.106": "MPEG-4 video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.107": "HEVC video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.108": "HEVC video: no pydicom decoder; extract frames with ffmpeg",
    "1.2.840.10008.1.2.4.110": "JPEG XL: needs a newer pydicom (>= 3.1) with a JPEG XL plugin, "
                               "or GDCM / dcmtk to transcode",
    "1.2.840.10008.1.2.4.111": "JPEG XL: needs a newer pydicom (>= 3.1) with a JPEG XL plugin, "
                               "or GDCM / dcmtk to transcode",
    "1.2.840.10008.1.2.4.112": "JPEG XL: needs a newer pydicom (>= 3.1) with a JPEG XL plugin, "
                               "or GDCM / dcmtk to transcode",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression: needs a newer pydicom (>= 3.1)",
}
_UNKNOWN_SYNTAX_HINT = ("not a standard transfer syntax (private or made up): transcode the file "
                        "to a standard syntax with the vendor's tool, GDCM (gdcmconv --raw) or "
                        "dcmtk (dcmdjpeg / dcmconv)")


@dataclasses.dataclass
class DecodedDicom:
  """One decoded DICOM frame and the header fields the converters use."""
  image: np.ndarray  # float32 [H, W] in [0, 1], display-ready: bright = dense
  view: str  # ViewPosition ('' if absent), upper-case
  patient_id: str
  study_id: str  # StudyID if present, else StudyInstanceUID ('' if neither)
  sop_instance_uid: str
  photometric: str
  bits_stored: int
  transfer_syntax: str  # the Transfer Syntax UID
  pixel_spacing: tuple[float, float] | None  # (row, column) mm: PixelSpacing or ImagerPixelSpacing


def decode_dicom(source: str | os.PathLike | bytes, *, item_id: str | None = None,
                 frame: int = 0) -> DecodedDicom:
  """Reads a DICOM instance and returns its display-ready frame `frame`.

  Args:
    source: a path, or the file's bytes.
    item_id: id reported in errors; defaults to the path (or '<bytes>').
    frame: 0-based frame index for multi-frame instances.

  Raises:
    errors.DicomDecodeError: not DICOM, truncated/corrupt, frame out of range, undecodable pixels.
    errors.NoPixelDataError: a dataset without Pixel Data.
    errors.UnsupportedTransferSyntaxError: no installed decoder handles the transfer syntax.
    errors.BadImageError: the decoded frame is zero-size, constant or non-finite.
  """
  if item_id is None:
    item_id = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
  try:
    return _decode(source, item_id, frame)
  except errors.InputError:
    raise
  except _PYDICOM_ERRORS as e:
    # A corrupt element that pydicom parses lazily (on first access), past _read_dataset's checks.
    raise errors.DicomDecodeError(
        item_id, f"DICOM file is corrupt: {type(e).__name__}: {e}") from e


# What pydicom raises on corrupt input (BytesLengthException, a bare Exception, and struct.error
# come from a value whose length does not fit its VR, found by the fuzz tests).
_PYDICOM_ERRORS = (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OSError,
                   NotImplementedError, OverflowError, UnicodeError, RuntimeError, struct.error,
                   MemoryError, pydicom.errors.BytesLengthException)


def _decode(source: str | os.PathLike | bytes, item_id: str, frame: int) -> DecodedDicom:
  ds = _read_dataset(source, item_id)
  tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
  if not tsyntax:
    raise errors.DicomDecodeError(item_id, "no (0002,0010) Transfer Syntax UID in the file meta "
                                  "header; the file is not a valid DICOM Part 10 file")
  if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
    raise errors.NoPixelDataError(
        item_id, f"dataset (SOPClassUID {ds.get('SOPClassUID', '?')}, modality "
        f"{ds.get('Modality', '?')}) has no (7FE0,0010) Pixel Data; it is not an image")
  _check_decoder(tsyntax, item_id)
  rows, cols = _int(ds.get("Rows", 0), 0), _int(ds.get("Columns", 0), 0)
  if rows <= 0 or cols <= 0:
    raise errors.BadImageError(item_id, f"image is empty: Rows={ds.get('Rows')}, "
                               f"Columns={ds.get('Columns')}")

  n_frames = _int(ds.get("NumberOfFrames", 1), 1) or 1
  if not 0 <= frame < n_frames:
    raise errors.DicomDecodeError(item_id, f"frame {frame} requested but the file has "
                                  f"{n_frames} frame(s)")
  try:
    arr = dcm_pixels.pixel_array(ds, index=frame if n_frames > 1 else None)
  except NotImplementedError as e:
    raise errors.UnsupportedTransferSyntaxError(
        item_id, f"transfer syntax {tsyntax} ({_syntax_name(tsyntax)}) could not be decoded: "
        f"{e}") from e
  except (ValueError, RuntimeError, TypeError, AttributeError, KeyError, IndexError, OSError,
          EOFError, MemoryError) as e:
    raise errors.DicomDecodeError(
        item_id, f"pixel data ({_syntax_name(tsyntax)}) could not be decoded: "
        f"{type(e).__name__}: {e}") from e
  if arr.ndim == 3 and n_frames > 1 and arr.shape[0] == n_frames:  # decoder ignored `index`
    arr = arr[frame]

  photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
  bits_stored = _int(ds.get("BitsStored", 0), 0) or arr.dtype.itemsize * 8
  try:
    image = _to_display(arr, ds, photometric, bits_stored, item_id)
  except errors.InputError:
    raise
  except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
    raise errors.DicomDecodeError(
        item_id, f"grey-level transform (modality/VOI LUT) failed: {type(e).__name__}: {e}") from e
  image_codec.check_image(image, item_id)

  return DecodedDicom(
      image=image,
      view=str(ds.get("ViewPosition", "") or "").strip().upper(),
      patient_id=str(ds.get("PatientID", "") or "").strip(),
      study_id=str(ds.get("StudyID", "") or ds.get("StudyInstanceUID", "") or "").strip(),
      sop_instance_uid=str(ds.get("SOPInstanceUID", "") or "").strip(),
      photometric=photometric,
      bits_stored=bits_stored,
      transfer_syntax=tsyntax,
      pixel_spacing=_pixel_spacing(ds),
  )


def _read_dataset(source: str | os.PathLike | bytes, item_id: str) -> pydicom.Dataset:
  """dcmread(force=False) with pydicom's exceptions and silent truncation turned into ours."""
  try:
    if isinstance(source, (bytes, bytearray, memoryview)):
      fp: Any = io.BytesIO(bytes(source))
    else:
      if not os.path.exists(source):
        raise errors.MissingFileError(item_id, f"DICOM file {os.fspath(source)!r} does not exist")
      fp = source
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      ds = pydicom.dcmread(fp, force=False)
  except errors.InputError:
    raise
  except pydicom.errors.InvalidDicomError as e:
    raise errors.DicomDecodeError(item_id, f"not a DICOM Part 10 file (no 'DICM' prefix at byte "
                                  f"128 or no file meta header): {e}") from e
  except _PYDICOM_ERRORS as e:
    raise errors.DicomDecodeError(
        item_id, f"DICOM file is corrupt or truncated: {type(e).__name__}: {e}") from e
  # pydicom reads a truncated file without raising: an undefined-length element (encapsulated
  # pixel data, sequences) only warns, and a defined-length one simply has fewer value bytes than
  # its length says. Catch both here, before they turn into a misleading "no pixel data".
  for w in caught:
    message = str(w.message)
    if _TRUNCATION_WARNING.search(message):
      raise errors.DicomDecodeError(item_id, f"DICOM file is truncated: {message}")
  for tag in ds.keys():
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement) and elem.value is not None:
      length = elem.length
      if length != 0xFFFFFFFF and len(elem.value) < length:
        raise errors.DicomDecodeError(
            item_id, f"DICOM file is truncated: element {pydicom.tag.Tag(tag)} declares "
            f"{length} bytes but only {len(elem.value)} remain")
  return ds


def _check_decoder(tsyntax: str, item_id: str) -> None:
  """Raises UnsupportedTransferSyntaxError (naming the plugin to install) if nothing decodes it."""
  name = _syntax_name(tsyntax)
  try:
    decoder = dcm_pixels.get_decoder(tsyntax)
  except NotImplementedError:
    hint = _SYNTAX_HINTS.get(tsyntax, _UNKNOWN_SYNTAX_HINT)
    raise errors.UnsupportedTransferSyntaxError(
        item_id, f"transfer syntax {tsyntax} ({name}) has no pixel-data decoder in pydicom "
        f"{pydicom.__version__}; {hint}") from None
  if not decoder.is_available:
    missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
    raise errors.UnsupportedTransferSyntaxError(
        item_id, f"transfer syntax {tsyntax} ({name}) needs a decoding plugin that is not "
        f"installed: {missing}")


def _syntax_name(tsyntax: str) -> str:
  name = pydicom.uid.UID(tsyntax).name
  return name if name != tsyntax else "unknown/private"


def _to_display(arr: np.ndarray, ds: pydicom.Dataset, photometric: str, bits_stored: int,
                item_id: str) -> np.ndarray:
  """Stored values -> float32 [0, 1], bright = dense."""
  if arr.size == 0:
    raise errors.BadImageError(item_id, f"decoded pixel array is empty (shape {arr.shape})")
  if photometric == "PALETTE COLOR":
    arr = dcm_pixels.apply_color_lut(arr, ds)
  if arr.ndim == 3:  # RGB (pydicom converts YBR to RGB): luminance, no modality/VOI LUT applies.
    if arr.shape[-1] != 3:
      raise errors.DicomDecodeError(item_id, f"unexpected pixel array shape {arr.shape} for one "
                                    f"frame with photometric {photometric!r}")
    grey = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    top = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else max(grey.max(), 1e-12)
    return np.clip(grey / top, 0.0, 1.0).astype(np.float32)
  if arr.ndim != 2:
    raise errors.DicomDecodeError(item_id, f"unexpected pixel array shape {arr.shape}")

  arr = _mask_bits(arr, bits_stored, _int(ds.get("PixelRepresentation", 0), 0))
  values = dcm_pixels.apply_modality_lut(arr, ds)
  values = np.asarray(values, dtype=np.float64)
  if not np.all(np.isfinite(values)):
    raise errors.BadImageError(item_id, "pixel values are not finite after the modality LUT")

  out = _apply_voi(values, ds)
  if out is None or float(out.max()) - float(out.min()) <= 0:
    # No VOI in the header, or a window that lies entirely outside the data: robust window.
    out = _percentile_window(values)
  if photometric == "MONOCHROME1":
    out = 1.0 - out
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def _mask_bits(arr: np.ndarray, bits_stored: int, signed: int) -> np.ndarray:
  """Clears bits above BitsStored (and sign-extends), when a decoder left them set."""
  if arr.dtype.kind not in "ui" or not 0 < bits_stored < arr.dtype.itemsize * 8:
    return arr
  if signed:
    lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
  else:
    lo, hi = 0, (1 << bits_stored) - 1
  if arr.min() >= lo and arr.max() <= hi:
    return arr
  work = arr.astype(np.int64) & ((1 << bits_stored) - 1)
  if signed:
    sign = 1 << (bits_stored - 1)
    work = (work ^ sign) - sign
  return work


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
  """VOI LUT Sequence (first LUT) or first window -> [0, 1]; None if the header has neither."""
  seq = ds.get("VOILUTSequence")
  if seq:
    item = seq[0]
    descriptor = item.get("LUTDescriptor")
    if descriptor is not None and "LUTData" in item:
      # A VOI LUT is indexed by integer modality values.
      index_values = np.rint(values).astype(np.int64)
      y = np.asarray(dcm_pixels.apply_voi(index_values, ds, index=0), dtype=np.float64)
      out_bits = _int(descriptor[2], 16)
      top = float((1 << out_bits) - 1) if 8 <= out_bits <= 16 else float(y.max())
      top = max(top, float(y.max()), 1e-12)
      return y / top
  center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
  if center is None or width is None:
    return None
  function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
  if function == "SIGMOID":
    if width <= 0:
      return None
    return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
  if function == "LINEAR_EXACT":
    if width <= 0:
      return None
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)
  if width < 1:  # LINEAR requires width >= 1 (PS3.3 C.11.2.1.2.1)
    return None
  if width == 1:
    return (values > center - 0.5).astype(np.float64)
  return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _percentile_window(values: np.ndarray) -> np.ndarray:
  sample = values
  if values.size > _PERCENTILE_MAX_PIXELS:
    step = int(np.ceil(np.sqrt(values.size / _PERCENTILE_MAX_PIXELS)))
    sample = values[::step, ::step]
  lo, hi = np.percentile(sample, PERCENTILE_WINDOW)
  if hi <= lo:  # mostly constant (e.g. big background): fall back to the full range
    lo, hi = float(values.min()), float(values.max())
  if hi <= lo:
    return np.zeros_like(values)
  return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _first(value: Any) -> float | None:
  """First value of a possibly multi-valued DS/IS element, as float; None if absent/invalid."""
  if value is None or value == "":
    return None
  if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
    if len(value) == 0:
      return None
    value = value[0]
  try:
    out = float(value)
  except (TypeError, ValueError):
    return None
  return out if np.isfinite(out) else None


def _int(value: Any, default: int) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    return default


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
  for key in ("PixelSpacing", "ImagerPixelSpacing"):
    value = ds.get(key)
    try:
      row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
      continue
    if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
      return (row, col)
  return None
