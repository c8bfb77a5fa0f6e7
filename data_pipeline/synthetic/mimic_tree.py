"""Writes the synthetic data set as a MIMIC-CXR-JPG/DICOM style tree.

This module owns the files on disk: real DICOM (pydicom; CR or DX For Presentation; Explicit VR
Little Endian or RLE Lossless; MONOCHROME2 or MONOCHROME1; 12-16 bits stored; with and without a
modality rescale), one report per study, the four MIMIC CSVs and the ground-truth annotations.

DICOM conformance: every file passes dicom3tools' `dciodvfy -new` with no error
(tests/test_synthetic_dicom_conformance.py). The decoder's odd-but-valid cases live only in IODs
that allow them:
  - MONOCHROME1: CR and DX (DX then says PresentationLUTShape INVERSE, MONOCHROME2 IDENTITY);
  - a modality rescale other than slope 1 / intercept 0: CR only (Modality LUT module); DX files
    always carry RescaleSlope 1 / RescaleIntercept 0 / RescaleType US, as the DX Image module says;
  - VOI LUT Sequence (a sigmoid of the window, beside the window tags): 12-bit CR or DX files
    without a rescale (VOI LUT module: U in CR, C = present in DX For Presentation);
  - window tags: every file; RLE Lossless: any file.
DX "For Processing" files are not generated: their pixels are not meant for display (no VOI is
required), and MIMIC-CXR's images are For Presentation.
dciodvfy's remaining warnings, each kept on purpose:
  - ProcedureCodeSequence CodingSchemeDesignator "99MMRL" is an "unrecognized defined term": the
    procedure code is our own, and PS3.3 8.2 reserves designators starting with "99" for local
    coding schemes; dciodvfy only knows registered ones.
  - ViewPosition "LATERAL" is an "unrecognized defined term" (DICOM's are LL / RL): MIMIC-CXR's own
    files and metadata CSV say LATERAL, and the converters and the metadata CSV must see what
    MIMIC-CXR has.
Type-2 attributes we do not model (ReferringPhysicianName, PatientBirthDate, DX PositionerType and
DetectorType, AcquisitionContextSequence) are written empty, as the standard allows.

Layout:

  out_dir/
    files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm     NN = first two digits of the subject id
    files/pNN/pNNNNNNNN/sNNNNNNNN.txt                the study's report
    mimic-cxr-2.0.0-metadata.csv                     one row per DICOM
    mimic-cxr-2.0.0-chexpert.csv                     one row per study (1.0 / 0.0 / -1.0 / blank)
    mimic-cxr-2.0.0-split.csv                        one row per DICOM, split by patient
    mmrl-synthetic-annotations.jsonl                 one line per DICOM: findings, boxes, masks
    annotations/masks/<dicom_id>_<k>.png             8-bit 0/255 masks, size of the pixel array

Boxes are pixel coordinates of the DICOM pixel array with slice convention (see phantom.py).
Everything is a pure function of the arguments: the same seed gives byte-identical files
(UIDs are derived from the seed, never from time), with any number of workers.

Over 400 lines on purpose: one job, the on-disk tree (DICOM files, reports, the MIMIC CSVs and
annotations), whose DICOM conformance rules above apply across the whole writer and are checked as
one by dciodvfy.
"""
from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from PIL import Image

from data_pipeline.record_spec import CHEXPERT_LABELS
from data_pipeline.synthetic import phantom
from data_pipeline.synthetic import report_writer

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
ANNOTATIONS_JSONL = "mmrl-synthetic-annotations.jsonl"
MASKS_DIR = "annotations/masks"
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
_IMPLEMENTATION_UID = "2.25.154312414388648967366387105488961419891"  # a fixed UUID
# SNOMED CT codes of DICOM CID 4010 (DX View), CID 19 (Patient Orientation; "erect" is NCIt there)
# and CID 4009 (DX Anatomy Imaged); the SRT codes older files carry are retired.
_VIEW_CODES = {"PA": ("272479007", "postero-anterior", "SCT"),
               "AP": ("399348003", "antero-posterior", "SCT"),
               "LATERAL": ("399173006", "left lateral", "SCT")}
