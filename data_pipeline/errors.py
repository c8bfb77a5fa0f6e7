"""Named errors for bad input. Each carries the offending item's id/path and the reason.

The converter catches `InputError` per item, writes (id, kind, reason) to its errors file, counts
it and goes on; the Grain pipeline does the same per record (policy `skip`) or re-raises (`fail`).
"""
from __future__ import annotations


class InputError(Exception):
  """An input item that cannot be used. `item` is its id or path; `reason` says why."""

  kind = "input_error"

  def __init__(self, item: str, reason: str):
    super().__init__(f"{item}: {reason}")
    self.item = str(item)
    self.reason = reason


class DicomDecodeError(InputError):
  """Truncated/corrupt DICOM, a file that is not DICOM, or pixel data that cannot be decoded."""
  kind = "dicom_decode"


class NoPixelDataError(DicomDecodeError):
  """A DICOM dataset without (7FE0,0010) Pixel Data."""
  kind = "no_pixel_data"


class UnsupportedTransferSyntaxError(DicomDecodeError):
  """No installed pixel-data handler can decode this transfer syntax."""
  kind = "unsupported_transfer_syntax"


class BadImageError(InputError):
  """Zero-size, constant or non-finite image, or an image file that cannot be read."""
  kind = "bad_image"


class ReportError(InputError):
  """Empty report, report bytes that are not text, or a report without usable sentences."""
  kind = "bad_report"


class MissingFileError(InputError):
  """A path named by a manifest or a layout that does not exist."""
  kind = "missing_file"


class CorruptRecordError(InputError):
  """A TFRecord record whose length or data CRC does not match, or that does not parse."""
  kind = "corrupt_record"
