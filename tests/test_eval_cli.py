"""experiments/evaluate.py end to end on a tiny pretraining run; the runner's schedule."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments.configs import convirt
from mmrl.evaluation import runner as runner_lib
from mmrl import loop

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_evaluate_cli_on_a_tiny_pretraining_run_writes_json_table_and_sheets(tmp_path,
                                                                             synthetic_cache):
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(synthetic_cache)
  c.data.synthetic.workers = 1
  c.train.num_steps = 3
  c.train.checkpoint_every = 3
  c.eval.retrieval.enabled = False
  loop.train_and_evaluate(c, tmp_path / "run")

  out = tmp_path / "eval.json"
  cmd = [sys.executable, "-m", "experiments.evaluate",
         "--config=experiments/configs/convirt.py:smoke", f"--checkpoint={tmp_path / 'run'}",
         f"--config.data.synthetic.cache_dir={synthetic_cache}",
         "--config.eval.linear_probe.steps=20", "--config.eval.linear_probe.fractions=0.1,1.0",
         "--config.eval.segmentation.steps=20", "--config.eval.segmentation.max_train=16",
         "--evaluators=retrieval,zero_shot,linear_probe,segmentation", f"--output={out}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "retrieval/i2t_R@1" in proc.stdout and f"wrote {out}" in proc.stdout

  doc = json.loads(out.read_text())
  assert doc["step"] == 3
  m = doc["metrics"]
  for key in ("retrieval/i2t_R@1", "retrieval/t2i_R@10", "zero_shot/mean_accuracy",
              "linear_probe/10pct/num_train", "linear_probe/100pct/num_train",
              "segmentation/dice"):
    assert key in m, sorted(m)
  assert 0.0 <= m["retrieval/i2t_R@1"] <= 1.0
  assert 0.0 <= m["segmentation/dice"] <= 1.0
  assert m["linear_probe/10pct/num_train"] < m["linear_probe/100pct/num_train"]
  assert (tmp_path / "eval_retrieval_text_to_image.png").exists()
  assert (tmp_path / "eval_segmentation_examples.png").exists()


def _schedule_only(config):
  r = runner_lib.EvalRunner.__new__(runner_lib.EvalRunner)
  r.config = config
  return r


def test_each_evaluator_runs_on_its_own_schedule_and_all_after_the_last_step():
  c = convirt.get_config("smoke")
  c.train.eval_every = 4
  c.eval.linear_probe.enabled = True
  c.eval.linear_probe.every = 3
  c.eval.zero_shot.enabled = True
  r = _schedule_only(c)
  assert r.enabled() == ["retrieval", "zero_shot", "linear_probe"]
  assert r.due(3, 10) == ["linear_probe"]
  assert r.due(4, 10) == ["retrieval", "zero_shot"]
  assert r.due(5, 10) == []
  assert r.due(10, 10) == ["retrieval", "zero_shot", "linear_probe"]