_ERECT = ("C86043", "erect", "NCIt")
_RECUMBENT = ("102538003", "recumbent", "SCT")
_CHEST = ("816094009", "Chest", "SCT")
# Local codes use a "99" coding scheme designator (PS3.3 8.2: private coding schemes).
_PROCEDURE_SCHEME = "99MMRL"
_ORIENTATION = {"PA": ["L", "F"], "AP": ["L", "F"], "LATERAL": ["P", "F"]}
_RESCALES = ((1.0, -1024.0), (2.0, 0.0), (1.0, 0.0))
_BITS = ((12, 0.5), (14, 0.2), (15, 0.1), (16, 0.2))
MONOCHROME1_FRACTION = 0.2
RLE_FRACTION = 0.15
DX_FRACTION = 0.3
RESCALE_FRACTION = 0.3  # drawn for every file; DX files then carry slope 1 / intercept 0 instead
VOI_LUT_FRACTION = 0.4  # of 12-bit files without a rescale


def dicom_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
  """files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm for a subject, study and DICOM id."""
  s = f"{subject_id:08d}"
  return f"files/p{s[:2]}/p{s}/s{study_id:08d}/{dicom_id}.dcm"


def report_relpath(subject_id: int, study_id: int) -> str:
  """files/pNN/pNNNNNNNN/sNNNNNNNN.txt for a subject and study."""
  s = f"{subject_id:08d}"
  return f"files/p{s[:2]}/p{s}/s{study_id:08d}.txt"


def encode_pixels(display: np.ndarray, *, bits_stored: int, photometric: str,
                  slope: float = 1.0, intercept: float = 0.0
                  ) -> tuple[np.ndarray, float, float]:
  """Display image [0, 1] (bright = dense) -> stored uint16 values and a VOI window.

  Args:
    display: float image in [0, 1].
    bits_stored: 12..16; stored values use [0, 2**bits_stored - 1].
    photometric: "MONOCHROME2" (high = bright) or "MONOCHROME1" (stored values inverted).
    slope: RescaleSlope written to the file (the window is in rescaled units).
    intercept: RescaleIntercept written to the file.

  Returns:
    (stored uint16 array, WindowCenter, WindowWidth). Applying the modality rescale, the window,
    and inverting MONOCHROME1 gives back `display` up to quantisation and the window's clipping.
  """
  if not 8 <= bits_stored <= 16:
    raise ValueError(f"bits_stored={bits_stored} is outside 8..16; use 12-16 for radiographs")
  if photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise ValueError(f"photometric={photometric!r}; use 'MONOCHROME1' or 'MONOCHROME2'")
  maxv = (1 << bits_stored) - 1
  value = np.rint((0.04 + 0.92 * np.clip(display, 0.0, 1.0)) * maxv).astype(np.uint16)
  lo, hi = (float(v) for v in np.percentile(value, [0.5, 99.8]))
  if photometric == "MONOCHROME1":
    value = (maxv - value).astype(np.uint16)
    lo, hi = maxv - hi, maxv - lo
  center = intercept + slope * (lo + hi) / 2.0
  width = max(slope * (hi - lo), 2.0)
  return value, round(center, 1), round(width, 1)


def _code_item(value: str, meaning: str, scheme: str) -> Dataset:
  item = Dataset()
  item.CodeValue = value
  item.CodingSchemeDesignator = scheme
  item.CodeMeaning = meaning
  return item


