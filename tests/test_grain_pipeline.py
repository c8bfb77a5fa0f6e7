"""Tests of the Grain source and pipeline: shapes, shuffle, sharding, resume, bad records."""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
from PIL import Image
import pytest

from data_pipeline import batch_spec
from data_pipeline import errors
from data_pipeline import grain_source
from data_pipeline import pipeline
from data_pipeline import records
from data_pipeline import tfrecord
from data_pipeline import transforms
from data_pipeline.record_spec import Box, StudyRecord
from experiments.configs import base

LABELS = ["Atelectasis", "Cardiomegaly", "Edema"]
SENTENCES = ["There is no pneumothorax.", "Mild cardiomegaly is unchanged.",
             "Small left pleural effusion.", "Lungs are clear.", "No acute process."]


def _png(rng: np.random.Generator, h: int, w: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _record(i: int, rng: np.random.Generator, png: bytes | None = None) -> StudyRecord:
  n = 1 + i % 4
  sentences = [SENTENCES[(i + j) % len(SENTENCES)] for j in range(n)]
  labels = np.array([1.0, np.nan, -1.0], np.float32) if i % 2 else np.full(3, np.nan, np.float32)
  return StudyRecord(
      image_png=png if png is not None else _png(rng, 40, 48), height=40, width=48, bit_depth=8,
      original_height=40, original_width=48, image_id=f"img{i}", study_id=f"study{i}",
      patient_id=f"patient{i // 2}", report_text=" ".join(sentences), sentences=sentences,
      sentence_sections=["findings"] * n, labels=labels,
      boxes=[Box("Cardiomegaly", 0.3, 0.4, 0.7, 0.8)] if i % 3 == 0 else [])


def write_dataset(root: pathlib.Path, num_records: int, *, num_shards: int = 2,
                  corrupt: tuple[int, ...] = (), garbage_png: tuple[int, ...] = ()
                  ) -> pathlib.Path:
  """A tiny converted data set; `corrupt` records get a flipped data byte (CRC fails)."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  shards = []
  per_shard = -(-num_records // num_shards)
  for s in range(num_shards):
    ids = range(s * per_shard, min(num_records, (s + 1) * per_shard))
    path = root / f"train-{s:05d}-of-{num_shards:05d}.tfrecord"
    with tfrecord.TFRecordWriter(path) as w:
      for i in ids:
        png = b"this is not a png" if i in garbage_png else None
        w.write(records.serialize_record(_record(i, rng, png)))
    shards.append({"path": path.name, "num_records": len(ids)})
    index = tfrecord.read_index(path)
    raw = bytearray(path.read_bytes())
    for local, i in enumerate(ids):
      if i in corrupt:
        offset, length = index[local]
        raw[offset + 12 + length // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
  info = {"spec_version": 1, "name": "tiny", "label_names": LABELS,
          "splits": {"train": {"num_records": num_records, "shards": shards}}}
  (root / "dataset_info.json").write_text(json.dumps(info))
  return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> pathlib.Path:
  return write_dataset(tmp_path_factory.mktemp("tiny"), 24)


def data_config(dataset_dir, **overrides):
  cfg = base.base_config().data
  cfg.dataset_dir = str(dataset_dir)
  cfg.image_size = 32
  cfg.max_tokens = 64
  cfg.max_sentences = 4
  cfg.max_boxes = 2
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_source_reads_every_record_and_names_it(tiny_dir):
  shards = sorted(tiny_dir.glob("*.tfrecord"))
  source = grain_source.TFRecordIndexSource(shards)
  assert len(source) == 24
  assert records.parse_record(source[13]).image_id == "img13"
  assert source.item_name(13) == f"{shards[1]}#1"
  assert "num_records=24" in repr(source)


def test_source_pickles_without_open_files(tiny_dir):
  import pickle
  source = grain_source.TFRecordIndexSource(sorted(tiny_dir.glob("*.tfrecord")))
  _ = source[0]
  clone = pickle.loads(pickle.dumps(source))
  assert clone[5] == source[5]


def test_train_batches_have_exactly_the_contract_shapes_and_dtypes(tiny_dir):
  cfg = data_config(tiny_dir)
  with pipeline.make_train_iterator(cfg, global_batch_size=4) as it:
    batch = next(it)
  b, s, l, k, nb = 4, 32, 64, 4, 2
  expected = {
      "image": ((b, s, s, 1), np.float32), "input_ids": ((b, l), np.int32),
      "attention_mask": ((b, l), np.int32), "token_to_sentence": ((b, l), np.int32),
      "token_to_word": ((b, l), np.int32), "sentence_mask": ((b, k), np.bool_),
      "n_sentences": ((b,), np.int32), "labels": ((b, 3), np.float32),
      "label_mask": ((b, 3), np.bool_), "study_id": ((b,), np.int32),
      "patient_id": ((b,), np.int32), "boxes": ((b, nb, 4), np.float32),
      "box_labels": ((b, nb), np.int32), "box_mask": ((b, nb), np.bool_),
      "valid": ((b,), np.bool_),
  }
  assert set(batch) == set(batch_spec.BATCH_KEYS)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape, key
    assert batch[key].dtype == dtype, key
  assert batch["valid"].all()


def test_padding_tokens_have_no_sentence_and_no_word(tiny_dir):
  with pipeline.make_train_iterator(data_config(tiny_dir), global_batch_size=4) as it:
    batch = next(it)
  pad = batch["attention_mask"] == 0
  assert pad.any()
  assert (batch["token_to_sentence"][pad] == -1).all()
  assert (batch["token_to_word"][pad] == -1).all()
  assert (batch["n_sentences"] == batch["sentence_mask"].sum(1)).all()


def _epoch_ids(dataset_dir, seed, batches=6, **kw):
  with pipeline.make_train_iterator(data_config(dataset_dir), global_batch_size=4, seed=seed,
                                    **kw) as it:
    return np.concatenate([b["study_id"] for b in take(it, batches)])


def test_shuffle_is_deterministic_by_seed_and_differs_across_seeds(tiny_dir):
  a, b, c = _epoch_ids(tiny_dir, 0), _epoch_ids(tiny_dir, 0), _epoch_ids(tiny_dir, 1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len(set(a.tolist())) == 24  # One epoch of 24 records is a permutation.


def test_two_processes_see_disjoint_records_whose_union_is_the_epoch(tiny_dir):
  cfg = data_config(tiny_dir)
  seen = []
  for p in range(2):
    with pipeline.make_train_iterator(cfg, global_batch_size=8, process_index=p,
                                      process_count=2) as it:
      seen.append(set(np.concatenate([b["study_id"] for b in take(it, 3)]).tolist()))
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == 24


def test_batch_not_divisible_by_process_count_is_rejected(tiny_dir):
  with pytest.raises(ValueError, match=r"global_batch_size=5.*process_count=2"):
    pipeline.make_train_iterator(data_config(tiny_dir), global_batch_size=5, process_count=2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_iterator_yields_exactly_the_next_batches(tiny_dir, num_workers):
  cfg = data_config(tiny_dir, num_workers=num_workers)
  with pipeline.make_train_iterator(cfg, global_batch_size=4, seed=3) as it:
    take(it, 7)  # Crosses the epoch boundary (24 records / 4).
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 3)
  with pipeline.make_train_iterator(cfg, global_batch_size=4, seed=3) as restored:
    restored.set_state(state)
    assert_batches_equal(take(restored, 3), expected)


def test_bad_records_are_skipped_and_counted_under_skip(tmp_path):
  d = write_dataset(tmp_path / "bad", 12, corrupt=(3,), garbage_png=(8,))
  with pipeline.make_train_iterator(data_config(d, shuffle=False), global_batch_size=5) as it:
    batches = take(it, 2)
    assert it.num_skipped == 2
    assert it.get_state()["num_skipped"] == 2
  ids = np.concatenate([b["study_id"] for b in batches])
  assert len(set(ids.tolist())) == 10  # The 10 good records, each once.


def test_bad_record_raises_under_fail(tmp_path):
  d = write_dataset(tmp_path / "bad", 6, num_shards=1, corrupt=(1,))
  cfg = data_config(d, shuffle=False, on_bad_record="fail")
  with pipeline.make_train_iterator(cfg, global_batch_size=2) as it:
    with pytest.raises(errors.CorruptRecordError, match="#1"):
      take(it, 3)


def test_undecodable_png_raises_under_fail(tmp_path):
  d = write_dataset(tmp_path / "bad", 4, num_shards=1, garbage_png=(0,))
  cfg = data_config(d, shuffle=False, on_bad_record="fail")
  with pytest.raises(errors.BadImageError, match="img0"):
    next(iter(pipeline.make_eval_batches(cfg, split="train", batch_size=2)))


def test_unknown_bad_record_policy_names_the_key(tiny_dir):
  with pytest.raises(ValueError, match=r"on_bad_record='ignore'.*skip.*fail"):
    pipeline.make_train_iterator(data_config(tiny_dir, on_bad_record="ignore"),
                                 global_batch_size=4)


def test_eval_batches_are_in_order_and_pad_the_last_with_invalid_rows(tiny_dir):
  cfg = data_config(tiny_dir)
  batches = list(pipeline.make_eval_batches(cfg, split="train", batch_size=5, max_examples=12))
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.tolist() == [True] * 12 + [False] * 3
  ids = np.concatenate([b["study_id"] for b in batches])[:12]
  assert ids.tolist() == [transforms.stable_id_hash(f"study{i}") for i in range(12)]
  last = batches[-1]
  assert not last["attention_mask"][2:].any()
  assert (last["token_to_sentence"][2:] == -1).all()
  again = list(pipeline.make_eval_batches(cfg, split="train", batch_size=5, max_examples=12))
  assert_batches_equal(batches, again)


def test_dataset_info_names_the_file_and_the_missing_key(tmp_path):
  (tmp_path / "dataset_info.json").write_text(json.dumps({"spec_version": 1, "name": "x",
                                                         "splits": {}}))
  with pytest.raises(ValueError, match=r"dataset_info.json: missing key 'label_names'"):
    pipeline.dataset_info(tmp_path)


def test_unknown_split_lists_the_available_ones(tiny_dir):
  with pytest.raises(ValueError, match=r"split 'test'.*\['train'\]"):
    pipeline.make_eval_batches(data_config(tiny_dir), split="test", batch_size=2)


def test_each_epoch_is_reshuffled(tiny_dir):
  ids = _epoch_ids(tiny_dir, 0, batches=12)
  first, second = ids[:24], ids[24:]
  assert sorted(first.tolist()) == sorted(second.tolist())
  assert not np.array_equal(first, second)


def test_bad_max_tokens_is_rejected_when_the_iterator_is_built(tiny_dir):
  with pytest.raises(ValueError, match=r"config.data.max_tokens=100"):
    pipeline.make_train_iterator(data_config(tiny_dir, max_tokens=100), global_batch_size=4)


def test_shard_count_disagreeing_with_dataset_info_names_the_shard(tmp_path):
  d = write_dataset(tmp_path / "ds", 6, num_shards=1)
  info = json.loads((d / "dataset_info.json").read_text())
  info["splits"]["train"]["shards"][0]["num_records"] = 7
  (d / "dataset_info.json").write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r"train-00000-of-00001.tfrecord: its index holds 6"):
    pipeline.make_eval_batches(data_config(d), split="train", batch_size=2)


def test_state_from_another_worker_count_is_refused_with_the_reason(tiny_dir):
  with pipeline.make_train_iterator(data_config(tiny_dir), global_batch_size=4) as it:
    next(it)
    state = it.get_state()
  cfg = data_config(tiny_dir, num_workers=1)
  with pipeline.make_train_iterator(cfg, global_batch_size=4) as other:
    with pytest.raises(ValueError, match=r"num_workers=0 \(now 1\)"):
      other.set_state(state)
