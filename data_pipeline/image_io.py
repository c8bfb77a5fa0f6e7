"""Loading any source image file: owns the one DICOM sniff and the choice of decoder.

`load_source` (image + DICOM ViewPosition) and `load_image` (image only) return float32 [H, W] in
[0, 1] (bright = dense for DICOM). A file is DICOM when its extension is .dcm/.dicom/.dic or it
carries the 'DICM' magic at byte 128 (`is_dicom`); DICOM goes to data_pipeline.dicom_decode,
everything else to Pillow via data_pipeline.image_codec. This module sits above both, so neither
of them imports the other's loader.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from data_pipeline import errors
from data_pipeline import image_codec

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def is_dicom(path: str | os.PathLike) -> bool:
  """True for a DICOM extension or the 'DICM' magic at byte 128 (an unreadable file: False)."""
  path = pathlib.Path(path)
  if path.suffix.lower() in DICOM_SUFFIXES:
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:132] == b"DICM"


def load_source(path: str | os.PathLike, *, item_id: str | None = None) -> tuple[np.ndarray, str]:
  """Any source image -> (float32 [H, W] in [0, 1], DICOM ViewPosition upper-case or '').

  Raises:
    errors.MissingFileError: the path does not exist.
    errors.BadImageError: unreadable image file, or zero-size/constant/non-finite image.
    errors.DicomDecodeError (and subclasses): for DICOM input.
  """
  path = pathlib.Path(path)
  item_id = str(path) if item_id is None else item_id
  if not path.is_file():
    raise errors.MissingFileError(item_id, f"image file {str(path)!r} does not exist")
  if is_dicom(path):
    from data_pipeline import dicom_decode  # pylint: disable=import-outside-toplevel  # pydicom
    decoded = dicom_decode.decode_dicom(path, item_id=item_id)
    return decoded.image, decoded.view
  return image_codec.read_pillow_image(path, item_id), ""


def load_image(path: str | os.PathLike, *, item_id: str | None = None) -> np.ndarray:
  """Any source image -> float32 [H, W] in [0, 1] (bright = dense for DICOM); see load_source."""
  return load_source(path, item_id=item_id)[0]
