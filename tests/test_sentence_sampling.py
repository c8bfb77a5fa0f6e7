"""Training-time report views (config.data.sentence_sampling; ConVIRT's one random sentence,
METHODS.md §2.4, §11.1): which sentences, fixed shapes, determinism, resume, eval unchanged."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
import pytest

from data_pipeline import pipeline
from data_pipeline import records
from data_pipeline import tfrecord
from data_pipeline import transforms
from data_pipeline.record_spec import StudyRecord
from experiments.configs import base
from experiments.configs import convirt as convirt_config

SENTENCES = ["There is no pneumothorax.", "Mild cardiomegaly is unchanged.",
             "Small left pleural effusion.", "Lungs are clear."]


def _record(i: int, n: int = 4) -> StudyRecord:
  rng = np.random.default_rng(i)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(buf, format="PNG")
  sentences = [SENTENCES[(i + j) % len(SENTENCES)] for j in range(n)]
  return StudyRecord(
      image_png=buf.getvalue(), height=40, width=48, bit_depth=8, original_height=40,
      original_width=48, image_id=f"img{i}", study_id=f"study{i}", patient_id=f"p{i}",
      report_text=" ".join(sentences), sentences=sentences, sentence_sections=["findings"] * n,
      labels=np.full(2, np.nan, np.float32), boxes=[])


def _data_cfg(**overrides):
  cfg = base.base_config().data
  cfg.image_size, cfg.max_tokens, cfg.max_sentences, cfg.max_boxes = 32, 64, 4, 2
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def test_sample_sentences_picks_one_or_an_ordered_subset_deterministically():
  s = ["a", "b", "c", "d", "e"]
  assert transforms.sample_sentences(s, "all", None) == s
  assert transforms.sample_sentences([], "random_sentence", np.random.default_rng(0)) == []
  ones = [transforms.sample_sentences(s, "random_sentence", np.random.default_rng(k))
          for k in range(40)]
  assert all(len(o) == 1 and o[0] in s for o in ones)
  assert {o[0] for o in ones} == set(s)  # every sentence gets drawn
  subsets = [transforms.sample_sentences(s, "random_subset", np.random.default_rng(k))
             for k in range(40)]
  assert all(1 <= len(x) <= 5 and x == sorted(x) and len(set(x)) == len(x) for x in subsets)
  assert len({len(x) for x in subsets}) > 2
  again = transforms.sample_sentences(s, "random_subset", np.random.default_rng(7))
  assert again == subsets[7]


def test_random_sentence_view_is_that_sentence_alone_with_the_same_shapes_and_image():
  data = records.serialize_record(_record(1))
  full = transforms.RecordTransform(_data_cfg(), ["a", "b"], train=True)
  one = transforms.RecordTransform(_data_cfg(sentence_sampling="random_sentence"), ["a", "b"],
                                   train=True)
  ex_full = full(data, np.random.default_rng(3))
  ex_one = one(data, np.random.default_rng(3))
  assert {k: v.shape for k, v in ex_one.items()} == {k: v.shape for k, v in ex_full.items()}
  np.testing.assert_array_equal(ex_one["image"], ex_full["image"])  # same image view
  assert ex_one["n_sentences"] == 1 and ex_one["sentence_mask"].tolist() == [1, 0, 0, 0]
  t2s = ex_one["token_to_sentence"]
  assert set(t2s[ex_one["attention_mask"] == 0].tolist()) == {-1}
  # The text is exactly one of the report's sentences tokenised on its own.
  candidates = [full.tokenizer.encode([s], 64, 4)["input_ids"] for s in _record(1).sentences]
  assert any(np.array_equal(ex_one["input_ids"], c) for c in candidates)
  # Evaluation always reads the whole report.
  ev_one = transforms.RecordTransform(_data_cfg(sentence_sampling="random_sentence"), ["a", "b"],
                                      train=False)(data, None)
  ev_full = transforms.RecordTransform(_data_cfg(), ["a", "b"], train=False)(data, None)
  np.testing.assert_array_equal(ev_one["input_ids"], ev_full["input_ids"])


def test_unknown_sentence_sampling_names_the_key():
  with pytest.raises(ValueError, match=r"config\.data\.sentence_sampling='one'"):
    transforms.RecordTransform(_data_cfg(sentence_sampling="one"), ["a"], train=True)


def test_sampled_sentences_are_seeded_and_resume_with_the_iterator(tmp_path):
  path = tmp_path / "train-00000-of-00001.tfrecord"
  with tfrecord.TFRecordWriter(path) as w:
    for i in range(8):
      w.write(records.serialize_record(_record(i)))
  info = {"spec_version": 1, "name": "t", "label_names": ["a", "b"],
          "splits": {"train": {"num_records": 8, "shards": [{"path": path.name,
                                                              "num_records": 8}]}}}
  (tmp_path / "dataset_info.json").write_text(json.dumps(info))
  cfg = _data_cfg(dataset_dir=str(tmp_path), sentence_sampling="random_sentence")

  def run(seed, n, state=None):
    with pipeline.make_train_iterator(cfg, global_batch_size=4, seed=seed) as it:
      if state is not None:
        it.set_state(state)
      out = [next(it) for _ in range(n)]
      return out, json.loads(json.dumps(it.get_state()))
  first, _ = run(5, 4)
  again, _ = run(5, 4)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  _, state = run(5, 2)
  resumed, _ = run(5, 2, state)
  for a, b in zip(resumed, first[2:]):
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  # 4 batches of 4 = two epochs of 8: records are redrawn, so some record's text changes.
  seen: dict[int, list] = {}
  for batch in first:
    assert (batch["n_sentences"] == 1).all()
    for sid, ids in zip(batch["study_id"].tolist(), batch["input_ids"]):
      seen.setdefault(sid, []).append(ids)
  assert all(len(v) == 2 for v in seen.values())
  assert any(not np.array_equal(a, b) for a, b in seen.values())


def test_convirt_config_samples_one_sentence_per_step():
  assert convirt_config.get_config().data.sentence_sampling == "random_sentence"
  assert base.base_config().data.sentence_sampling == "all"
