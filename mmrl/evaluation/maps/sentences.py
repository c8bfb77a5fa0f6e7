"""The sentences a sentence map is scored for, and the boxes each one is scored against.

Shared by the localisation and grounding evaluators (mmrl/evaluation/evaluators): pure Python and
numpy, no model.

Which sentence is scored against which box (`LocalisationEvaluator`):
  synthetic (report sentences)  each report sentence of a held-out synthetic study is decoded
      from its tokens and matched to the boxes of the findings it names: a finding's box label
      (CheXpert name) -> the synthetic finding it comes from (report_writer.FINDING_LABELS) ->
      the words the report writer always uses for it (report_writer.FINDING_SYNONYMS), matched
      as whole words. Negated sentences (containing the word 'no') are skipped; 'pleural line'
      does not count as a device 'line'. The sentence's ground truth is the union of the boxes
      of every finding it names (a report sentence may name a finding seen twice).
  synthetic_templated / nih_templated  one TEMPLATED sentence per box, written by us from the
      box's label and position, never by a radiologist: "There is a nodule in the right upper
      zone." (`templated_sentence`): the side from the box centre (image left = the patient's
      right on a frontal film), the zone from the centre's third of the image height; labels
      without a location (cardiomegaly) read "There is cardiomegaly.". Each sentence is encoded
      alone as a one-sentence report with its own image, and its ground truth is its box. NIH
      ChestX-ray14 has no reports, so its localisation uses only these templated sentences.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

# label -> (phrase, has a location) for the templated sentences (CheXpert and NIH names).
TEMPLATE_PHRASES: dict[str, tuple[str, bool]] = {
    "Atelectasis": ("atelectasis", True), "Cardiomegaly": ("cardiomegaly", False),
    "Consolidation": ("consolidation", True), "Edema": ("edema", True),
    "Enlarged Cardiomediastinum": ("an enlarged cardiomediastinum", False),
    "Fracture": ("a fracture", True), "Lung Lesion": ("a nodule", True),
    "Lung Opacity": ("an opacity", True), "Pleural Effusion": ("a pleural effusion", True),
    "Effusion": ("a pleural effusion", True), "Pleural Other": ("a pleural abnormality", True),
    "Pneumonia": ("pneumonia", True), "Pneumothorax": ("a pneumothorax", True),
    "Support Devices": ("a support device", True), "Infiltration": ("an infiltrate", True),
    "Mass": ("a mass", True), "Nodule": ("a nodule", True), "Emphysema": ("emphysema", True),
    "Fibrosis": ("fibrosis", True), "Hernia": ("a hernia", True),
    "Pleural_Thickening": ("pleural thickening", True),
}


MIDLINE_MARGIN = 0.1  # a box straddling x = 0.5 with its centre this close to it has no side
_SWAP = {"right": "left", "left": "right"}


def box_location(box: Sequence[float]) -> tuple[str, str]:
  """(patient side, zone) of a normalised box on a frontal film: image left is the patient's
  right ('' for a midline box: it straddles x = 0.5 and its centre is within MIDLINE_MARGIN of
  it, e.g. an endotracheal tube); the zone is the third of the image height holding the centre."""
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
  side = "right" if cx < 0.5 else "left"
  if xmin < 0.5 < xmax and abs(cx - 0.5) < MIDLINE_MARGIN:
    side = ""
  zone = "upper" if cy < 1 / 3 else ("mid" if cy < 2 / 3 else "lower")
  return side, zone


def templated_sentence(label: str, box: Sequence[float], *, location: bool = True,
                       swap_sides: bool = False) -> str:
  """The TEMPLATED sentence for a box, e.g. 'There is a nodule in the right upper zone.'

  location=False gives the location-free sentence ('There is a nodule.'); swap_sides=True
  names the other side ('left' <-> 'right'), for the swap test."""
  phrase, located = TEMPLATE_PHRASES.get(label, (label.lower().replace("_", " "), True))
  if not located or not location:
    return f"There is {phrase}."
  side, zone = box_location(box)
  if swap_sides:
    side = _SWAP.get(side, side)
  where = f"{side} {zone}" if side else zone
  return f"There is {phrase} in the {where} zone."


def has_side(label: str, box: Sequence[float]) -> bool:
  """Whether the templated sentence of (label, box) names a side (the swap test needs one)."""
  _, located = TEMPLATE_PHRASES.get(label, ("", True))
  return bool(located and box_location(box)[0])


def finding_patterns(label_names: Sequence[str]) -> dict[int, re.Pattern]:
  """label index -> whole-word regex of the words the synthetic report writer uses for it."""
  from data_pipeline.synthetic import report_writer  # pylint: disable=g-import-not-at-top
  by_label = {labels[0]: report_writer.FINDING_SYNONYMS[name]
              for name, labels in report_writer.FINDING_LABELS.items()}
  out = {}
  for i, label in enumerate(label_names):
    words = by_label.get(label)
    if words:
      out[i] = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
  return out


_NEGATION = re.compile(r"\bno\b")


def match_sentence(sentence: str, box_labels: Sequence[int],
                   patterns: Mapping[int, re.Pattern]) -> list[int]:
  """Indices of the boxes whose finding `sentence` names (module docstring); [] if negated."""
  text = sentence.lower().replace("pleural line", "pleural")
  if _NEGATION.search(text):
    return []
  named = {label for label, pat in patterns.items() if pat.search(text)}
  return [j for j, label in enumerate(box_labels) if int(label) in named]


def decode_sentences(tokenizer: Any, input_ids: np.ndarray, token_to_sentence: np.ndarray,
                     attention_mask: np.ndarray, num_sentences: int) -> list[str]:
  """The text of each sentence slot of one row (a `tokenizers.Tokenizer`; '' for empty slots)."""
  out = []
  for s in range(num_sentences):
    ids = input_ids[(token_to_sentence == s) & (attention_mask > 0)]
    out.append(tokenizer.decode([int(i) for i in ids]) if ids.size else "")
  return out


__all__ = ["TEMPLATE_PHRASES", "MIDLINE_MARGIN", "box_location", "templated_sentence", "has_side",
           "finding_patterns", "match_sentence", "decode_sentences"]
