"""Radiology reports and CheXpert-style labels for synthetic studies.

This module owns the text of the synthetic data set: `write_report` turns a study's findings
(`phantom.Finding`) into a MIMIC-CXR style report (FINAL REPORT, EXAMINATION, INDICATION with
de-identification marks `___`, TECHNIQUE, COMPARISON, FINDINGS, IMPRESSION) and the 14 CheXpert
labels that a labeller would read from exactly that text:
- 1.0  a finding the report states as present,
- -1.0 a finding the report hedges ("possible small left effusion"),
- 0.0  a finding the report explicitly negates ("No pneumothorax."),
- None not mentioned (blank in the CSV).
"No Finding" is 1.0 when no pathology is present or uncertain (support devices do not count,
as in CheXpert) and blank otherwise. Sentences name each finding's side, zone and size, drawn
from templates with synonyms, so the same findings read differently across studies.
Everything is a pure function of the findings and the generator's state.
"""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Optional, Sequence

import numpy as np

from data_pipeline.record_spec import CHEXPERT_LABELS
from data_pipeline.synthetic.phantom import FINDING_NAMES, Finding

# CheXpert labels a finding sets; the first one is the finding's primary label.
FINDING_LABELS: dict[str, tuple[str, ...]] = {
    "nodule": ("Lung Lesion",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "pleural_effusion": ("Pleural Effusion",),
    "pneumothorax": ("Pneumothorax",),
    "cardiomegaly": ("Cardiomegaly",),
    "atelectasis": ("Atelectasis",),
    "support_device": ("Support Devices",),
}
# Words of which at least one names the finding in any sentence the writer produces.
FINDING_SYNONYMS: dict[str, tuple[str, ...]] = {
    "nodule": ("nodule",),
    "consolidation": ("consolidation", "opacity", "airspace disease"),
    "pleural_effusion": ("effusion",),
    "pneumothorax": ("pneumothorax",),
    "cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "atelectasis": ("atelectasis",),
    "support_device": ("tube", "catheter", "line", "pacemaker"),
}
# CheXpert "No Finding" ignores support devices.
_NOT_PATHOLOGY = ("Support Devices", "No Finding")

_LOCATIONS = {
    "upper": ("{s} upper lobe", "{s} upper zone", "{s} upper lung", "{s} apex"),
    "middle": ("{s} mid lung", "{s} mid zone", "{s} mid lung field"),
    "lower": ("{s} lower lobe", "{s} base", "{s} lung base", "{s} lower zone"),
}
_RIGHT_MIDDLE = ("right middle lobe",)

_NORMAL_LUNGS = ("The lungs are clear.", "The lungs are well expanded and clear.",
                 "Lungs are well inflated and clear.")
_NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                      "Normal chest radiograph.", "No acute cardiopulmonary abnormality.")
_INDICATIONS = ("cough", "shortness of breath", "fever", "chest pain", "dyspnea", "hypoxia",
                "pre-operative evaluation", "fall", "productive cough and fever",
                "line placement")
_QUESTIONS = ("eval for pneumonia", "r/o pneumonia", "?infiltrate", "eval for acute process",
              "assess for effusion", "r/o pneumothorax", "eval for interval change")

# Negation sentences: text -> labels they set to 0 (only used when those labels are not set).
NEGATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("No pneumothorax.", ("Pneumothorax",)),
    ("There is no pneumothorax.", ("Pneumothorax",)),
    ("No pleural effusion.", ("Pleural Effusion",)),
    ("There is no pleural effusion.", ("Pleural Effusion",)),
    ("No pleural effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
    ("No focal consolidation.", ("Consolidation",)),
    ("There is no focal consolidation.", ("Consolidation",)),
    ("No pulmonary edema.", ("Edema",)),
    ("There is no pulmonary vascular congestion or edema.", ("Edema",)),
    ("Heart size is normal.", ("Cardiomegaly",)),
    ("The cardiac silhouette is normal in size.", ("Cardiomegaly",)),
    ("The mediastinal contours are unremarkable.", ("Enlarged Cardiomediastinum",)),
    ("No displaced rib fracture is seen.", ("Fracture",)),
)


@dataclasses.dataclass
class Report:
  """A written report and its labels.

  Attributes:
    text: the full report file content (what goes into sNNNNNNNN.txt).
    findings: the FINDINGS section body (one paragraph, unwrapped).
    impression: the IMPRESSION section body (unwrapped).
    labels: CHEXPERT_LABELS name -> 1.0 | 0.0 | -1.0 | None (blank).
  """
  text: str
  findings: str
  impression: str
  labels: dict[str, Optional[float]]

  def label_row(self) -> list[str]:
    """CSV cells in CHEXPERT_LABELS order: '1.0', '0.0', '-1.0' or ''."""
    return ["" if self.labels[k] is None else f"{self.labels[k]:.1f}" for k in CHEXPERT_LABELS]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _location(rng: np.random.Generator, side: Optional[str], zone: Optional[str]) -> str:
  side = side or "right"
  if zone == "middle" and side == "right" and rng.random() < 0.4:
    return _pick(rng, _RIGHT_MIDDLE)
  return _pick(rng, _LOCATIONS[zone or "middle"]).format(s=side)


