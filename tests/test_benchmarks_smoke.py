"""The benchmarks run and print their table (tiny sizes; no timing assertions)."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_input_pipeline_benchmark_runs_and_prints_a_table():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "benchmarks/input_pipeline.py", "--batches=2", "--records=32",
       "--workers=0", "--image_size=64", "--batch_size=8", "--source_size=128"],
      cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=300)
  assert "samples/s" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
  assert "| 64" in out.stdout