def voi_lut_item(window: tuple[float, float], bits_stored: int) -> Dataset:
  """A VOI LUT Sequence item: a sigmoid of the window over every stored value (16-bit output).

  The LUT starts at stored value 0 and has one entry per stored value, so it is only meant for
  files without a modality rescale (slope 1, intercept 0) and with few bits (12: 4096 entries).
  """
  if not 8 <= bits_stored <= 14:
    raise ValueError(f"bits_stored={bits_stored}: a full VOI LUT would need 2**{bits_stored} "
                     "entries; use 8..14 bits")
  center, width = window
  x = np.arange(1 << bits_stored, dtype=np.float64)
  y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1.0)))
  item = Dataset()
  item.add_new("LUTDescriptor", "US", [1 << bits_stored, 0, 16])
  item.LUTExplanation = "SIGMOID OF THE WINDOW"
  item.add_new("LUTData", "OW", np.rint(y * 65535).astype("<u2").tobytes())
  return item


def _uid(seed: int, *parts: Any) -> str:
  """A 2.25.<128-bit> UID derived from the seed and ids (never from time or randomness)."""
  text = "/".join(["mmrl-synthetic", str(seed)] + [str(p) for p in parts])
  return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


def build_dataset(stored: np.ndarray, *, seed: int, subject_id: int, study_id: int,
                  dicom_id: str, view: str, photometric: str, bits_stored: int,
                  pixel_spacing_mm: float, window: tuple[float, float],
                  rescale: Optional[tuple[float, float]], modality: str, rle: bool,
                  study_date: str, study_time: str, procedure: str, sex: str,
                  instance_number: int, voi_lut: bool = False) -> Dataset:
  """A complete DICOM dataset (with file meta) holding `stored` pixel values.

  Args:
    stored: uint16 [rows, cols] stored values (from `encode_pixels`).
    seed: data-set seed (UIDs derive from it and the ids).
    subject_id: PatientID.
    study_id: StudyID (and the StudyInstanceUID's entropy).
    dicom_id: MIMIC dicom id (SOPInstanceUID's entropy).
    view: "PA" | "AP" | "LATERAL" (ViewPosition).
    photometric: "MONOCHROME1" | "MONOCHROME2".
    bits_stored: BitsStored (HighBit = BitsStored - 1).
    pixel_spacing_mm: PixelSpacing and ImagerPixelSpacing.
    window: (WindowCenter, WindowWidth).
    rescale: (RescaleSlope, RescaleIntercept) or None to omit them (CR only: DX requires them
      and allows only (1, 0), which is written when None).
    modality: "CR" (CR Image Storage) or "DX" (Digital X-Ray Image Storage For Presentation).
    rle: encode the pixel data with RLE Lossless (else Explicit VR Little Endian).
    study_date: YYYYMMDD.
    study_time: HHMMSS.fff.
    procedure: PerformedProcedureStepDescription / procedure code meaning.
    sex: "M" | "F".
    instance_number: InstanceNumber within the study.
    voi_lut: also write a VOI LUT Sequence (`voi_lut_item`, a sigmoid of `window`); readers
      prefer it to the window, which stays in the file. Needs no rescale (or slope 1 /
      intercept 0) and bits_stored <= 14.
  """
  if modality not in ("CR", "DX"):
    raise ValueError(f"modality={modality!r}; use 'CR' or 'DX'")
  if modality == "DX" and rescale not in (None, (1.0, 0.0)):
    raise ValueError(f"rescale={rescale} on a DX file: the DX Image module allows only "
                     "RescaleSlope 1 / RescaleIntercept 0; pass None (or use modality 'CR')")
  if voi_lut and rescale not in (None, (1.0, 0.0)):
    raise ValueError(f"voi_lut=True with rescale={rescale}: the synthetic VOI LUT is indexed "
                     "by stored values; use no rescale")
  dx = modality == "DX"
  sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_PRESENTATION_STORAGE
  sop_uid = _uid(seed, dicom_id, "sop")
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  meta.ImplementationClassUID = _IMPLEMENTATION_UID
  meta.ImplementationVersionName = "MMRL_SYNTH_1"
  ds = Dataset()
  ds.file_meta = meta
  ds.SpecificCharacterSet = "ISO_IR 100"
  ds.ImageType = ["ORIGINAL", "PRIMARY"]
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = sop_uid
  ds.StudyDate = study_date
  ds.SeriesDate = study_date
  ds.ContentDate = study_date
  ds.StudyTime = study_time
  ds.SeriesTime = study_time
  ds.ContentTime = study_time
  ds.AccessionNumber = f"{(study_id * 7919 + seed) % 10**9:09d}"
  ds.Modality = modality
  if dx:
    ds.PresentationIntentType = "FOR PRESENTATION"
  ds.Manufacturer = "mmrl synthetic phantom"
  ds.ReferringPhysicianName = ""  # type 2: known to be unknown
  ds.StudyDescription = procedure
  ds.SeriesDescription = view
  ds.ProcedureCodeSequence = DicomSequence([_code_item("CXR", procedure, _PROCEDURE_SCHEME)])
  ds.PatientName = f"SYNTHETIC^{subject_id}"
  ds.PatientID = str(subject_id)
  ds.PatientBirthDate = ""
  ds.PatientSex = sex
  ds.BodyPartExamined = "CHEST"
  ds.ViewPosition = view
  if dx:  # DX Positioning / DX Anatomy Imaged; the CR IOD has no place for these codes.
    ds.AnatomicRegionSequence = DicomSequence([_code_item(*_CHEST)])
    ds.ImageLaterality = "U"  # the chest is an unpaired body part
    ds.ViewCodeSequence = DicomSequence([_code_item(*_VIEW_CODES[view])])
    ds.PatientOrientationCodeSequence = DicomSequence(
        [_code_item(*(_RECUMBENT if view == "AP" else _ERECT))])
    ds.PositionerType = ""  # type 2: not modelled
    ds.DetectorType = ""  # type 2: not modelled
    ds.AcquisitionContextSequence = DicomSequence([])  # type 2: no context recorded
  ds.StudyInstanceUID = _uid(seed, study_id, "study")
  ds.SeriesInstanceUID = _uid(seed, dicom_id, "series")
  ds.StudyID = str(study_id)
  ds.SeriesNumber = instance_number
  ds.InstanceNumber = 1
  ds.PatientOrientation = _ORIENTATION[view]
  ds.BurnedInAnnotation = "NO"
  ds.LossyImageCompression = "00"  # pixels never went through a lossy codec
  spacing = f"{pixel_spacing_mm:.4f}"
  ds.ImagerPixelSpacing = [spacing, spacing]
  ds.PixelSpacing = [spacing, spacing]
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
  ds.BitsAllocated = 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = 0
  if dx:
    # Log exposure; for MONOCHROME2 high stored values are dense (less beam): sign -1.
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    rescale = (1.0, 0.0)
  ds.WindowCenter = f"{window[0]:.1f}"
  ds.WindowWidth = f"{window[1]:.1f}"
  if voi_lut:
    ds.VOILUTSequence = DicomSequence([voi_lut_item(window, bits_stored)])
  if rescale is not None:
    ds.RescaleSlope = f"{rescale[0]:g}"
    ds.RescaleIntercept = f"{rescale[1]:g}"
    ds.RescaleType = "US"
  ds.PixelData = stored.astype("<u2").tobytes()
  ds["PixelData"].VR = "OW"
  if rle:
    ds.compress(RLELossless, stored, generate_instance_uid=False)
  return ds