def _size_word(name: str, size_mm: float) -> str:
  if name == "pleural_effusion":
    return "small" if size_mm < 35 else ("moderate" if size_mm < 70 else "large")
  if name == "pneumothorax":
    return "small" if size_mm < 20 else "moderate"
  return ""


def _cap(text: str) -> str:
  return text[:1].upper() + text[1:]


def _finding_sentences(rng: np.random.Generator, f: Finding) -> tuple[str, str]:
  """(findings-section sentence, impression phrase) for one finding."""
  side = f.side or ""
  loc = _location(rng, f.side, f.zone)
  size = int(round(f.size_mm))
  word = _size_word(f.name, f.size_mm)
  art = "an" if str(size).startswith("8") or size in (11, 18) else "a"  # "an 18 mm nodule"
  if f.name == "nodule":
    adj = _pick(rng, ("", "well-circumscribed ", "rounded ", "solid "))
    sentence = _pick(rng, (
        f"There is {art} {size} mm {adj}nodule in the {loc}.",
        f"{_cap(art)} {size} mm {adj}nodule is seen in the {loc}.",
        f"{_cap(adj)}{size} mm nodule projects over the {loc}.",
        f"In the {loc}, there is a {adj}nodule measuring {size} mm."))
    impression = _pick(rng, (f"{size} mm {loc} nodule. Recommend chest CT for further evaluation.",
                             f"{_cap(loc)} nodule measuring {size} mm.",
                             f"{size} mm nodule in the {loc}; CT is recommended."))
  elif f.name == "consolidation":
    syn = _pick(rng, ("consolidation", "opacity", "airspace disease", "airspace opacity",
                      "patchy opacity", "focal consolidation"))
    if f.uncertain:
      sentence = _pick(rng, (f"There is a possible {syn} in the {loc}.",
                             f"Possible subtle {syn} in the {loc}.",
                             f"Faint {syn} in the {loc} may be present."))
      impression = f"Possible {syn} in the {loc}."
    else:
      sentence = _pick(rng, (f"There is {syn} in the {loc}.",
                             f"{_cap(syn)} is seen in the {loc}.",
                             f"New {syn} in the {loc}, measuring approximately {size} mm.",
                             f"There is {art} {size} mm area of {syn} in the {loc}."))
      impression = _pick(rng, (f"{_cap(loc)} {syn}.", f"{_cap(syn)} in the {loc}."))
  elif f.name == "pleural_effusion":
    base = f"{word} {side} pleural effusion"
    if f.uncertain:
      sentence = _pick(rng, (f"There is possible {word} {side} effusion.",
                             f"Possible {word} {side} pleural effusion.",
                             f"Blunting of the {side} costophrenic angle may reflect a {word} "
                             "effusion."))
      impression = f"Possible {word} {side} effusion."
    else:
      sentence = _pick(rng, (f"There is a {base}.", f"{_cap(base)} is present.",
                             f"A {base} blunts the {side} costophrenic angle.",
                             f"{_cap(word)} {side} pleural effusion layers at the {side} base."))
      impression = _pick(rng, (f"{_cap(base)}.", f"{_cap(word)} {side} effusion."))
  elif f.name == "pneumothorax":
    base = f"{word} {side} apical pneumothorax"
    if f.uncertain:
      sentence = _pick(rng, (f"Possible {word} {side} apical pneumothorax.",
                             f"A {word} {side} pneumothorax cannot be excluded."))
      impression = f"Possible {word} {side} pneumothorax."
    else:
      sentence = _pick(rng, (f"There is a {base}, measuring {size} mm.",
                             f"A {word} {side} pneumothorax is seen at the {side} apex.",
                             f"{_cap(base)} is present with a visible pleural line."))
      impression = _pick(rng, (f"{_cap(word)} {side} pneumothorax.", f"{_cap(base)}."))
  elif f.name == "cardiomegaly":
    degree = _pick(rng, ("mildly", "moderately", "markedly"))
    sentence = _pick(rng, (f"The heart is {degree} enlarged.", "There is cardiomegaly.",
                           f"The cardiac silhouette is {degree} enlarged.",
                           f"{_cap(degree)} enlarged cardiac silhouette, consistent with "
                           "cardiomegaly."))
    impression = _pick(rng, ("Cardiomegaly.", f"{_cap(degree)} enlarged heart."))
  elif f.name == "atelectasis":
    kind = _pick(rng, ("linear", "plate-like", "subsegmental", "streaky"))
    if f.uncertain:
      sentence = _pick(rng, (f"Streaky densities in the {loc} likely reflect atelectasis.",
                             f"Possible {kind} atelectasis in the {loc}."))
      impression = f"Possible atelectasis in the {loc}."
    else:
      sentence = _pick(rng, (f"There is {kind} atelectasis in the {loc}.",
                             f"{_cap(kind)} atelectasis is noted at the {loc}.",
                             f"Mild {kind} atelectasis in the {loc}."))
      impression = _pick(rng, (f"{_cap(loc)} atelectasis.", f"{_cap(kind)} {loc} atelectasis."))
  elif f.name == "support_device":
    if f.device == "et_tube":
      cm = int(rng.integers(3, 7))
      sentence = _pick(rng, (f"An endotracheal tube terminates {cm} cm above the carina.",
                             f"Endotracheal tube tip is {cm} cm above the carina.",
                             f"The endotracheal tube is in standard position, {cm} cm above the "
                             "carina."))
      impression = "Endotracheal tube in appropriate position."
    elif f.device == "central_line":
      kind = _pick(rng, ("subclavian central venous catheter", "subclavian line",
                         "central venous line"))
      sentence = _pick(rng, (f"A {side} {kind} terminates in the mid SVC.",
                         f"{_cap(side)} {kind} tip projects over the SVC."))
      impression = f"{_cap(side)} central line in the SVC."
    else:
      sentence = _pick(rng, (f"A {side}-sided pacemaker is present with a lead in the right "
                             "ventricle.",
                             f"{_cap(side)} chest wall pacemaker with lead terminating in the "
                             "right ventricle."))
      impression = f"{_cap(side)}-sided pacemaker in place."
  else:
    raise ValueError(f"unknown finding name {f.name!r}; use one of {FINDING_NAMES}")
  return " ".join(sentence.split()), " ".join(impression.split())


