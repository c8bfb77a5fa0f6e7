"""Every config key can be overridden from the command line (README): real absl flags through
`config_flags.DEFINE_config_file`, one override of each kind, on a shipped config and on a
config loaded from a run directory's config.json (experiments/configs/from_run.py)."""
import json
import pathlib

from absl import flags
from ml_collections import config_flags
import ml_collections

from experiments.configs import local_mi

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(REPO / "experiments" / "configs" / "demo.py")
FROM_RUN = str(REPO / "experiments" / "configs" / "from_run.py")


def _parse(config_file: str, *overrides: str) -> ml_collections.ConfigDict:
  argv = ["prog", f"--config={config_file}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", config_file, flag_values=fv, sys_argv=argv)
  fv(argv)
  return fv.config


def test_one_override_of_each_kind_on_a_shipped_config():
  c = _parse(DEMO,
             "--config.seed=7",                                  # int
             "--config.optim.lr=0.25",                           # float (nested key)
             "--config.data.shuffle=False",                      # bool
             "--config.data.train_split=validate",               # str
             "--config.eval.detection.fractions=(0.5,1.0)",      # tuple of floats
             "--config.train.ema.collections=('params','batch_stats')")  # tuple of str
  assert c.seed == 7
  assert c.optim.lr == 0.25
  assert c.data.shuffle is False
  assert c.data.train_split == "validate"
  assert tuple(c.eval.detection.fractions) == (0.5, 1.0)
  assert tuple(c.train.ema.collections) == ("params", "batch_stats")


def test_a_run_directorys_tuple_field_can_be_overridden(tmp_path):
  base = _parse(DEMO)
  (tmp_path / "config.json").write_text(base.to_json())  # tuples stored as lists
  c = _parse(f"{FROM_RUN}:{tmp_path}", "--config.eval.detection.fractions=(1.0,)",
             "--config.seed=3")
  assert tuple(c.eval.detection.fractions) == (1.0,)
  assert c.seed == 3


def test_no_shipped_config_holds_a_list_of_scalars():
  """Lists cannot be overridden by flags: scalar sequences are tuples (method.objectives, a list
  of ConfigDicts, is the one list: its entries are set in the config file)."""
  def lists(node, prefix=""):
    for k, v in node.items():
      if isinstance(v, ml_collections.ConfigDict):
        yield from lists(v, f"{prefix}{k}.")
      elif isinstance(v, list) and not all(isinstance(x, ml_collections.ConfigDict) for x in v):
        yield prefix + k
  for f in sorted((REPO / "experiments" / "configs").glob("*.py")):
    if f.stem in ("__init__", "base", "from_run"):
      continue
    c = _parse(str(f))
    assert not list(lists(c)), (f.name, list(lists(c)))
  assert tuple(local_mi.get_config("tiny").method.critic_hidden) == (32, 16)
  c = _parse(str(REPO / "experiments" / "configs" / "local_mi.py"),
             "--config.method.critic_hidden=(64,32)")
  assert tuple(c.method.critic_hidden) == (64, 32)
