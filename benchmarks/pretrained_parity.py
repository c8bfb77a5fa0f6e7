"""Parity of every image-weights importer against the PyTorch model it reads (the table in
docs/pretrained.md).

COMMAND: python -m benchmarks.pretrained_parity [--size=64] [--markdown]
Needs the `torch` extra (torch, torchvision, timm, transformers); no downloads: each PyTorch model
is built by its own library with seeded random weights (BatchNorm statistics from one train-mode
batch), float32, `--size` px inputs; the same input goes to both sides (1 channel: replicated to
RGB for PyTorch, with the RGB kernels summed on ours; 3 channels: unchanged). For each importer it
prints the max |ours - PyTorch| over ResNet stages conv2..conv5 / ViT [CLS] + patch tokens, the
largest |PyTorch| value (the scale), for ResNets how far PyTorch's own float32 result lies from its
float64 one (the rounding floor at that scale), and the tensors imported / unused (dropped).
"""
from __future__ import annotations

import argparse
import copy
import time

import jax
import jax.numpy as jnp
import numpy as np


def _state(module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _x(channels, size, seed):
  return np.random.default_rng(seed).normal(size=(2, size, size, channels)).astype(np.float32)


def _torch_in(x):
  import torch  # pylint: disable=import-outside-toplevel
  rgb = np.repeat(x, 3, -1) if x.shape[-1] == 1 else x
  return torch.from_numpy(rgb).permute(0, 3, 1, 2)


def seeded_torchvision_resnet(name: str, size: int):
  """torchvision's `name` (resnet18 | resnet50) with seeded random weights, a random BatchNorm
  affine and running statistics from one train-mode batch of `size` px; in eval mode."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      torch.nn.init.normal_(m.weight, 1.0, 0.2)
      torch.nn.init.normal_(m.bias, 0.0, 0.2)
      m.momentum = 1.0
  model.train()
  with torch.no_grad():
    model(torch.randn(4, 3, size, size))
  return model.eval()


def resnet_rows(size):
  import torch  # pylint: disable=import-outside-toplevel
  from mmrl.models.pretrained import resnet_params_from_torchvision  # pylint: disable=import-outside-toplevel
  from mmrl.models.resnet import resnet  # pylint: disable=import-outside-toplevel
  rows = []
  for name in ("resnet18", "resnet50"):
    tv = seeded_torchvision_resnet(name, size)
    state = _state(tv)
    model = resnet(name, dtype=jnp.float32)
    fwd = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False,
                                                        capture_intermediates=True)[1])
    for channels in (1, 3):
      x = _x(channels, size, channels)
      variables, report = resnet_params_from_torchvision(state, model_name=name,
                                                         in_channels=channels)
      inter = fwd(variables, jnp.asarray(x))["intermediates"]
      with torch.no_grad():
        refs = {}
        for dtype in (torch.float32, torch.float64):
          net = copy.deepcopy(tv).to(dtype)
          h = net.maxpool(net.relu(net.bn1(net.conv1(_torch_in(x).to(dtype)))))
          refs[dtype] = []
          for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            h = layer(h)
            refs[dtype].append(h.permute(0, 2, 3, 1).numpy())
      diff = scale = fp64 = 0.0
      for s, (ref, ref64) in enumerate(zip(refs[torch.float32], refs[torch.float64])):
        ours = np.asarray(inter[f"stage{s + 1}_block{model.stage_sizes[s] - 1}"]["__call__"][0])
        diff = max(diff, float(np.abs(ours - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        fp64 = max(fp64, float(np.abs(ref - ref64).max()))
      rows.append((f"torchvision {name}", f"{channels}-ch, conv2..conv5", diff, scale, report,
                   fp64))
  return rows


def _vit_row(label, what, torch_model, state, our_name, channels, size, eps=1e-6, forward=None):
  import torch  # pylint: disable=import-outside-toplevel
  from mmrl.models.pretrained import vit_params_from_timm  # pylint: disable=import-outside-toplevel
  from mmrl.models.vit import vit  # pylint: disable=import-outside-toplevel
  x = _x(channels, size, 10 + channels)
  variables, report = vit_params_from_timm(state, model_name=our_name, in_channels=channels,
                                           image_size=size)
  model = vit(our_name, dtype=jnp.float32, norm_eps=eps)
  feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))
  with torch.no_grad():
    ref = (forward or torch_model.forward_features)(_torch_in(x)).numpy()
  ours = np.concatenate([np.asarray(feats.global_embedding)[:, None], np.asarray(feats.local)], 1)
  return (label, what, float(np.abs(ours - ref).max()), float(np.abs(ref).max()), report)


def vit_rows(size):
  import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  rows = []
  for name in ("vit_base_patch16_224", "deit_base_patch16_224"):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, img_size=size).eval()
    rows.append(_vit_row(f"timm {name}", "1-ch, [CLS] + patches", m, _state(m), "vit_b16", 1, size))
  from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn  # pylint: disable=import-outside-toplevel
  torch.manual_seed(1)
  small = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=0).eval()
  big = VisionTransformer(img_size=48, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                          mlp_ratio=2.0, num_classes=0).eval()
  big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))
  rows.append(("timm ViT (tiny), grid 4x4 -> 6x6", "3-ch, pos-embed resampled", *_vit_row(
      "", "", big, _state(small), "vit_tiny", 3, 48)[2:]))
  return rows


def hf_rows(size):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  cfg = transformers.ViTConfig(image_size=size, patch_size=16, hidden_size=768,
                               num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, layer_norm_eps=1e-12)
  torch.manual_seed(2)
  m = transformers.ViTModel(cfg).eval()
  fwd = lambda px: m(pixel_values=px).last_hidden_state
  return [_vit_row("HF ViTModel (ViT-B/16 sizes)", "1-ch, [CLS] + patches", m, _state(m),
                   "vit_b16", 1, size, eps=1e-12, forward=fwd)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=64)
  args = parser.parse_args()
  start = time.time()
  rows = resnet_rows(args.size) + vit_rows(args.size) + hf_rows(args.size)
  print("| importer | inputs | max abs diff | max abs value | torch fp32 vs fp64 | imported | "
        "unused (dropped) |")
  print("|---|---|---|---|---|---|---|")
  for label, what, diff, scale, report, *fp64 in rows:
    ref64 = f"{fp64[0]:.1e}" if fp64 else "-"
    print(f"| {label} | {what} | {diff:.1e} | {scale:.1f} | {ref64} | {len(report.imported)} | "
          f"{len(report.unused)} |")
  print(f"\n{args.size} px, float32, batch 2; {time.time() - start:.0f} s on "
        f"{jax.devices()[0].platform}")


if __name__ == "__main__":
  main()