def _wrap(text: str) -> str:
  return "\n".join(" " + line for line in textwrap.wrap(text, 70))


def write_report(findings: Sequence[Finding], rng: np.random.Generator, *,
                 examination: str = "CHEST (PA AND LAT)", technique: str = "Chest PA and lateral",
                 sex: str = "man", has_prior: bool = False) -> Report:
  """Writes a MIMIC-CXR style report for a study and labels it.

  Args:
    findings: the study's findings (rendered sizes preferred: devices and cardiomegaly get
      their size from the renderer).
    rng: the study's generator.
    examination: EXAMINATION line (also MIMIC's PerformedProcedureStepDescription).
    technique: TECHNIQUE line.
    sex: "man" | "woman" for the indication line.
    has_prior: a comparison study exists (COMPARISON names a de-identified date).

  Returns:
    The report text, its sections and the 14 CheXpert labels.
  """
  labels: dict[str, Optional[float]] = {k: None for k in CHEXPERT_LABELS}
  device_sents, lung_sents, heart_sents, impressions = [], [], [], []
  for f in findings:
    sentence, impression = _finding_sentences(rng, f)
    value = -1.0 if f.uncertain else 1.0
    for label in FINDING_LABELS[f.name]:
      current = labels[label]
      labels[label] = value if current is None else max(current, value)
    if f.name == "support_device":
      device_sents.append(sentence)
    elif f.name == "cardiomegaly":
      heart_sents.append(sentence)
    else:
      lung_sents.append(sentence)
    impressions.append(impression)

  pathology = [k for k, v in labels.items() if v is not None and k not in _NOT_PATHOLOGY]
  if not pathology:
    labels["No Finding"] = 1.0
    lung_sents.insert(0, _pick(rng, _NORMAL_LUNGS))

  negations = []
  order = rng.permutation(len(NEGATIONS))
  wanted = int(rng.integers(1, 4)) if pathology else int(rng.integers(2, 5))
  for j in order:
    text, targets = NEGATIONS[int(j)]
    if len(negations) >= wanted:
      break
    if any(labels[t] is not None for t in targets):
      continue  # already stated (or negated by an earlier sentence)
    if "Cardiomegaly" in targets and heart_sents:
      continue
    negations.append(text)
    for t in targets:
      labels[t] = 0.0

  findings_text = " ".join(device_sents + lung_sents + negations + heart_sents)
  if not pathology:
    impressions.append(_pick(rng, _NORMAL_IMPRESSION))
  if len(impressions) >= 2 and rng.random() < 0.45:
    impressions = [f"{i + 1}. {s}" for i, s in enumerate(impressions)]
    impression_block = "\n".join(" " + s for s in impressions)
  else:
    impression_block = _wrap(" ".join(impressions))
  impression = " ".join(impressions)

  reason = _pick(rng, _INDICATIONS)
  question = _pick(rng, _QUESTIONS)
  if has_prior:
    comparison = _pick(rng, ("___.", "Chest radiograph from ___.", "Prior study from ___."))
  else:
    comparison = _pick(rng, ("None.", "___.", "No prior studies available."))
  text = (
      "                                 FINAL REPORT\n"
      f" EXAMINATION:  {examination}\n \n"
      f" INDICATION:  ___ year old {sex} with {reason}  // {question}\n \n"
      f" TECHNIQUE:  {technique}\n \n"
      f" COMPARISON:  {comparison}\n \n"
      " FINDINGS:\n \n"
      f"{_wrap(findings_text)}\n \n"
      " IMPRESSION:\n \n"
      f"{impression_block}\n")
  return Report(text=text, findings=findings_text, impression=impression, labels=labels)

