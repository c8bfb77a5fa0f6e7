"""Test setup: 8 fake CPU devices for sharding tests, absl flags for Grain, shared-data lookup."""
from __future__ import annotations

import os
import pathlib
import sys

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One JAX persistent compilation cache per test session, shared by the xdist workers (they inherit
# the controller's environment) and by every subprocess a test starts: many tests compile the same
# tiny programs (the smoke train step, the evaluators) in fresh jit closures or fresh processes, and
# load them from here after the first compile. Executables are keyed by the program, the compile
# options and the jax version, so a hit runs exactly what a fresh compile would. Set
# MMRL_TEST_JAX_CACHE to keep a cache between sessions; '' turns it off.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = os.environ.get("MMRL_TEST_JAX_CACHE")
  if _cache is None:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402
    _cache = tempfile.mkdtemp(prefix="mmrl-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)  # the process that made it
    os.environ["MMRL_TEST_JAX_CACHE"] = _cache  # the workers and subprocesses reuse this one
  if _cache:
    pathlib.Path(_cache).mkdir(parents=True, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

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
