"""Radiology-report text: section parsing, cleaning and sentence splitting.

Owns how a report becomes the training text of a record (`report/text`, `report/findings`,
`report/impression`, `report/sentences`, `report/sentence_section` of record_spec):

* `parse_report` reads MIMIC-CXR style free text with `FINDINGS:` / `IMPRESSION:` /
  `CONCLUSION:` headers (any case at a line start or after a sentence end, anywhere in upper
  case; sections span lines and paragraphs). Other headers (EXAMINATION, INDICATION, HISTORY,
  TECHNIQUE, COMPARISON, NOTIFICATION, RECOMMENDATION(S), ...) end a section. With neither
  FINDINGS nor IMPRESSION, the last paragraph(s) that are not EXAMINATION/INDICATION/
  COMPARISON-like are used (`used_fallback=True`).
* `report_from_sections` does the same for manifests that are already split (IU X-ray).
* `clean_text` removes de-identification marks (`___`, `XXXX`), stray underscores and repeated
  whitespace, keeping the case (the tokeniser lowercases).
* `split_sentences` survives abbreviations (Dr., e.g., approx., cm.), decimals (5.2 cm), times
  (10:30 a.m.) and numbered lists ("1. Mild edema. 2. No effusion." -> two sentences without the
  numbers), and drops empty/punctuation-only pieces.
"""
from __future__ import annotations

import dataclasses
import re

from data_pipeline import errors

# Header name (lower case, single spaces) -> section kind.
_FINDINGS, _IMPRESSION, _META, _OTHER = "findings", "impression", "meta", "other"
_HEADERS: dict[str, str] = {
    "findings": _FINDINGS, "finding": _FINDINGS, "findings and impression": _FINDINGS,
    "findings/impression": _FINDINGS,
    "impression": _IMPRESSION, "impressions": _IMPRESSION, "conclusion": _IMPRESSION,
    "conclusions": _IMPRESSION,
    # Meta headers: never training text, not even in the fallback.
    "examination": _META, "examinations": _META, "exam": _META, "type of examination": _META,
    "indication": _META, "indications": _META, "clinical indication": _META,
    "history": _META, "clinical history": _META, "clinical information": _META,
    "reason for exam": _META, "reason for examination": _META, "reason for study": _META,
    "comparison": _META, "comparisons": _META, "technique": _META, "procedure": _META,
    # Other headers: end a section; their text may serve as the fallback.
    "notification": _OTHER, "notifications": _OTHER, "recommendation": _OTHER,
    "recommendations": _OTHER, "recommendation(s)": _OTHER, "addendum": _OTHER,
    "wet read": _OTHER,
}
_HEADER_NAMES = sorted(_HEADERS, key=len, reverse=True)
_HEADER_ALT = "|".join(re.escape(h).replace(r"\ ", r"[ \t]+") for h in _HEADER_NAMES)
# "NAME:" anywhere (context checked in code), or NAME alone on its line.
_HEADER_COLON = re.compile(rf"(?i)(?<![\w/])({_HEADER_ALT})[ \t]*:")
_HEADER_LINE = re.compile(rf"(?im)^[ \t]*({_HEADER_ALT})[ \t]*$")
_TITLE_LINE = re.compile(r"(?im)^[ \t]*(final report|preliminary report|final|report)[ \t]*$")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")

# Sentence splitting.
_NEVER_END = frozenset({
    "dr.", "drs.", "mr.", "mrs.", "ms.", "prof.", "st.", "e.g.", "i.e.", "eg.", "ie.", "approx.",
    "vs.", "cf.", "fig.", "figs.", "no.", "nos.", "resp.", "incl.", "ca.", "c.f.", "viz.", "pt.",
    "pts.", "sr.", "jr.", "dept.", "ref.",
})
_MAY_END = frozenset({"cm.", "mm.", "m.", "a.m.", "p.m.", "am.", "pm.", "etc.", "in.", "hr.",
                      "hrs.", "min.", "sec.", "kg.", "ml.", "cc."})
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")
_LIST_MARKER = re.compile(r"(?<!\S)\(?(\d{1,2})[.)]\s+(?=[A-Za-z(\[\"'])")
_LEADING_MARKER = re.compile(r"^(?:\(?\d{1,2}[.)]\s+|[-*\u2022]\s+|[,;:.\s]+)+")
_HAS_LETTER = re.compile(r"[A-Za-z]")

# Cleaning.
_DEID_UNDERSCORE = re.compile(r"_{2,}")
# "XXXX", "XXXX XXXX", "XXXX-year-old", "XXXX's", "XXXX't", "at XXXXPM", "XXXXyo".
_DEID_X = re.compile(r"X{3,}(?:[-/]X{3,})*(?:'[st]\b|'|-)?")
_HYPHEN_LINE_BREAK = re.compile(r"(?<=[A-Za-z])-[ \t]*\n[ \t]*(?=[a-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WS = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,;:!?)\]]|\.(?!\d))")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_REPEATED_COMMA = re.compile(r"([,;])(?:\s*[,;])+")
_COMMA_BEFORE_STOP = re.compile(r"[,;]\s*([.:!?])")
_REPEATED_STOP = re.compile(r"\.(?:\s*\.)+")
_LEADING_PUNCT = re.compile(r"^[\s,;:.)\]-]+")


