"""Smoke test of benchmarks/methods_cpu.py: ConVIRT at tiny size for 2 steps prints its table.

No timing assertions: only that the benchmark runs the real loop end to end and reports.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_methods_cpu_benchmark_prints_a_table_for_convirt_at_tiny_size(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "methods_cpu.py"), "--methods=convirt",
       "--size=tiny", "--steps=2", f"--data_cache={tmp_path / 'data'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  out = proc.stdout
  assert "| method | image tower, px, batch | params |" in out, out[-2000:]
  convirt_rows = [line for line in out.splitlines() if line.startswith("| convirt |")]
  assert len(convirt_rows) == 1, out[-2000:]
  assert "(step 2)" in convirt_rows[0] and "clip_nce/loss" in convirt_rows[0], convirt_rows[0]
  assert "Machine: " in out and "Command: `" in out, out[-2000:]
  assert "not run: convirt" not in out, out[-2000:]