def dicom_bytes(ds: Dataset) -> bytes:
  """The DICOM file (preamble, file meta, dataset) of `ds` as bytes."""
  buf = io.BytesIO()
  ds.save_as(buf, enforce_file_format=True)
  return buf.getvalue()


def _plan(seed: int, num_patients: int, studies_per_patient: tuple[int, int]) -> list[dict]:
  """Ids, study counts, dates and splits for every patient (in the main process)."""
  rng = np.random.default_rng([seed, 0])
  subjects = np.sort(10_000_000 + rng.choice(10_000_000, size=num_patients, replace=False))
  counts = rng.integers(studies_per_patient[0], studies_per_patient[1] + 1, size=num_patients)
  study_ids = 50_000_000 + rng.choice(10_000_000, size=int(counts.sum()), replace=False)
  order = rng.permutation(num_patients)
  n_test = int(round(0.1 * num_patients))
  n_val = int(round(0.1 * num_patients))
  split = np.array(["train"] * num_patients, dtype=object)
  split[order[:n_test]] = "test"
  split[order[n_test:n_test + n_val]] = "validate"
  plans, k = [], 0
  for i in range(num_patients):
    plans.append({"index": i, "subject_id": int(subjects[i]), "split": str(split[i]),
                  "study_ids": [int(s) for s in study_ids[k:k + counts[i]]],
                  "sex": "M" if rng.random() < 0.52 else "F",
                  "first_day": int(rng.integers(0, 365 * 80))})
    k += int(counts[i])
  return plans


