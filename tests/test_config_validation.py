"""Bad configs fail before anything is built or compiled, naming the key and the fix."""
import importlib
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from experiments.configs import convirt
from mmrl.train import validation as config_validation
from mmrl.config_errors import ConfigError
from mmrl import loop

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


def _all_configs():
  for f in sorted(CONFIGS.glob("*.py")):
    if f.stem in ("__init__", "base"):
      continue
    module = importlib.import_module(f"experiments.configs.{f.stem}")
    for arg in ("", "smoke", "tiny", "quick"):
      try:
        yield f"{f.stem}:{arg}", module.get_config(arg)
      except ValueError:
        continue


def _loose(c):
  """A copy without ConfigDict's own type checks, as a hand-edited or JSON config would be."""
  return ml_collections.ConfigDict(json.loads(c.to_json_best_effort()), type_safe=False)


def _set(c, key, value):
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return c


@pytest.fixture
def dataset_dir(tmp_path):
  d = tmp_path / "shards"
  d.mkdir()
  (d / "dataset_info.json").write_text("{}")
  return d


def test_every_shipped_config_validates(dataset_dir):
  names = []
  for name, c in _all_configs():
    c.data.dataset_dir = str(dataset_dir)
    # Paper configs ask for ImageNet weights that are not on this disk: validation passes only
    # with weights=none spelled out (tests/test_pretrained_weights.py checks the error).
    c.model.image.weights = "none"
    config_validation.validate_config(c)
    names.append(name)
  assert len(names) >= 10, names


def test_an_unknown_key_is_named_with_a_suggestion():
  c = _loose(convirt.get_config("smoke"))
  c.train.bach_size = 8
  with pytest.raises(ConfigError, match=r"config\.train\.bach_size .*did you mean "
                                        r"config\.train\.batch_size"):
    config_validation.validate_config(c, check_paths=False)


def test_an_option_another_method_declares_is_refused_and_method_keys_are_typed():
  c = _loose(convirt.get_config("smoke"))
  c.method.pool_heads = 4  # LoVT's option; ConVIRT reads no such key
  with pytest.raises(ConfigError, match=r"config\.method\.pool_heads is not a known config key"
                                        r".*method 'convirt'.*ConVIRT\.options"):
    config_validation.validate_config(c, check_paths=False)
  c = _loose(convirt.get_config("smoke"))
  c.method.embed_dim = "wide"
  with pytest.raises(ConfigError, match=r"config\.method\.embed_dim='wide' .* must be int"):
    config_validation.validate_config(c, check_paths=False)


@pytest.mark.parametrize("method,key,value,message", [
    ("gloria", "method.max_word", 24,
     r"config\.method\.max_word is not a known config key; did you mean "
     r"config\.method\.max_words\?.*GLoRIA\.options"),
    ("mlip", "method.mlip.itm_widht", 32,
     r"config\.method\.mlip\.itm_widht .*did you mean config\.method\.mlip\.itm_width\?"),
    ("lovt", "method.pool_heads", "8", r"config\.method\.pool_heads='8' .* must be int"),
    ("convirt", "method.objectives.0.image_to_text_weigth", 0.5,
     r"objectives\[0\] \(clip_nce\) has no option 'image_to_text_weigth'; did you mean "
     r"'image_to_text_weight'\?.*mmrl\.objectives\.contrastive\.clip_nce"),
    ("mgca", "method.objectives.1.tua", 0.1,
     r"objectives\[1\] \(tca\) has no option 'tua'; did you mean 'tau'\?"),
    ("place", "method.objectives.2.mask_ratio", "half",
     r"config\.method\.objectives\[2\]\.mask_ratio='half' .* must be float"),
])
def test_a_misspelt_or_mistyped_method_option_names_the_key_and_a_suggestion(method, key, value,
                                                                            message):
  module = importlib.import_module(f"experiments.configs.{method}")
  c = _loose(module.get_config("smoke" if method == "convirt" else "tiny"))
  *parents, leaf = key.split(".")
  node = c
  for part in parents:
    node = node[int(part)] if part.isdigit() else node[part]
  node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    config_validation.validate_config(c, check_paths=False)


