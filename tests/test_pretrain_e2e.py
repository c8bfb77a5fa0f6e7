"""End to end: synthetic DICOM -> shards -> Grain -> sharded step -> Orbax, and exact resume.

The smoke config (experiments/configs/convirt.py:smoke) keeps everything tiny; the synthetic data
set is generated once per test session (shared cache_dir) and reused by every run here.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data_pipeline import synthetic_dataset
from experiments.configs import convirt
from mmrl.train import checkpoint as ckpt_lib
from mmrl import loop
from mmrl.train import run_dir
from mmrl.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def data_cache(synthetic_cache):
  return synthetic_cache  # shared with the method tests (tests/conftest.py)


def _smoke(data_cache, **overrides):
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(data_cache)
  c.data.synthetic.workers = 1
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _losses(workdir):
  """step -> loss from metrics.jsonl (the last row of a step wins: a resumed run re-logs it)."""
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "loss" in row:
      out[row["step"]] = row["loss"]
  return out


def test_smoke_pretraining_writes_metrics_tensorboard_and_checkpoints(tmp_path, data_cache):
  last = loop.train_and_evaluate(_smoke(data_cache), tmp_path)
  assert np.isfinite(last["loss"])
  assert "retrieval/i2t_R@1" in last
  assert sorted(ckpt_lib.Checkpointer(tmp_path / "checkpoints").all_steps()) == [3, 6]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(_losses(tmp_path)) == [2, 4, 6]


def test_rerunning_a_finished_workdir_resumes_and_does_nothing(tmp_path, data_cache):
  loop.train_and_evaluate(_smoke(data_cache, **{"train.num_steps": 3}), tmp_path)
  before = _losses(tmp_path)
  assert loop.train_and_evaluate(_smoke(data_cache, **{"train.num_steps": 3}), tmp_path) == {}
  assert _losses(tmp_path) == before


def _pretrain_cmd(workdir, data_cache, steps):
  return [sys.executable, "-m", "experiments.pretrain",
          "--config=experiments/configs/convirt.py:smoke", f"--workdir={workdir}",
          f"--config.data.synthetic.cache_dir={data_cache}", "--config.data.synthetic.workers=1",
          f"--config.train.num_steps={steps}", "--config.train.log_every=1",
          "--config.train.checkpoint_every=2", "--config.train.eval_every=1000"]


def test_killed_run_resumes_with_exactly_the_losses_of_an_uninterrupted_run(tmp_path, data_cache):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  steps = 24
  # Make the shared synthetic data first so both runs start from the same shards.
  synthetic_dataset.resolve_dataset_dir(_smoke(data_cache).data, tmp_path)
  reference = tmp_path / "reference"
  subprocess.run(_pretrain_cmd(reference, data_cache, steps), cwd=REPO, env=env, check=True,
                 capture_output=True)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_pretrain_cmd(killed, data_cache, steps), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  ckpts = killed / "checkpoints"
  while time.time() < deadline and proc.poll() is None:
    committed = [p for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
    if committed:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed; raise `steps`"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_losses(killed), default=0)
  assert killed_at < steps

  subprocess.run(_pretrain_cmd(killed, data_cache, steps), cwd=REPO, env=env, check=True,
                 capture_output=True)
  ref, resumed = _losses(reference), _losses(killed)
  assert sorted(resumed) == list(range(1, steps + 1))
  np.testing.assert_array_equal([resumed[s] for s in range(1, steps + 1)],
                                [ref[s] for s in range(1, steps + 1)])


def test_init_from_copies_the_towers_and_leaves_the_heads(tmp_path, data_cache):
  mesh = jax.make_mesh((8, 1), ("data", "fsdp"))
  config = _smoke(data_cache)
  donor, _ = state_lib.create_train_state(config, jax.random.key(1), mesh)
  ck = ckpt_lib.Checkpointer(tmp_path / "donor" / "checkpoints", async_save=False)
  ck.save(7, donor, data_iter=None, config={})
  ck.close()
  fresh, _ = state_lib.create_train_state(config, jax.random.key(2), mesh)
  loaded = run_dir.load_towers(fresh, str(tmp_path / "donor"))
  towers = [k for k in loaded.params if k in loop.TOWER_KEYS]
  heads = [k for k in loaded.params if k not in loop.TOWER_KEYS]
  assert towers and heads, f"expected tower and head parameters, got {list(loaded.params)}"
  for k in towers:
    jax.tree.map(np.testing.assert_array_equal, loaded.params[k], donor.params[k])
  for k in heads:
    differs = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                           loaded.params[k], donor.params[k]))
    assert any(differs), f"head {k} should keep its fresh initialisation"


def test_nonfinite_loss_stops_the_run_before_saving_it(tmp_path, data_cache):
  config = _smoke(data_cache, **{"optim.lr": 1e30, "optim.clip_norm": 0.0,
                                 "train.num_steps": 12, "train.checkpoint_every": 100})
  with pytest.raises(loop.NonFiniteLossError, match="non-finite"):
    loop.train_and_evaluate(config, tmp_path)
  assert ckpt_lib.Checkpointer(tmp_path / "checkpoints").all_steps() == []
