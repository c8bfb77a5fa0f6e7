"""The record contract: what one converted image–report example holds, and its TFRecord keys.

One record = one image (a DICOM instance or an image file) with its study's report. Shards are
standard TFRecord files of `tf.train.Example` protos with exactly the features below, so
TensorFlow's `tf.data.TFRecordDataset` + `tf.io.parse_single_example(records.feature_spec_tf())`
reads them;
mmrl itself reads them without TensorFlow (data_pipeline.example_proto / records).
Full documentation: docs/data_format.md. Bump SPEC_VERSION on any change.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

SPEC_VERSION = 1

# mmrl's metadata of a converted folder (docs/data_format.md). The folder's dataset_info.json and
# features.json are TensorFlow Datasets' (data_pipeline/tfds_metadata.py); folders converted
# before the TFDS files existed hold mmrl's metadata in dataset_info.json (LEGACY_INFO_FILE).
INFO_FILE = "mmrl_dataset_info.json"
LEGACY_INFO_FILE = "dataset_info.json"

# key -> (dtype, kind, meaning). kind: "scalar" (exactly one value) or "list" (0..n values).
# dtype: "bytes" | "int64" | "float".
FEATURES: dict[str, tuple[str, str, str]] = {
    "image/encoded": ("bytes", "scalar", "PNG bytes, 1 channel, 8- or 16-bit, display-ready "
                      "(modality LUT, VOI LUT/window, MONOCHROME1 inverted: bright = dense)"),
    "image/format": ("bytes", "scalar", "b'png'"),
    "image/height": ("int64", "scalar", "stored height in pixels"),
    "image/width": ("int64", "scalar", "stored width in pixels"),
    "image/bit_depth": ("int64", "scalar", "8 or 16"),
    "image/original_height": ("int64", "scalar", "height of the source pixel array"),
    "image/original_width": ("int64", "scalar", "width of the source pixel array"),
    "image/id": ("bytes", "scalar", "dicom_id / image file stem; unique in a data set"),
    "image/view": ("bytes", "scalar", "PA | AP | LATERAL | LL | ... | '' (unknown)"),
    "image/source": ("bytes", "scalar", "path of the source file relative to the input root"),
    "study/id": ("bytes", "scalar", "study id (MIMIC: 's50414267' without the s -> '50414267')"),
    "patient/id": ("bytes", "scalar", "patient / subject id"),
    "split": ("bytes", "scalar", "train | validate | test (patient-level)"),
    "report/text": ("bytes", "scalar", "cleaned full report text used for training "
                    "(findings + impression, or the fallback text)"),
    "report/findings": ("bytes", "scalar", "FINDINGS section, cleaned ('' if none)"),
    "report/impression": ("bytes", "scalar", "IMPRESSION section, cleaned ('' if none)"),
    "report/sentences": ("bytes", "list", "sentences of report/text, in order"),
    "report/sentence_section": ("bytes", "list", "section of each sentence: findings | "
                                "impression | other"),
    "labels/values": ("float", "list", "one value per label of mmrl_dataset_info.json label_names: "
                      "1 positive, 0 negative, -1 uncertain, NaN blank (not mentioned)"),
    "boxes/label": ("bytes", "list", "finding name of each box"),
    "boxes/xmin": ("float", "list", "box left, normalised to [0,1] of image/width"),
    "boxes/ymin": ("float", "list", "box top, normalised to [0,1] of image/height"),
    "boxes/xmax": ("float", "list", "box right, normalised"),
    "boxes/ymax": ("float", "list", "box bottom, normalised"),
    "masks/label": ("bytes", "list", "finding name of each mask"),
    "masks/encoded": ("bytes", "list", "8-bit PNG (0/255) of each mask, same size as the image"),
}


@dataclasses.dataclass
class Box:
  label: str
  xmin: float  # normalised [0, 1]
  ymin: float
  xmax: float
  ymax: float


@dataclasses.dataclass
class StudyRecord:
  """In-memory form of one record (what converters build and the pipeline parses)."""
  image_png: bytes
  height: int
  width: int
  bit_depth: int
  original_height: int
  original_width: int
  image_id: str
  study_id: str
  patient_id: str
  view: str = ""
  source: str = ""
  split: str = "train"
  report_text: str = ""
  findings: str = ""
  impression: str = ""
  sentences: list[str] = dataclasses.field(default_factory=list)
  sentence_sections: list[str] = dataclasses.field(default_factory=list)
  labels: Optional[np.ndarray] = None  # float32 [K], NaN = blank
  boxes: list[Box] = dataclasses.field(default_factory=list)
  mask_labels: list[str] = dataclasses.field(default_factory=list)
  masks_png: list[bytes] = dataclasses.field(default_factory=list)


# CheXpert / MIMIC-CXR label vocabulary (order of the MIMIC-CXR chexpert CSV columns).
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
)

# NIH ChestX-ray14 vocabulary (order of ../shared/data/nih_cxr14 one-hot columns).
NIH_CXR14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)

SPLITS = ("train", "validate", "test")
