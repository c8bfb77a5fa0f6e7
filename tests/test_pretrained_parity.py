"""Imported torchvision / timm / Hugging Face weights reproduce the PyTorch models stage by stage.

The PyTorch models are built by torchvision / timm / transformers themselves with seeded random
weights (BatchNorm statistics set from one train-mode batch so activations stay O(1)); float32,
64 px inputs; the criterion is max |ours - torch| <= 1e-4 (ResNet: 1e-4 x max(1, max |torch|)
per stage, as float32 summation order alone moves ResNet-50's conv5 by ~3e-4). Skipped when torch, torchvision or timm is not installed (the `torch` extra).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from mmrl.models.pretrained import (WeightsMismatchError, resnet_params_from_torchvision,  # noqa: E402
                                    vit_params_from_timm)
from mmrl.models.pretrained import files, stems  # noqa: E402
from mmrl.models.resnet import resnet  # noqa: E402
from mmrl.models.vit import vit  # noqa: E402

TOL = 1e-4
SIZE = 64


def _numpy_state(module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _grey(channels=1, seed=0, b=2, size=SIZE):
  return np.random.default_rng(seed).normal(size=(b, size, size, channels)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _torchvision(name):
  from benchmarks.pretrained_parity import seeded_torchvision_resnet  # pylint: disable=g-import-not-at-top
  return seeded_torchvision_resnet(name, SIZE)


def _torch_stages(model, x_nhwc):
  with torch.no_grad():
    h = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    h = model.maxpool(model.relu(model.bn1(model.conv1(h))))
    out = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
      h = layer(h)
      out.append(h.permute(0, 2, 3, 1).numpy())
  return out


def _our_stages(name, variables, x):
  model = resnet(name, dtype=jnp.float32)
  _, inter = model.apply(variables, jnp.asarray(x), train=False, capture_intermediates=True)
  return [np.asarray(inter["intermediates"][f"stage{s + 1}_block{n - 1}"]["__call__"][0])
          for s, n in enumerate(model.stage_sizes)]


@pytest.mark.parametrize("name,channel_counts", [("resnet18", (1, 3)), ("resnet50", (1,))])
def test_resnet_conv2_to_conv5_match_torchvision_on_1_and_3_channel_inputs(name, channel_counts):
  # ResNet-50 on 3 channels: `python -m benchmarks.pretrained_parity` (same code path, +25 s here).
  tv = _torchvision(name)
  state = _numpy_state(tv)
  for channels in channel_counts:
    x = _grey(channels, seed=channels)
    variables, report = resnet_params_from_torchvision(state, model_name=name,
                                                       in_channels=channels)
    ref = _torch_stages(tv, np.repeat(x, 3, -1) if channels == 1 else x)
    ours = _our_stages(name, variables, x)
    for stage, (a, b) in enumerate(zip(ours, ref)):
      assert a.shape == b.shape, (stage, a.shape, b.shape)
      # 1e-4 of the stage's scale: ResNet-50's conv4/conv5 maps reach |x| ~ 10, where torch's own
      # float32 result differs from its float64 one by ~3e-4 (summation order), as ours does.
      diff, scale = float(np.abs(a - b).max()), max(1.0, float(np.abs(b).max()))
      assert diff <= TOL * scale, (f"{name} {channels}-channel conv{stage + 2}: max |diff| "
                                   f"{diff:.2e} at scale {scale:.1f}")
  assert report.ok and not report.missing
  assert set(report.unused) == {k for k in state if k.startswith("fc.")
                                or k.endswith("num_batches_tracked")}
  assert len(report.imported) + len(report.unused) == len(state)


@functools.lru_cache(maxsize=None)
def _timm_vit_b16():
  torch.manual_seed(0)
  return timm.create_model("vit_base_patch16_224", pretrained=False, img_size=SIZE).eval()


def _timm_tokens(model, x_nhwc):
  with torch.no_grad():
    return model.forward_features(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()


def _apply_vit(name, variables, x, norm_eps=1e-6):
  model = vit(name, dtype=jnp.float32, norm_eps=norm_eps)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))


def test_vit_b16_cls_and_patch_tokens_match_timm_on_a_1_channel_input():
  # 3-channel inputs: the tiny timm ViT below (same mapping; ViT-B/16 twice costs ~10 s).
  model = _timm_vit_b16()
  state = _numpy_state(model)
  x = _grey(1, seed=11)
  variables, report = vit_params_from_timm(state, model_name="vit_b16", in_channels=1,
                                           image_size=SIZE)
  ref = _timm_tokens(model, np.repeat(x, 3, -1))
  feats = _apply_vit("vit_b16", variables, x)
  assert float(np.abs(np.asarray(feats.global_embedding) - ref[:, 0]).max()) <= TOL
  assert float(np.abs(np.asarray(feats.local) - ref[:, 1:]).max()) <= TOL
  assert set(report.unused) == {"head.weight", "head.bias"}
  assert len(report.imported) == len(state) - 2


def _tiny_timm(img_size):
  from timm.models.vision_transformer import VisionTransformer  # pylint: disable=g-import-not-at-top
  torch.manual_seed(1)
  return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                           mlp_ratio=2.0, num_classes=0).eval()


def test_position_embeddings_are_resampled_like_timm_when_the_resolution_differs():
  from timm.models.vision_transformer import checkpoint_filter_fn  # pylint: disable=g-import-not-at-top
  small = _tiny_timm(32)   # checkpoint grid 4x4
  big = _tiny_timm(48)     # our grid 6x6; timm's own loader resamples the checkpoint
  big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))
  x = _grey(3, seed=3, size=48)
  variables, report = vit_params_from_timm(_numpy_state(small), model_name="vit_tiny",
                                           in_channels=3, image_size=48)
  ref = _timm_tokens(big, x)
  feats = _apply_vit("vit_tiny", variables, x)
  assert float(np.abs(np.asarray(feats.global_embedding) - ref[:, 0]).max()) <= TOL
  assert float(np.abs(np.asarray(feats.local) - ref[:, 1:]).max()) <= TOL
  assert any("4x4 -> 6x6" in n for n in report.notes)


def test_hugging_face_vitmodel_layout_matches_transformers():
  transformers = pytest.importorskip("transformers")
  cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                               hidden_act="gelu", layer_norm_eps=1e-12)
  torch.manual_seed(2)
  model = transformers.ViTModel(cfg).eval()
  x = _grey(1, seed=4, size=32)
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(np.repeat(x, 3, -1)).permute(0, 3, 1, 2)
                ).last_hidden_state.numpy()
  memory = _numpy_state(model)  # transformers 5 names (layers.i.attention.q_proj, ...)
  hub = {}  # the names in the Hub's model.safetensors files (encoder.layer.i.attention....)
  for k, v in memory.items():
    for new, old in HUB_NAMES.items():
      k = k.replace(new, old)
    hub[k] = v
  for state in (memory, {"vit." + k: v for k, v in hub.items()}):  # + ViTForImageClassification
    variables, report = vit_params_from_timm(state, model_name="vit_tiny", in_channels=1,
                                             image_size=32)
    feats = vit("vit_tiny", dtype=jnp.float32, norm_eps=1e-12).apply(variables, jnp.asarray(x),
                                                                      train=False)
    assert float(np.abs(np.asarray(feats.global_embedding) - ref[:, 0]).max()) <= TOL
    assert float(np.abs(np.asarray(feats.local) - ref[:, 1:]).max()) <= TOL
    assert all("pooler." in k for k in report.unused), report.unused


HUB_NAMES = {"layers.": "encoder.layer.", "attention.q_proj": "attention.attention.query",
             "attention.k_proj": "attention.attention.key",
             "attention.v_proj": "attention.attention.value",
             "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
             "mlp.fc2": "output.dense"}


def _normalised_rgb(grey01, mean, std):
  return ((np.repeat(grey01, 3, -1) - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32)).astype(np.float32)


def test_imagenet_normalisation_folds_exactly_into_the_vit_patch_embedding():
  model = _timm_vit_b16()
  g = np.random.default_rng(5).uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32)
  m_in, s_in = 0.5, 0.25  # the run's data.mean / data.std
  variables, report = vit_params_from_timm(
      _numpy_state(model), model_name="vit_b16", image_size=SIZE,
      source_norm=(stems.IMAGENET_MEAN, stems.IMAGENET_STD), input_norm=(m_in, s_in))
  ref = _timm_tokens(model, _normalised_rgb(g, stems.IMAGENET_MEAN, stems.IMAGENET_STD))
  feats = _apply_vit("vit_b16", variables, (g - m_in) / s_in)
  assert float(np.abs(np.asarray(feats.local) - ref[:, 1:]).max()) <= TOL
  assert float(np.abs(np.asarray(feats.global_embedding) - ref[:, 0]).max()) <= TOL
  assert any("folded" in n for n in report.notes)


def test_imagenet_normalisation_folds_into_the_resnet_stem_except_its_zero_padded_ring():
  tv = _torchvision("resnet18")
  g = np.random.default_rng(6).uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32)
  m_in, s_in = 0.5, 0.25
  variables, _ = resnet_params_from_torchvision(
      _numpy_state(tv), model_name="resnet18",
      source_norm=(stems.IMAGENET_MEAN, stems.IMAGENET_STD), input_norm=(m_in, s_in))
  x_rgb = _normalised_rgb(g, stems.IMAGENET_MEAN, stems.IMAGENET_STD)
  with torch.no_grad():
    ref = tv.bn1(tv.conv1(torch.from_numpy(x_rgb).permute(0, 3, 1, 2))).permute(0, 2, 3, 1).numpy()
  model = resnet("resnet18", dtype=jnp.float32)
  _, inter = model.apply(variables, jnp.asarray((g - m_in) / s_in), train=False,
                         capture_intermediates=True)
  ours = np.asarray(inter["intermediates"]["stem_norm"]["__call__"][0])
  # Stem output i sees input rows 2i-3 .. 2i+3: rows/cols 0, 1 and the last touch the padding.
  inner = (slice(None), slice(2, -1), slice(2, -1))
  assert float(np.abs(ours[inner] - ref[inner]).max()) <= TOL
  assert float(np.abs(ours - ref).max()) > TOL  # the ring differs: documented, not hidden


def test_a_checkpoint_of_another_architecture_names_missing_and_mismatched_tensors():
  state = _numpy_state(_torchvision("resnet18"))
  with pytest.raises(WeightsMismatchError, match=r"missing \(first: params/stage1_block0/conv3"
                     r"/kernel.*shape mismatches \(first: params/stage1_block0/conv1/kernel: "
                     r"ours \(1, 1, 64, 64\) vs source layer1\.0\.conv1\.weight") as e:
    resnet_params_from_torchvision(state, model_name="resnet50")
  assert e.value.report.missing and e.value.report.mismatched


def test_a_truncated_safetensors_file_is_a_clear_error(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = tmp_path / "model.safetensors"
  save_file({"conv1.weight": np.ones((64, 3, 7, 7), np.float32)}, str(path))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(files.CheckpointFileError, match=r"truncated or corrupt.*fetch it again"):
    files.read_tensors(tmp_path)


def test_train_state_starts_from_the_imported_weights_teacher_included(tmp_path, monkeypatch):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from experiments.configs import convirt  # pylint: disable=g-import-not-at-top
  from experiments.configs.base import make_tiny  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  state_dict = _numpy_state(_torchvision("resnet18"))
  save_file(state_dict, str(tmp_path / "resnet18.safetensors"))
  c = make_tiny(convirt.get_config(), image_tower="resnet18")
  c.model.image.weights = str(tmp_path / "resnet18.safetensors")
  c.train.ema.update(dict(enabled=True, collections=("params", "batch_stats")))
  mesh = mesh_lib.make_mesh(c.mesh, devices=jax.devices()[:1])
  state, _ = state_lib.create_train_state(c, jax.random.key(0), mesh)
  expected, _ = resnet_params_from_torchvision(
      state_dict, model_name="resnet18", source_norm=(stems.IMAGENET_MEAN, stems.IMAGENET_STD),
      input_norm=(float(c.data.mean), float(c.data.std)))
  for tree in (state, state.ema):
    get = (lambda k: getattr(tree, k)) if tree is state else tree.get
    np.testing.assert_array_equal(get("params")["image_tower"]["stem_conv"]["kernel"],
                                  expected["params"]["stem_conv"]["kernel"])
    np.testing.assert_array_equal(get("batch_stats")["image_tower"]["stem_norm"]["mean"],
                                  expected["batch_stats"]["stem_norm"]["mean"])
    np.testing.assert_array_equal(
        get("params")["image_tower"]["stage4_block1"]["conv2"]["kernel"],
        expected["params"]["stage4_block1"]["conv2"]["kernel"])
  # A file of another architecture stops the run before anything is built, naming the tensors.
  c.model.image.name = "resnet50"
  with pytest.raises(WeightsMismatchError, match="missing"):
    state_lib.create_train_state(c, jax.random.key(0), mesh)


def test_stem_kernel_keeps_the_checkpoints_channels_sums_rgb_for_one_and_refuses_others():
  from mmrl.models.pretrained import stems  # pylint: disable=g-import-not-at-top
  w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
  same, offset, note = stems.stem_kernel(w, 3, what="stem")
  assert same is w and offset is None and note is None
  one, offset, note = stems.stem_kernel(w, 1, what="stem")
  np.testing.assert_allclose(one, w.sum(axis=1, keepdims=True), rtol=1e-6)
  assert not np.any(offset) and note.startswith("stem: 1-channel kernel")
  with pytest.raises(ValueError, match="only 1"):
    stems.stem_kernel(w, 2, what="stem")
  with pytest.raises(ValueError, match="normalise the input per channel"):
    stems.stem_kernel(w, 3, what="stem", source_norm=(stems.HALF, stems.HALF),
                      input_norm=(0.5, 0.25))
