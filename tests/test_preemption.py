"""Preemption: a run killed in the middle of a checkpoint save resumes from the last complete
checkpoint, and SIGTERM writes a final checkpoint and exits with code 75; either way the resumed
run's losses are bit-identical to an uninterrupted run with the same seed.

Each run is a real `python -m experiments.pretrain` subprocess on the tiny smoke config.
"""
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from data_pipeline import synthetic_dataset
from mmrl.train import checkpoint as ckpt_lib
from test_pretrain_e2e import REPO, _losses, _pretrain_cmd, _smoke

STEPS = 16
EXIT_PREEMPTED = 75
pytestmark = pytest.mark.slow


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop(ckpt_lib.KILL_DURING_SAVE_ENV, None)
  env.update(extra)
  return env


@pytest.fixture(scope="module")
def reference(synthetic_cache, tmp_path_factory):
  """Losses of an uninterrupted run (made once per test process)."""
  root = tmp_path_factory.mktemp("preemption_reference")
  synthetic_dataset.resolve_dataset_dir(_smoke(synthetic_cache).data, root)
  subprocess.run(_pretrain_cmd(root / "run", synthetic_cache, STEPS), cwd=REPO, env=_env(),
                 check=True, capture_output=True)
  return _losses(root / "run")


def _committed_steps(ckpts):
  ck = ckpt_lib.Checkpointer(ckpts, async_save=False)
  try:
    return sorted(ck.all_steps())
  finally:
    ck.close()


def _resume_and_compare(workdir, synthetic_cache, reference):
  subprocess.run(_pretrain_cmd(workdir, synthetic_cache, STEPS), cwd=REPO, env=_env(),
                 check=True, capture_output=True)
  resumed = _losses(workdir)
  assert sorted(resumed) == list(range(1, STEPS + 1))
  np.testing.assert_array_equal([resumed[s] for s in range(1, STEPS + 1)],
                                [reference[s] for s in range(1, STEPS + 1)])


def test_a_run_killed_in_the_middle_of_a_save_resumes_bit_identically(
    tmp_path, synthetic_cache, reference):
  workdir = tmp_path / "killed"
  proc = subprocess.run(_pretrain_cmd(workdir, synthetic_cache, STEPS), cwd=REPO,
                        env=_env(**{ckpt_lib.KILL_DURING_SAVE_ENV: "4"}), capture_output=True)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  ckpts = workdir / "checkpoints"
  assert _committed_steps(ckpts) == [2]
  half_written = [p.name for p in ckpts.iterdir() if p.name.startswith("4.")]
  assert half_written, f"expected a half-written step 4 folder, found {list(ckpts.iterdir())}"
  _resume_and_compare(workdir, synthetic_cache, reference)


def test_sigterm_writes_a_final_checkpoint_exits_75_and_resumes_bit_identically(
    tmp_path, synthetic_cache, reference):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(_pretrain_cmd(workdir, synthetic_cache, STEPS), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if (workdir / "metrics.jsonl").exists() and _losses(workdir):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before SIGTERM could be sent; raise STEPS"
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == EXIT_PREEMPTED, stderr.decode()[-2000:]
  stopped_at = max(_losses(workdir))
  assert stopped_at < STEPS
  assert f"saved a final checkpoint at step {stopped_at}" in stderr.decode()
  assert max(_committed_steps(workdir / "checkpoints")) == stopped_at
  _resume_and_compare(workdir, synthetic_cache, reference)
