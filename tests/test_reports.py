"""Report section parsing, cleaning and sentence splitting (hand-written MIMIC-style + real IU)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from data_pipeline import errors
from data_pipeline import reports

MIMIC_REPORT = """\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with ?pleural effusion // ?pleural effusion

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 Cardiac size cannot be evaluated.  Large left pleural effusion is new.  Small
 right effusion is new.  A nodule in the right upper lobe measures 5.2 cm.

 The upper lungs are clear.

 IMPRESSION:

 1. Mild edema. 2. No effusion.

 NOTIFICATION:  The findings were discussed with Dr. ___ by ___ on the telephone at 10:30 a.m.
"""

_LIST_START = re.compile(r"^\(?\d{1,2}[.)]\s")


def _iu_rows(shared_data):
  with open(shared_data / "iu_xray_reports" / "test.jsonl") as f:
    return [json.loads(line) for line in f]


def test_mimic_report_findings_section_spans_lines_and_paragraphs():
  report = reports.parse_report(MIMIC_REPORT)
  assert report.findings == ("Cardiac size cannot be evaluated. Large left pleural effusion is "
                             "new. Small right effusion is new. A nodule in the right upper lobe "
                             "measures 5.2 cm. The upper lungs are clear.")


def test_mimic_report_impression_ends_at_the_notification_header():
  report = reports.parse_report(MIMIC_REPORT)
  assert report.impression == "1. Mild edema. 2. No effusion."
  assert not report.used_fallback


def test_mimic_report_text_is_findings_then_impression():
  report = reports.parse_report(MIMIC_REPORT)
  assert report.text == report.findings + " " + report.impression
  assert "INDICATION" not in report.text and "Dr." not in report.text


def test_mimic_report_sentences_carry_their_section():
  report = reports.parse_report(MIMIC_REPORT)
  assert report.sentences == [
      "Cardiac size cannot be evaluated.", "Large left pleural effusion is new.",
      "Small right effusion is new.", "A nodule in the right upper lobe measures 5.2 cm.",
      "The upper lungs are clear.", "Mild edema.", "No effusion."]
  assert report.sentence_sections == ["findings"] * 5 + ["impression"] * 2


def test_headers_are_found_in_any_case_and_conclusion_counts_as_impression():
  report = reports.parse_report("Findings: Heart is normal.\nconclusion: No acute disease.")
  assert report.findings == "Heart is normal."
  assert report.impression == "No acute disease."


def test_header_after_a_sentence_on_the_same_line_starts_a_section():
  report = reports.parse_report("INDICATION: cough. FINDINGS: Lungs clear. IMPRESSION: Normal.")
  assert (report.findings, report.impression) == ("Lungs clear.", "Normal.")


def test_upper_case_header_in_the_middle_of_a_line_starts_a_section():
  report = reports.parse_report("COMPARISON: ___ FINDINGS: Lungs clear IMPRESSION: Normal")
  assert (report.findings, report.impression) == ("Lungs clear", "Normal")


def test_header_word_inside_a_sentence_is_not_a_header():
  report = reports.parse_report("FINDINGS: No change in comparison: stable. Impression of "
                                "fluid: none.")
  assert report.findings == "No change in comparison: stable. Impression of fluid: none."


def test_recommendation_header_ends_the_impression():
  report = reports.parse_report("IMPRESSION: Nodule.\nRECOMMENDATION(S): CT in 3 months.")
  assert report.impression == "Nodule."


def test_impression_only_report_is_not_a_fallback():
  report = reports.parse_report("INDICATION: fever\n\nIMPRESSION: No pneumonia.")
  assert (report.findings, report.impression, report.used_fallback) == ("", "No pneumonia.",
                                                                        False)
  assert report.sentence_sections == ["impression"]


def test_findings_only_report_is_not_a_fallback():
  report = reports.parse_report("COMPARISON: None.\nFINDINGS: Heart normal. Lungs clear.")
  assert report.impression == "" and not report.used_fallback
  assert report.sentences == ["Heart normal.", "Lungs clear."]


def test_report_without_sections_falls_back_to_the_last_non_header_paragraphs():
  raw = ("FINAL REPORT\nEXAMINATION: Chest radiograph.\n\nINDICATION: Cough.\n\n"
         "COMPARISON: ___.\n\nHeart size is normal.\n\nNo pleural effusion.\n")
  report = reports.parse_report(raw)
  assert report.used_fallback
  assert report.text == "Heart size is normal. No pleural effusion."
  assert report.sentence_sections == ["other", "other"]
  assert (report.findings, report.impression) == ("", "")


def test_report_of_only_indication_and_comparison_raises_report_error():
  with pytest.raises(errors.ReportError, match="no FINDINGS/IMPRESSION"):
    reports.parse_report("INDICATION: Cough.\n\nCOMPARISON: None.", item_id="s1")


def test_empty_report_raises_report_error_naming_the_item():
  with pytest.raises(errors.ReportError, match="empty") as info:
    reports.parse_report(" \n\t ", item_id="s50414267")
  assert info.value.item == "s50414267"


def test_invalid_utf8_bytes_raise_report_error_naming_the_byte_position():
  with pytest.raises(errors.ReportError, match="byte 10 \\(0xff\\)"):
    reports.parse_report(b"FINDINGS: \xff ok.", item_id="r")


def test_utf8_bytes_parse_like_text():
  raw = "FINDINGS: Heart normal.\nIMPRESSION: No acute disease."
  assert reports.parse_report(raw.encode()) == reports.parse_report(raw)


def test_report_with_only_deidentification_marks_raises_report_error():
  with pytest.raises(errors.ReportError):
    reports.parse_report("FINDINGS: ___ XXXX ___.")


def test_clean_text_removes_deidentification_marks_and_spacing():
  assert reports.clean_text("Dr. ___ was  paged at ___.\n\nXXXX basilar   atelectasis _ .") == (
      "Dr. was paged at. basilar atelectasis.")


def test_clean_text_removes_xxxx_in_hyphenated_words():
  assert reports.clean_text("XXXX-year-old female, XXXX XXXX.") == "year-old female."


def test_clean_text_joins_words_hyphenated_across_a_line_break():
  assert reports.clean_text("Well-\n circumscribed nodule") == "Well-circumscribed nodule"


def test_clean_text_keeps_case_and_decimals():
  text = "Nodule Measures .5 cm AND 5.2 cm"
  assert reports.clean_text(text) == text


def test_split_sentences_keeps_abbreviations_inside_sentences():
  text = "Discussed with Dr. Smith, e.g. by phone. There is approx. 2 cm of fluid."
  assert reports.split_sentences(text) == ["Discussed with Dr. Smith, e.g. by phone.",
                                           "There is approx. 2 cm of fluid."]


def test_split_sentences_ends_a_sentence_after_cm_when_a_new_one_starts():
  assert reports.split_sentences("Nodule of 1.2 cm. No effusion. Tube 3 cm. above carina.") == [
      "Nodule of 1.2 cm.", "No effusion.", "Tube 3 cm. above carina."]


def test_split_sentences_never_splits_decimals():
  assert reports.split_sentences("A 5.2 cm mass. Another 0.5 x 1.25 cm nodule.") == [
      "A 5.2 cm mass.", "Another 0.5 x 1.25 cm nodule."]


def test_split_sentences_strips_list_numbers():
  assert reports.split_sentences("1. Mild edema. 2. No effusion.") == ["Mild edema.",
                                                                      "No effusion."]


def test_split_sentences_splits_numbered_items_without_full_stops():
  assert reports.split_sentences("1. Mild edema 2) No effusion\n3. Stable heart") == [
      "Mild edema", "No effusion", "Stable heart"]


def test_split_sentences_keeps_times():
  assert reports.split_sentences("Paged at 10:30 a.m. on the ward. Seen at 4 p.m. Doing well.") == [
      "Paged at 10:30 a.m. on the ward.", "Seen at 4 p.m.", "Doing well."]


def test_split_sentences_drops_punctuation_only_pieces():
  assert reports.split_sentences("No effusion. . ... ; Heart normal.") == ["No effusion.",
                                                                          "Heart normal."]


def test_split_sentences_treats_blank_lines_as_boundaries():
  assert reports.split_sentences("Heart normal\n\nLungs clear") == ["Heart normal", "Lungs clear"]


def test_report_from_sections_builds_findings_and_impression():
  report = reports.report_from_sections("Heart normal. XXXX lungs clear.", "No acute disease.")
  assert report.text == "Heart normal. lungs clear. No acute disease."
  assert report.sentence_sections == ["findings", "findings", "impression"]
  assert not report.used_fallback


def test_report_from_sections_accepts_a_missing_findings_section():
  report = reports.report_from_sections(None, "Normal chest.")
  assert (report.findings, report.impression) == ("", "Normal chest.")


def test_report_from_sections_with_neither_section_raises_report_error():
  with pytest.raises(errors.ReportError, match="both findings and impression") as info:
    reports.report_from_sections(None, "  ", item_id="iu-673")
  assert info.value.item == "iu-673"


def test_real_iu_reports_parse_into_plausible_clean_sentences(shared_data):
  rows = _iu_rows(shared_data)
  counts, failed = [], []
  for row in rows:
    if not (row["findings"] or "").strip() and not (row["impression"] or "").strip():
      with pytest.raises(errors.ReportError):
        reports.report_from_sections(row["findings"], row["impression"])
      failed.append(row["report_uid"])
      continue
    report = reports.report_from_sections(row["findings"], row["impression"],
                                          item_id=str(row["report_uid"]))
    counts.append(len(report.sentences))
    assert len(report.sentences) == len(report.sentence_sections)
    for sentence in report.sentences:
      assert sentence.strip() and re.search("[A-Za-z]", sentence), row["report_uid"]
      assert not _LIST_START.match(sentence), (row["report_uid"], sentence)
      assert "XXXX" not in sentence and "__" not in sentence
    for number in re.findall(r"\d+\.\d+", report.text):
      assert any(number in s for s in report.sentences), (row["report_uid"], number)
  counts = np.array(counts)
  assert len(failed) <= 5  # IU rows with neither section (4 in the test split)
  assert np.mean((counts >= 2) & (counts <= 30)) > 0.95
  print(f"IU test: {len(counts)} parsed, {len(failed)} without text; sentences per report "
        f"min {counts.min()} median {np.median(counts):.0f} mean {counts.mean():.2f} "
        f"max {counts.max()}")
