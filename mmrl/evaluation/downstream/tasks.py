"""The downstream task registry: which converter layout, record fields, evaluator and metric.

A `Task` names everything the runner needs to score a checkpoint on one downstream protocol:
  layout        the `experiments.convert --layout` that writes its shards (docs/downstream.md)
  reads         the record fields (docs/data_format.md) the evaluator reads
  evaluator     detection | segmentation | classification | zero_shot | grounding (the existing
                evaluators of mmrl.evaluation; `EVALUATOR_CONFIG` names their config block)
  metrics       the reported numbers, the first is the headline of the leaderboard
  metric_doc    the metric as the papers define it
  split_source  where the train / test split comes from
  overrides     `config.eval.<block>` keys set for the task (e.g. the segmentation target)
  trains        False for protocols without a trained head (zero-shot, grounding): one run at
                100 % and the first seed, whatever --fractions / --seeds say
Tasks on data sets whose converters are new (rsna_pneumonia, siim_acr, object_cxr, vindr_cxr,
chexpert_5x200, ms_cxr, covidx) read only the fields docs/data_format.md defines (boxes/*,
masks/* as the covid_cxr layout stores them, labels/values, report/sentences), so they run as
soon as their shards exist.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

EVALUATORS = ("detection", "segmentation", "classification", "zero_shot", "grounding")
# evaluator kind -> config.eval block it configures
EVALUATOR_CONFIG = {"detection": "detection", "segmentation": "segmentation",
                    "classification": "linear_probe", "zero_shot": "zero_shot",
                    "grounding": "grounding"}

_MAP_DOC = ("mAP: COCO-style average precision per class (pycocotools-exact, 101-point "
            "interpolation, max 100 detections), averaged over IoU thresholds 0.4:0.05:0.75 "
            "and over classes with a test box (LoVT, MGCA); map@0.5 at IoU 0.5 alone; FROC as "
            "Object-CXR defines it")
_DICE_DOC = ("Dice: per test image 2|P∩T| / (|P| + |T|) of P = sigmoid >= 0.5 and the target "
             "T (empty/empty = 1), averaged over the scored test images (MGCA's get_dice); "
             "dice_nonempty over the images with a target pixel")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  layout: str
  reads: tuple[str, ...]
  evaluator: str
  metrics: tuple[str, ...]
  metric_doc: str
  split_source: str
  train_split: str = "train"
  test_split: str = "test"
  trains: bool = True
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  convert_flags: str = ""
  description: str = ""

  def __post_init__(self):
    if self.evaluator not in EVALUATORS:
      raise ValueError(f"task {self.name}: evaluator {self.evaluator!r} is not one of "
                       f"{EVALUATORS}")

  @property
  def config_block(self) -> str:
    return EVALUATOR_CONFIG[self.evaluator]


_SHARED_SPLIT = ("../shared/data's patient-level 70/15/15 split (numpy default_rng(20240607)); "
                 "its train / test files")

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("nih_detection", "nih_cxr14", ("image/encoded", "boxes/*", "split"), "detection",
         ("map", "map@0.5", "froc"), _MAP_DOC, _SHARED_SPLIT,
         description="NIH ChestX-ray14 radiologist boxes (8 findings), YOLOv3-style head"),
    Task("covid_lung_segmentation", "covid_cxr", ("image/encoded", "masks/*", "split"),
         "segmentation", ("dice", "dice_nonempty"), _DICE_DOC, _SHARED_SPLIT,
         overrides={"head": "dense", "target": "any", "require_mask": True,
                    "num_sheet_examples": 0},
         convert_flags="--norequire_report",
         description="COVID-19 image data collection lung masks (label 'Lungs'), U-Net / SETR"),
    Task("rsna_detection", "rsna_pneumonia", ("image/encoded", "boxes/*", "split"), "detection",
         ("map", "map@0.5", "froc"), _MAP_DOC,
         "official stage-2 train labels; test = the LoVT / BenchX lists (--split_source)",
         description="RSNA Pneumonia opacity boxes (negatives kept), YOLOv3-style head"),
    Task("rsna_segmentation", "rsna_pneumonia", ("image/encoded", "masks/*", "split"),
         "segmentation", ("dice", "dice_nonempty"), _DICE_DOC,
         "as rsna_detection; masks = the filled boxes (MGCA's RSNA segmentation)",
         overrides={"head": "dense", "target": "any", "require_mask": False,
                    "num_sheet_examples": 0},
         description="RSNA Pneumonia boxes as masks (empty mask = no pneumonia), U-Net / SETR"),
    Task("siim_segmentation", "siim_acr", ("image/encoded", "masks/*", "split"), "segmentation",
         ("dice", "dice_nonempty"), _DICE_DOC,
         "official / LoVT / BenchX lists (--split_source); the 70/15/15 split differs",
         overrides={"head": "dense", "target": "any", "require_mask": False,
                    "num_sheet_examples": 0},
         description="SIIM-ACR pneumothorax RLE masks (-1 = empty mask), U-Net / SETR"),
    Task("object_cxr_detection", "object_cxr", ("image/encoded", "boxes/*", "split"),
         "detection", ("map", "map@0.5", "froc"), _MAP_DOC,
         "official train / dev (dev is the test set, as LoVT and MGCA use it)",
         description="Object-CXR foreign objects (boxes; ellipses / polygons as their boxes)"),
    Task("vindr_detection", "vindr_cxr", ("image/encoded", "boxes/*", "split"), "detection",
         ("map", "map@0.5", "froc"), _MAP_DOC,
         "official train (the three radiologists' boxes fused per class: weighted box fusion, "
         "IoU > 0.5, as BenchX) / test (consensus boxes)",
         description="VinDr-CXR local lesions, YOLOv3-style head"),
    Task("covidx_classification", "covidx", ("image/encoded", "labels/values", "split"),
         "classification", ("macro_auroc",),
         "macro AUROC over the classes of labels/values (one-vs-rest; BenchX also reports "
         "accuracy)", "official COVIDx train / test lists",
         description="COVIDx classes, linear probe on the pooled feature (--finetune: tower too)"),
    Task("chexpert5x200_zeroshot", "chexpert_5x200",
         ("image/encoded", "labels/values", "split"), "zero_shot",
         ("mean_auc", "mean_accuracy"),
         "zero-shot: per class sigmoid((cos+ - cos-) / tau) of the prompt sets, AUROC per class "
         "and its mean (mean_auc); accuracy of P >= 0.5 (mean_accuracy)",
         "the 5 x 200 images as GLoRIA builds them (seeded split file)", test_split="test",
         trains=False, description="CheXpert 5x200 zero-shot classification"),
    Task("ms_cxr_grounding", "ms_cxr", ("image/encoded", "boxes/*", "split"), "grounding",
         ("cnr", "miou"),
         "phrase grounding (BioViL / hi-ml): each MS-CXR phrase (the box label "
         "'<category>: <phrase>') encoded alone as a one-sentence query; CNR of its similarity "
         "map inside vs outside the union of its own boxes, mIoU over thresholds 0.1:0.1:0.5 "
         "of the min-max normalised map",
         "MS-CXR's official split", trains=False, overrides={"source": "phrase"},
         description="MS-CXR phrase grounding (each phrase -> its own boxes)"),
)}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown downstream task {name!r}; known: {', '.join(sorted(TASKS))}")
  return TASKS[name]


__all__ = ["Task", "TASKS", "EVALUATORS", "EVALUATOR_CONFIG", "get_task"]
