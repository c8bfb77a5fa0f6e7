"""Multi-host: two processes on localhost (jax.distributed over gloo CPU collectives, 2 CPU
devices each) train the tiny config with each process reading its half of the global batch;
their losses and retrieval metrics equal one process with the same global batch on 4 devices.

Tolerance: rtol 1e-5. The two layouts see the same 8 examples per step but in another order
(process p feeds records p, p+2, ...), so batch means and the InfoNCE sums are reduced in another
order: equal up to float32 rounding, not bit-identical.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import synthetic_dataset
from test_pretrain_e2e import REPO, _smoke

STEPS = 4
pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, cache, *extra):
  return [sys.executable, "-m", "experiments.pretrain",
          "--config=experiments/configs/convirt.py:smoke", f"--workdir={workdir}",
          f"--config.data.synthetic.cache_dir={cache}", "--config.data.synthetic.workers=1",
          f"--config.train.num_steps={STEPS}", "--config.train.log_every=1",
          "--config.train.checkpoint_every=2", f"--config.train.eval_every={STEPS}", *extra]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _metrics(workdir):
  rows = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    rows.setdefault(row["step"], {}).update(row)
  return rows


def test_two_processes_train_like_one_process_with_the_same_global_batch(tmp_path,
                                                                         synthetic_cache):
  synthetic_dataset.resolve_dataset_dir(_smoke(synthetic_cache).data, tmp_path)
  single = tmp_path / "single"
  subprocess.run(_cmd(single, synthetic_cache), cwd=REPO, env=_env(4), check=True,
                 capture_output=True, timeout=600)

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(multi, synthetic_cache, "--config.multihost.enabled=True",
           f"--config.multihost.coordinator_address=127.0.0.1:{port}",
           "--config.multihost.num_processes=2", f"--config.multihost.process_id={i}"),
      cwd=REPO, env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
      for i in range(2)]
  errors = [p.communicate(timeout=600)[1].decode() for p in procs]
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-3000:]

  one, two = _metrics(single), _metrics(multi)
  assert sorted(k for k in two if "loss" in two[k]) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    np.testing.assert_allclose(two[step]["loss"], one[step]["loss"], rtol=1e-5,
                               err_msg=f"step {step}")
  # Every retrieval metric but the wall-clock one (retrieval/eval_seconds).
  retrieval = [k for k in one[STEPS] if k.startswith("retrieval/") and not k.endswith("_seconds")]
  assert retrieval
  for key in retrieval:
    np.testing.assert_allclose(two[STEPS][key], one[STEPS][key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  # Both processes wrote their data-iterator state into the one shared checkpoint folder.
  step_dir = multi / "checkpoints" / str(STEPS) / "data_iter"
  assert sorted(p.name for p in step_dir.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