@dataclasses.dataclass
class ParsedReport:
  """A report reduced to what the record stores."""
  findings: str  # cleaned FINDINGS section ('' if none)
  impression: str  # cleaned IMPRESSION/CONCLUSION section ('' if none)
  text: str  # cleaned text used for training: findings + impression (or the fallback)
  sentences: list[str]  # sentences of `text`, in order
  sentence_sections: list[str]  # 'findings' | 'impression' | 'other', one per sentence
  used_fallback: bool  # True when no FINDINGS/IMPRESSION section (with text) was found


def parse_report(raw: str | bytes, *, item_id: str | None = None) -> ParsedReport:
  """Parses a free-text (MIMIC-CXR style) report into sections and sentences.

  Raises:
    errors.ReportError: empty report, bytes that are not UTF-8, or no sentence after cleaning.
  """
  item = "<report>" if item_id is None else item_id
  text = _as_text(raw, item)
  if not text.strip():
    raise errors.ReportError(item, "report is empty or whitespace only")
  text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
  text = _TITLE_LINE.sub("", text)

  sections = _split_sections(text)
  findings = [p for kind, p in sections if kind == _FINDINGS]
  impression = [p for kind, p in sections if kind == _IMPRESSION]
  report = _assemble([("findings", findings), ("impression", impression)], used_fallback=False)
  if report.sentences:
    return report

  # Neither section (or both empty): the trailing non-meta paragraphs, else any non-meta ones.
  paragraphs = [(kind, p) for kind, body in sections for p in _paragraphs(body)]
  trailing: list[str] = []
  for kind, p in reversed(paragraphs):
    if kind == _META:
      if trailing:
        break
      continue
    trailing.insert(0, p)
  if not _assemble([("other", trailing)], used_fallback=True).sentences:
    trailing = [p for kind, p in paragraphs if kind != _META]
  report = _assemble([("other", trailing)], used_fallback=True)
  if not report.sentences:
    raise errors.ReportError(
        item, "no FINDINGS/IMPRESSION section and no usable text outside EXAMINATION/"
        "INDICATION/HISTORY/TECHNIQUE/COMPARISON sections (after removing de-identification "
        "marks)")
  return report


def report_from_sections(findings: str | None, impression: str | None, *,
                         item_id: str | None = None) -> ParsedReport:
  """Builds a ParsedReport from pre-split sections (IU X-ray style manifests).

  Raises:
    errors.ReportError: both sections missing/empty, or no sentence after cleaning.
  """
  item = "<report>" if item_id is None else item_id
  findings = _as_text(findings, item) if findings is not None else ""
  impression = _as_text(impression, item) if impression is not None else ""
  if not findings.strip() and not impression.strip():
    raise errors.ReportError(item, "both findings and impression are missing or empty")
  report = _assemble([("findings", _paragraphs(findings)),
                      ("impression", _paragraphs(impression))], used_fallback=False)
  if not report.sentences:
    raise errors.ReportError(item, "findings/impression contain no sentence after removing "
                             "de-identification marks and punctuation")
  return report


def clean_text(text: str) -> str:
  """Removes de-identification marks, stray underscores and repeated whitespace; keeps case.

  Line breaks become spaces, except after a hyphen that ends a line ("well-" + newline +
  "circumscribed" -> "well-circumscribed").
  """
  text = _CONTROL.sub(" ", text)
  text = _HYPHEN_LINE_BREAK.sub("-", text)  # "well-\n circumscribed" -> "well-circumscribed"
  text = _DEID_UNDERSCORE.sub(" ", text)
  text = _DEID_X.sub(" ", text)
  text = text.replace("_", " ")
  text = _WS.sub(" ", text)
  text = _EMPTY_BRACKETS.sub(" ", text)
  text = _SPACE_AFTER_OPEN.sub(r"\1", text)
  text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
  text = _REPEATED_COMMA.sub(r"\1", text)
  text = _COMMA_BEFORE_STOP.sub(r"\1", text)
  text = _REPEATED_STOP.sub(".", text)
  text = _WS.sub(" ", text).strip()
  return _LEADING_PUNCT.sub("", text)


def split_sentences(text: str) -> list[str]:
  """Splits text into sentences (blank lines are boundaries too); see the module docstring."""
  out: list[str] = []
  for para in _PARAGRAPH_BREAK.split(text):
    para = _WS.sub(" ", para).strip()
    if not para:
      continue
    for item in _split_list_items(para):
      for sentence in _split_at_stops(item):
        sentence = _LEADING_MARKER.sub("", sentence).strip()
        if _HAS_LETTER.search(sentence):
          out.append(sentence)
  return out


