"""config.train.compilation_cache_dir turns on JAX's persistent compilation cache
(experiments/pretrain.py): the first process writes entries, a second process loads them."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

_PROGRAM = r"""
import sys
import jax
import jax.numpy as jnp
from jax import monitoring
from experiments import pretrain
from experiments.configs import base

hits = []
monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
config = base.base_config()
config.train.compilation_cache_dir = sys.argv[1]
pretrain.apply_compilation_cache(config)
print(float(jax.jit(lambda x: jnp.sin(x) * 3.0 + x @ x.T)(jnp.ones((4, 4))).sum()))
print("cache_hits", len(hits))
"""


def _run(cache_dir: pathlib.Path) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _PROGRAM, str(cache_dir)], cwd=REPO, env=env,
                       check=True, capture_output=True, text=True, timeout=120)
  return out.stdout


def test_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
  cache = tmp_path / "jax_cache"
  first = _run(cache)
  assert "cache_hits 0" in first, first
  entries = [p for p in cache.rglob("*") if p.is_file()]
  assert entries, f"no cache entries written to {cache}"
  second = _run(cache)
  hits = int(second.split("cache_hits")[1].split()[0])
  assert hits >= 1, second


def test_empty_compilation_cache_dir_leaves_the_cache_off(tmp_path):
  from experiments.configs import base  # pylint: disable=g-import-not-at-top
  assert base.base_config().train.compilation_cache_dir == ""