def _study_date(day: int) -> str:
  """YYYYMMDD of a day number counted from 2110-01-01 (MIMIC's dates are shifted too)."""
  return str(np.datetime64("2110-01-01") + np.timedelta64(day, "D")).replace("-", "")


def _write_patient(job: tuple[str, dict, int, int, float, str]) -> dict[str, list]:
  """Renders and writes all studies of one patient; returns its CSV rows and annotation lines."""
  out_dir, plan, seed, image_size, lateral_fraction, variant = job
  out = pathlib.Path(out_dir)
  rng = np.random.default_rng([seed, 1, plan["index"]])
  subject = plan["subject_id"]
  rows: dict[str, list] = {"metadata": [], "chexpert": [], "split": [], "annotations": []}
  day = plan["first_day"]
  for n, study in enumerate(plan["study_ids"]):
    day += int(rng.integers(1, 400)) if n else 0
    date = _study_date(day)
    time_ = (f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}"
             f"{int(rng.integers(0, 60)):02d}.{int(rng.integers(0, 1000)):03d}")
    frontal = "AP" if rng.random() < 0.35 else "PA"
    views = [frontal] + (["LATERAL"] if rng.random() < lateral_fraction else [])
    if frontal == "AP":
      procedure = "CHEST (PORTABLE AP)" if len(views) == 1 else "CHEST (AP AND LAT)"
      technique = "Portable AP chest radiograph" + (" and lateral" if len(views) > 1 else "")
    else:
      procedure = "CHEST (PA AND LAT)" if len(views) > 1 else "CHEST (PA)"
      technique = "Chest PA and lateral" if len(views) > 1 else "Chest PA"
    findings = phantom.sample_findings(rng, view=frontal, variant=variant)
    images = []
    for view in views:
      dicom_id = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5))
      long_side = image_size * rng.uniform(0.96, 1.04)
      aspect = rng.uniform(0.82, 1.0) if (view != "AP" or rng.random() < 0.7) else rng.uniform(
          1.0, 1.2)  # columns / rows
      rows_px = int(round(long_side if aspect <= 1 else long_side / aspect))
      cols_px = int(round(long_side * aspect if aspect <= 1 else long_side))
      spacing = round(rng.uniform(350.0, 430.0) / max(rows_px, cols_px), 4)
      ph = phantom.render(rng, view, rows_px, cols_px, findings, pixel_spacing_mm=spacing,
                          variant=variant)
      if view != "LATERAL":
        findings = [r.finding for r in ph.findings]  # sizes as drawn, for the report
      images.append((view, dicom_id, ph))
    report = report_writer.write_report(findings, rng, examination=procedure, technique=technique,
                                        sex="man" if plan["sex"] == "M" else "woman",
                                        has_prior=n > 0)
    rel = report_relpath(subject, study)
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text(report.text)
    rows["chexpert"].append([subject, study] + report.label_row())
    for k, (view, dicom_id, ph) in enumerate(images):
      bits = int(rng.choice([b for b, _ in _BITS], p=[p for _, p in _BITS]))
      photometric = "MONOCHROME1" if rng.random() < MONOCHROME1_FRACTION else "MONOCHROME2"
      rescale = (_RESCALES[int(rng.integers(len(_RESCALES)))]
                 if rng.random() < RESCALE_FRACTION else None)
      modality = "DX" if rng.random() < DX_FRACTION else "CR"
      rle = rng.random() < RLE_FRACTION
      if modality == "DX":
        rescale = None  # DX allows only slope 1 / intercept 0 (build_dataset writes those)
      # Its own generator: the draws above (and so every image and report) stay as they were
      # before VOI LUT files existed.
      voi_lut = (rescale in (None, (1.0, 0.0)) and bits == 12 and np.random.default_rng(
          [seed, 2, plan["index"], n, k]).random() < VOI_LUT_FRACTION)
      slope, intercept = rescale or (1.0, 0.0)
      stored, wc, ww = encode_pixels(ph.image, bits_stored=bits, photometric=photometric,
                                     slope=slope, intercept=intercept)
      ds = build_dataset(
          stored, seed=seed, subject_id=subject, study_id=study, dicom_id=dicom_id, view=view,
          photometric=photometric, bits_stored=bits, pixel_spacing_mm=ph.pixel_spacing_mm,
          window=(wc, ww), rescale=rescale, modality=modality,
          rle=rle, study_date=date, study_time=time_,
          procedure=procedure, sex=plan["sex"], instance_number=k + 1, voi_lut=voi_lut)
      path = out / dicom_relpath(subject, study, dicom_id)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(dicom_bytes(ds))
      rows["metadata"].append([
          dicom_id, subject, study, procedure, view, stored.shape[0], stored.shape[1], date,
          time_, procedure, _VIEW_CODES[view][1],
          "Recumbent" if view == "AP" else "Erect"])
      rows["split"].append([dicom_id, study, subject, plan["split"]])
      annotated = []
      for j, r in enumerate(ph.findings):
        mask_rel = f"{MASKS_DIR}/{dicom_id}_{j}.png"
        Image.fromarray(r.mask.astype(np.uint8) * 255).save(out / mask_rel, format="PNG")
        f = r.finding
        annotated.append({
            "name": f.name, "chexpert_label": report_writer.FINDING_LABELS[f.name][0],
            "certainty": "uncertain" if f.uncertain else "present", "side": f.side,
            "zone": f.zone, "size_mm": f.size_mm, "device": f.device,
            "box": list(r.box), "mask": mask_rel})
      rows["annotations"].append(json.dumps({
          "dicom_id": dicom_id, "study_id": study, "subject_id": subject, "view": view,
          "pixel_spacing_mm": ph.pixel_spacing_mm, "rows": int(stored.shape[0]),
          "columns": int(stored.shape[1]), "findings": annotated}, sort_keys=False))
  return rows


