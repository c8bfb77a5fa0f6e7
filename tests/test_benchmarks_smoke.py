"""The benchmarks run and print their table (tiny sizes; no timing assertions)."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_input_pipeline_benchmark_runs_and_prints_a_table():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "benchmarks/input_pipeline.py", "--batches=2", "--records=32",
       "--workers=0", "--image_size=64", "--batch_size=8", "--source_size=128"],
      cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=300)
  assert "samples/s" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
  assert "| 64" in out.stdout


def _json_rows(stdout: str) -> list[dict]:
  import json  # pylint: disable=g-import-not-at-top
  return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_torch_reference_runs_eager_on_cpu_at_tiny_size_and_prints_json_rows():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  out = subprocess.run(
      [sys.executable, "benchmarks/torch_reference.py", "--tiny", "--device=cpu", "--no-compile",
       "--no-autocast", "--steps=2", "--warmup=1", "--batch_sizes=4", "--methods=convirt,lovt"],
      cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
  rows = _json_rows(out.stdout)
  assert [(r["method"], r["mode"]) for r in rows] == [("convirt", "eager"), ("lovt", "eager")], (
      out.stdout[-2000:] + out.stderr[-2000:])
  for r in rows:
    assert "error" not in r, r
    for key in ("samples_per_s", "step_ms", "peak_memory_gib", "flops_per_step", "loss", "date",
                "command"):
      assert key in r, (key, r)
    assert r["samples_per_s"] > 0 and r["flops_per_step"] > 0
    assert r["loss"] == r["loss"]  # finite, not NaN


@pytest.mark.parametrize("method", ["convirt", "lovt", "gloria", "place"])
def test_step_benchmark_runs_each_method_at_tiny_size_and_prints_a_json_row(method):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run(
      [sys.executable, "benchmarks/step.py", "--tiny", f"--methods={method}", "--steps=2",
       "--warmup=1"],
      cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=900)
  rows = _json_rows(out.stdout)
  assert [r["method"] for r in rows] == [method], out.stdout[-2000:] + out.stderr[-3000:]
  (r,) = rows
  assert "error" not in r, r
  for key in ("samples_per_s", "step_ms", "mfu", "flops_per_step", "peak_memory_gib",
              "compile_s", "loss", "device_kind"):
    assert key in r, (key, r)
  assert r["mfu"] is None  # no known peak for a CPU: never a made-up MFU
  assert not r["nonfinite"]