def _as_text(raw: str | bytes, item: str) -> str:
  if isinstance(raw, (bytes, bytearray, memoryview)):
    data = bytes(raw)
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise errors.ReportError(
          item, f"report bytes are not valid UTF-8: byte {e.start} (0x{data[e.start]:02x}) "
          f"{e.reason}") from e
    return text.lstrip("\ufeff")
  if not isinstance(raw, str):
    raise errors.ReportError(item, f"report must be str or bytes, got {type(raw).__name__}")
  return raw


def _split_sections(text: str) -> list[tuple[str, str]]:
  """Cuts text at headers into (kind, body); text before the first header is kind 'other'.

  A META section (indication, comparison, ...) ends at its first paragraph break; what follows
  until the next header is headerless text (kind 'other').
  """
  cuts: list[tuple[int, int, str]] = []  # (header start, body start, kind)
  for m in _HEADER_COLON.finditer(text):
    before = text[:m.start()]
    line_start = before.rfind("\n") + 1
    prefix = before[line_start:]
    at_line_start = not prefix.strip()
    after_sentence = prefix.rstrip()[-1:] in (".", "!", "?") and prefix[-1:].isspace()
    if at_line_start or after_sentence or m.group(1).isupper():
      cuts.append((m.start(), m.end(), _HEADERS[_WS.sub(" ", m.group(1).lower())]))
  for m in _HEADER_LINE.finditer(text):
    cuts.append((m.start(), m.end(), _HEADERS[_WS.sub(" ", m.group(1).lower())]))
  cuts.sort()
  sections: list[tuple[str, str]] = []
  prev_end, prev_kind = 0, _OTHER
  for start, end, kind in cuts:
    if start < prev_end:  # overlapping matches of the two patterns
      continue
    sections.extend(_section(prev_kind, text[prev_end:start]))
    prev_end, prev_kind = end, kind
  sections.extend(_section(prev_kind, text[prev_end:]))
  return sections


def _section(kind: str, body: str) -> list[tuple[str, str]]:
  if kind != _META:
    return [(kind, body)]
  stripped = body.lstrip(" \n")
  m = _PARAGRAPH_BREAK.search(stripped)
  if m is None:
    return [(kind, body)]
  return [(kind, stripped[:m.start()]), (_OTHER, stripped[m.end():])]


def _paragraphs(body: str) -> list[str]:
  return [p for p in _PARAGRAPH_BREAK.split(body) if p.strip()]


def _assemble(parts: list[tuple[str, list[str]]], *, used_fallback: bool) -> ParsedReport:
  """Cleans each paragraph, joins sections, and splits sentences per paragraph."""
  texts: dict[str, str] = {}
  sentences: list[str] = []
  sections: list[str] = []
  for name, paragraphs in parts:
    cleaned = [c for c in (clean_text(p) for p in paragraphs) if c]
    kept = []
    for c in cleaned:
      s = split_sentences(c)
      if s:
        kept.append(c)
        sentences.extend(s)
        sections.extend([name] * len(s))
    texts[name] = " ".join(kept)
  text = " ".join(t for t in texts.values() if t)
  return ParsedReport(
      findings=texts.get("findings", ""), impression=texts.get("impression", ""), text=text,
      sentences=sentences, sentence_sections=sections, used_fallback=used_fallback)


def _split_list_items(para: str) -> list[str]:
  """Splits at list numbers '1.', '2)', '(3)'; a number counts if it starts the paragraph or
  continues the count (1, 2, 3 ...), so '5.2 cm' and 'level 12.' stay intact."""
  pieces: list[str] = []
  expected, last = 1, 0
  for m in _LIST_MARKER.finditer(para):
    number = int(m.group(1))
    if m.start() == 0 or number == expected:
      pieces.append(para[last:m.start()])
      last = m.end()
      expected = number + 1
  pieces.append(para[last:])
  return [p.strip() for p in pieces if p.strip()]


def _split_at_stops(text: str) -> list[str]:
  out: list[str] = []
  last = 0
  for m in _SENTENCE_END.finditer(text):
    if m.end() >= len(text):
      break
    if _is_boundary(text, m):
      out.append(text[last:m.end()].strip())
      last = m.end()
  out.append(text[last:].strip())
  return [s for s in out if s]


def _is_boundary(text: str, m: re.Match) -> bool:
  punct = text[m.start()]
  if punct in "!?" or "!" in m.group() or "?" in m.group():
    return True
  word_start = text.rfind(" ", 0, m.start()) + 1
  token = text[word_start:m.start() + 1].lstrip("([{\"'").lower()
  nxt = text[m.end()]
  if token in _NEVER_END:
    return False
  if re.fullmatch(r"[a-z]\.", token):  # an initial ("J. Smith") or a lettered item
    return False
  if token in _MAY_END or re.fullmatch(r"(?:[a-z]\.){2,}", token):
    return nxt.isupper() or nxt.isdigit()
  return True