def test_every_objective_declares_a_default_for_each_option_and_heads_read_them():
  from mmrl.objectives import methods, registry
  for name in registry.objective_names():
    assert "rng" not in registry.declared_options(name)
  c = importlib.import_module("experiments.configs.gloria").get_config("tiny")
  del c.method["word_pool"]  # left out: the declared default fills in
  method = methods.get_method(c.method)
  assert method.cfg.word_pool == methods.METHODS.get("gloria").options["word_pool"] == "sum"
  assert method.cfg.max_words == 24  # the config's value wins
  opts = methods.objective_options(c.method, "gloria_local")
  assert opts["tau1"] == registry.declared_options("gloria_local")["tau1"]


@pytest.mark.parametrize("key,value,message", [
    ("train.batch_size", "32", r"config\.train\.batch_size='32' has type str, but it must be int"),
    ("optim.lr", "fast", r"config\.optim\.lr='fast' .* must be float"),
    ("train.async_checkpoint", 1, r"config\.train\.async_checkpoint=1 .* must be bool"),
    ("model.dtype", "bf16", r"config\.model\.dtype='bf16' is not allowed; did you mean "
                            r"'bfloat16'"),
    ("train.on_nonfinite", "ignore", r"config\.train\.on_nonfinite='ignore' .* 'stop', 'skip'"),
    ("model.image.name", "resnet51", r"config\.model\.image\.name='resnet51' .*resnet50"),
    ("data.max_tokens", 100, r"config\.data\.max_tokens=100 must be a multiple of 64.*use 128"),
    ("method.objectives", [{"name": "clip_nse"}], r"objectives\[0\]\.name='clip_nse'.*clip_nce"),
])
def test_a_wrong_type_or_value_names_the_key_and_the_fix(key, value, message):
  c = _set(_loose(convirt.get_config("smoke")), key, value)
  with pytest.raises(ConfigError, match=message):
    config_validation.validate_config(c, check_paths=False)


def test_a_batch_that_does_not_split_over_the_data_axis_or_processes_is_refused():
  c = convirt.get_config("smoke")
  c.mesh.data = 3
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size=8 is not divisible by the "
                                        r"mesh's batch axes.*multiple of 3"):
    config_validation.validate_config(c, check_paths=False)
  c = convirt.get_config("smoke")
  c.multihost.update(enabled=True, coordinator_address="127.0.0.1:1", num_processes=3,
                     process_id=0)
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size=8 .* 3 processes"):
    config_validation.validate_config(c, check_paths=False)


@pytest.mark.parametrize("key,value,message", [
    ("data.tokenizer", "/no/such/tokenizer.json", r"config\.data\.tokenizer='/no/such/"),
    ("model.text.weights", "/no/such/bert", r"config\.model\.text\.weights='/no/such/bert' "
                                            r"does not exist"),
    ("data.dataset_dir", "/no/such/shards", r"config\.data\.dataset_dir='/no/such/shards' "
                                            r"does not exist"),
])
def test_a_path_that_does_not_exist_is_named(key, value, message):
  c = _set(convirt.get_config("smoke"), key, value)
  with pytest.raises(ConfigError, match=message):
    config_validation.validate_config(c)


def test_a_dataset_dir_without_dataset_info_is_refused(tmp_path):
  c = convirt.get_config("smoke")
  c.data.dataset_dir = str(tmp_path)
  with pytest.raises(ConfigError, match="has no dataset_info.json"):
    config_validation.validate_config(c)


def test_train_and_evaluate_refuses_a_bad_config_before_building_anything(tmp_path, monkeypatch):
  def no_build(*args, **kwargs):
    raise AssertionError("the train state was built before the config was checked")
  monkeypatch.setattr(loop.state_lib, "create_train_state", no_build)
  c = _loose(convirt.get_config("smoke"))
  c.data.tokenizer = str(tmp_path / "missing.json")
  with pytest.raises(ConfigError, match="config.data.tokenizer"):
    loop.train_and_evaluate(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_an_unwritable_workdir_is_a_config_error_naming_it(tmp_path, data_cache_config):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  with pytest.raises(ConfigError, match=r"--workdir='.*a_file/run' cannot be written"):
    loop.train_and_evaluate(data_cache_config, blocker / "run")


@pytest.fixture
def data_cache_config(synthetic_cache):
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(synthetic_cache)
  return c


def test_the_pretrain_command_exits_2_naming_the_key_before_building_anything(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/convirt.py:smoke",
       f"--workdir={tmp_path / 'run'}", f"--config.data.tokenizer={tmp_path / 'no.json'}"],
      cwd=CONFIGS.parents[1], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "ConfigError: config.data.tokenizer=" in proc.stderr
  assert not (tmp_path / "run").exists()