def write_mimic_tree(out_dir: str | os.PathLike, *, num_patients: int,
                     studies_per_patient: Sequence[int] = (1, 3), seed: int = 0,
                     image_size: int = 512, lateral_fraction: float = 0.2,
                     workers: int = 1, variant: str = "realistic") -> dict[str, Any]:
  """Writes a synthetic MIMIC-CXR style data set (layout in the module docstring).

  Args:
    out_dir: destination folder; created if missing, refused if its files/ is not empty.
    num_patients: number of subjects (>= 1).
    studies_per_patient: (min, max) studies per subject, inclusive.
    seed: everything (ids, UIDs, images, reports, splits) is a function of it.
    image_size: approximate long side of each image in pixels (>= 96).
    lateral_fraction: probability that a study also has a lateral image.
    workers: processes rendering patients in parallel (output is identical for any value).
    variant: finding sizes, 'realistic' | 'calibrated' (data_pipeline/synthetic/phantom.py).

  Returns:
    A summary: counts of patients, studies, images (frontal/lateral), normal studies, findings
    by name, patients per split, and the paths of the CSVs.
  """
  lo_hi = tuple(int(v) for v in studies_per_patient)
  if num_patients < 1:
    raise ValueError(f"num_patients={num_patients}; use at least 1")
  if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
    raise ValueError(f"studies_per_patient={tuple(studies_per_patient)}; use (min, max) with "
                     "1 <= min <= max, e.g. (1, 3)")
  if image_size < 96:
    raise ValueError(f"image_size={image_size} is too small to draw anatomy; use >= 96 "
                     "(512 is the default)")
  if not 0.0 <= lateral_fraction <= 1.0:
    raise ValueError(f"lateral_fraction={lateral_fraction} is not a probability; use 0..1")
  if workers < 1:
    raise ValueError(f"workers={workers}; use 1 (in-process) or more processes")
  phantom.check_variant(variant)
  if num_patients > 10_000_000:
    raise ValueError(f"num_patients={num_patients} exceeds the 8-digit subject id space; "
                     "use at most 10,000,000")
  out = pathlib.Path(out_dir)
  if (out / "files").exists() and any((out / "files").iterdir()):
    raise ValueError(f"out_dir={str(out)!r} already holds a tree (files/ is not empty); its old "
                     "files would mix with the new ones: choose an empty folder or delete it")
  (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
  plans = _plan(seed, num_patients, lo_hi)
  jobs = [(str(out), p, seed, image_size, float(lateral_fraction), variant) for p in plans]
  if workers == 1:
    results = [_write_patient(j) for j in jobs]
  else:
    ctx = multiprocessing.get_context("spawn")  # safe even if the parent runs JAX threads
    with ctx.Pool(workers) as pool:
      results = pool.map(_write_patient, jobs, chunksize=max(1, len(jobs) // (workers * 4)))

  def write_csv(name: str, header: Sequence[str], key: str) -> None:
    with open(out / name, "w", newline="") as fh:
      w = csv.writer(fh, lineterminator="\n")
      w.writerow(header)
      for r in results:
        w.writerows(r[key])

  write_csv(METADATA_CSV, METADATA_COLUMNS, "metadata")
  write_csv(CHEXPERT_CSV, ("subject_id", "study_id") + CHEXPERT_LABELS, "chexpert")
  write_csv(SPLIT_CSV, ("dicom_id", "study_id", "subject_id", "split"), "split")
  with open(out / ANNOTATIONS_JSONL, "w") as fh:
    for r in results:
      for line in r["annotations"]:
        fh.write(line + "\n")

  findings = collections.Counter()
  views = collections.Counter()
  for r in results:
    for line in r["annotations"]:
      a = json.loads(line)
      views[a["view"]] += 1
  normal = 0
  no_finding = CHEXPERT_LABELS.index("No Finding")
  for r in results:
    for row in r["chexpert"]:
      normal += row[2 + no_finding] == "1.0"
      for name, labels in report_writer.FINDING_LABELS.items():
        if row[2 + CHEXPERT_LABELS.index(labels[0])] in ("1.0", "-1.0"):
          findings[name] += 1
  return {
      "out_dir": str(out),
      "num_patients": num_patients,
      "num_studies": sum(len(r["chexpert"]) for r in results),
      "num_images": sum(views.values()),
      "images_by_view": dict(sorted(views.items())),
      "num_no_finding_studies": normal,
      "studies_with_finding": dict(sorted(findings.items())),
      "patients_by_split": dict(collections.Counter(p["split"] for p in plans)),
      "metadata_csv": str(out / METADATA_CSV),
  }
