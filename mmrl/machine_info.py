"""What machine a measurement ran on, for the headers of results tables (benchmarks, comparison)."""
from __future__ import annotations

import pathlib
import platform


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"
