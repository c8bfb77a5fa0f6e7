"""Test setup: 8 fake CPU devices for sharding tests, absl flags for Grain, shared-data lookup."""
from __future__ import annotations

import os
import pathlib
import sys

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain reads absl flags; outside absl.app.run they must be parsed once.
if not flags.FLAGS.is_parsed():
  flags.FLAGS(sys.argv[:1])

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path | None:
  """../shared/data next to the repo, or $MMRL_SHARED_DATA; None when neither exists."""
  env = os.environ.get("MMRL_SHARED_DATA")
  candidates = [pathlib.Path(env)] if env else []
  candidates += [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
  for c in candidates:
    if (c / "README.md").exists():
      return c
  return None


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  d = shared_data_dir()
  if d is None:
    pytest.skip("real test data not found: set MMRL_SHARED_DATA to the shared/data folder "
                "(or place shared/ next to the repository)")
  return d


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
  """One data.synthetic.cache_dir per test process: the tiny configs share their synthetic data
  set (keyed by its parameters), so it is generated once instead of once per test."""
  return tmp_path_factory.mktemp("synthetic_cache")
