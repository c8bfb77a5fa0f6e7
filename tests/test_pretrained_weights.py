"""config.model.image.weights: resolution order, errors before compiling, fetch offline, init."""
from __future__ import annotations

import importlib
import urllib.error

import numpy as np
import pytest

from experiments import fetch_weights
from experiments.configs import base
from mmrl.train import validation as config_validation
from mmrl.config_errors import ConfigError
from mmrl.models.pretrained import catalog, stems

PAPER_CONFIGS = ("convirt", "gloria", "mgca", "lovt", "place", "mlip", "lrclr", "local_mi")


@pytest.fixture
def caches(tmp_path, monkeypatch):
  """Empty weights dir, torch hub cache and HF hub cache under tmp_path."""
  monkeypatch.setenv("MMRL_WEIGHTS_DIR", str(tmp_path / "weights"))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
  return tmp_path


def _touch(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"x")
  return path


def test_names_resolve_in_order_weights_dir_then_torch_hub_then_hf_hub(caches):
  hub = _touch(caches / "torch/hub/checkpoints/resnet50-0676ba61.pth")
  assert catalog.resolve("torchvision:resnet50", arch="resnet50").path == hub
  mine = _touch(caches / "weights/resnet50-0676ba61.pth")
  assert catalog.resolve("torchvision:resnet50", arch="resnet50").path == mine
  hf = _touch(caches / "hf/models--timm--deit_base_patch16_224.fb_in1k/snapshots/abc/"
              "model.safetensors")
  assert catalog.resolve("timm:deit_base_patch16_224", arch="vit_b16").path == hf
  assert catalog.resolve("none", arch="resnet50") is None


def test_a_missing_name_is_a_config_error_naming_the_file_and_the_fetch_command(caches):
  with pytest.raises(ConfigError, match=r"resnet50-0676ba61\.pth.*`python -m "
                     r"experiments\.fetch_weights torchvision:resnet50`.*weights=none"):
    catalog.resolve("torchvision:resnet50", arch="resnet50")
  with pytest.raises(ConfigError, match=r"resnet50 checkpoint but config\.model\.image\.name="
                     r"'resnet18'"):
    catalog.resolve("torchvision:resnet50", arch="resnet18")


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_validate_without_weights_only_with_none_spelled_out(name, caches):
  c = importlib.import_module(f"experiments.configs.{name}").get_config()
  c.data.synthetic.num_patients = 4  # no data set needed for validation
  assert c.model.image.weights != "none"
  with pytest.raises(ConfigError, match=r"experiments\.fetch_weights"):
    config_validation.validate_config(c)
  c.model.image.weights = "none"
  config_validation.validate_config(c)


def test_tiny_and_demo_configs_train_from_random_init():
  assert base.base_config().model.image.weights == "none"
  assert importlib.import_module("experiments.configs.demo").get_config().model.image.weights == "none"
  for name in PAPER_CONFIGS:
    module = importlib.import_module(f"experiments.configs.{name}")
    arg = "smoke" if name == "convirt" else "tiny"
    assert module.get_config(arg).model.image.weights == "none", name


def test_fetch_fails_offline_with_a_clear_message(caches, monkeypatch):
  def offline(entry, target):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
  monkeypatch.setitem(fetch_weights.DOWNLOADERS, "torchvision", offline)
  with pytest.raises(fetch_weights.FetchError, match=r"could not download torchvision:resnet50 "
                     r"from torchvision ResNet50_Weights\.IMAGENET1K_V1.*needs internet access.*copy the file"):
    fetch_weights.fetch("torchvision:resnet50")
  with pytest.raises(fetch_weights.FetchError, match="unknown weights name"):
    fetch_weights.fetch("torchvision:resnet51")


def test_hf_fetch_in_offline_mode_fails_without_touching_the_network(caches, monkeypatch):
  pytest.importorskip("huggingface_hub")
  constants = importlib.import_module("huggingface_hub.constants")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(fetch_weights.FetchError, match=r"could not download timm:deit_base.*internet"):
    fetch_weights.fetch("timm:deit_base_patch16_224")


def test_the_plain_rgb_sum_and_the_folded_normalisation_agree_on_a_replicated_image():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 3, 3, 3))
  k0, off0 = stems.one_channel_kernel(w)
  np.testing.assert_allclose(k0[:, 0], w.sum(1), rtol=1e-6)
  assert not off0.any()
  # Folding: one tap sees grey level g; torch sees (g - m_c) / s_c per channel.
  mean, std, m_in, s_in = stems.IMAGENET_MEAN, stems.IMAGENET_STD, 0.5, 0.25
  k, off = stems.one_channel_kernel(w, source_norm=(mean, std), input_norm=(m_in, s_in))
  g = rng.uniform(size=(3, 3))
  torch_side = sum((w[:, c] * (g - mean[c]) / std[c]).sum((1, 2)) for c in range(3))
  ours = (k[:, 0] * (g - m_in) / s_in).sum((1, 2)) + off
  np.testing.assert_allclose(ours, torch_side, rtol=1e-5, atol=1e-5)
