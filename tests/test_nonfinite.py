"""A NaN/inf loss never reaches the state or a checkpoint; the run stops naming the step and the
batch's study ids, or (train.on_nonfinite='skip') skips and counts such steps."""
import json
import pathlib

import numpy as np
import pytest

from experiments.configs import convirt
from mmrl.train import checkpoint as ckpt_lib
from mmrl import loop


def _config(cache, **train):
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(cache)
  c.data.synthetic.workers = 1
  c.eval.retrieval.enabled = False
  c.train.update(num_steps=4, log_every=1, checkpoint_every=2, **train)
  return c


@pytest.fixture
def poison(monkeypatch):
  """Makes the training batches with the given (1-based) numbers hold inf pixels; records the
  study ids of every batch handed out."""
  handed = []

  def install(batch_numbers):
    real = loop.data_lib.make_train_iterator

    def make(*args, **kwargs):
      it = real(*args, **kwargs)
      real_next = it.__next__

      class Poisoned(type(it)):
        def __next__(self):
          batch = real_next()
          handed.append(batch["study_id"].copy())
          if len(handed) in batch_numbers:
            batch["image"] = np.full_like(batch["image"], np.inf)
          return batch
      it.__class__ = Poisoned
      return it
    monkeypatch.setattr(loop.data_lib, "make_train_iterator", make)
    return handed
  return install


def _saved_params_are_finite(workdir):
  ck = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", async_save=False)
  steps = ck.all_steps()
  for step in steps:
    raw = ck.restore_raw_state(step)
    for leaf in _leaves(raw["params"]):
      assert np.all(np.isfinite(leaf)), f"checkpoint {step} holds a non-finite parameter"
  ck.close()
  return sorted(steps)


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield np.asarray(tree)


def test_an_inf_batch_stops_the_run_naming_the_step_and_the_study_ids(tmp_path, synthetic_cache,
                                                                       poison):
  handed = poison({3})
  with pytest.raises(loop.NonFiniteLossError) as err:
    loop.train_and_evaluate(_config(synthetic_cache), tmp_path)
  message = str(err.value)
  assert "step 3:" in message and "non-finite" in message
  assert str([int(i) for i in handed[2]]) in message
  assert _saved_params_are_finite(tmp_path) == [2]


def test_skip_policy_skips_and_counts_nonfinite_steps_and_saves_only_finite_states(
    tmp_path, synthetic_cache, poison):
  poison({2})
  last = loop.train_and_evaluate(_config(synthetic_cache, on_nonfinite="skip"), tmp_path)
  assert last["nonfinite_skipped"] == 1.0 and np.isfinite(last["loss"])
  assert _saved_params_are_finite(tmp_path) == [2, 4]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  flags = {r["step"]: r["nonfinite"] for r in rows if "nonfinite" in r}
  assert flags == {1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0}


def test_skip_policy_stops_after_max_nonfinite_skips(tmp_path, synthetic_cache, poison):
  poison({1, 3})
  config = _config(synthetic_cache, on_nonfinite="skip", max_nonfinite_skips=1)
  with pytest.raises(loop.NonFiniteLossError, match=r"step 3:.*2 skipped steps, more than "
                                                    r"train.max_nonfinite_skips=1"):
    loop.train_and_evaluate(config, tmp_path)
  assert _saved_params_are_finite(tmp_path) == [2]
