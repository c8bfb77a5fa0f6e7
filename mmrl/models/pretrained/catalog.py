"""Named ImageNet weights and where each is looked for on disk (never downloaded at run time).

config.model.image.weights is 'none' (random init), a local file / folder path, or a name below.
A name is resolved in this order (first hit wins):
  1. $MMRL_WEIGHTS_DIR/<file>   (`file` below; HF-hub names: a folder <org>--<repo>/ holding
                                 model.safetensors [+ config.json])
  2. the torch hub cache        ($TORCH_HOME or ~/.cache/torch)/hub/checkpoints/<file>
  3. the Hugging Face hub cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)/
                                 models--<org>--<repo>/snapshots/<rev>/model.safetensors
`python -m experiments.fetch_weights NAME` puts a name's file there on a machine with internet.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

from mmrl.config_errors import ConfigError
from mmrl.models.pretrained import stems


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
  """One named checkpoint.

  arch: our tower (config.model.image.name) it fits.  kind: 'torchvision' | 'timm' | 'hf'.
  file: torch-hub file name (torchvision) or '' ; hf_repo: the Hugging Face repo (timm / hf).
  torchvision_weights: the torchvision weights enum ('ResNet50_Weights.IMAGENET1K_V1'), whose
  `.url` fetch_weights downloads; norm: (mean[3], std[3]) the weights expect.
  norm_eps: LayerNorm epsilon of a ViT (config.model.image.layer_norm_eps must match).
  paper: who uses it (for docs/pretrained.md).
  """
  arch: str
  kind: str
  norm: tuple[tuple[float, ...], tuple[float, ...]]
  file: str = ""
  torchvision_weights: str = ""
  hf_repo: str = ""
  norm_eps: float = 1e-6
  description: str = ""


CATALOG: dict[str, WeightsEntry] = {
    "torchvision:resnet18": WeightsEntry(
        "resnet18", "torchvision", (stems.IMAGENET_MEAN, stems.IMAGENET_STD),
        file="resnet18-f37072fd.pth",
        torchvision_weights="ResNet18_Weights.IMAGENET1K_V1",
        description="torchvision ResNet18_Weights.IMAGENET1K_V1"),
    "torchvision:resnet50": WeightsEntry(
        "resnet50", "torchvision", (stems.IMAGENET_MEAN, stems.IMAGENET_STD),
        file="resnet50-0676ba61.pth",
        torchvision_weights="ResNet50_Weights.IMAGENET1K_V1",
        description="torchvision ResNet50_Weights.IMAGENET1K_V1 (pretrained=True)"),
    "torchvision:resnet50.v2": WeightsEntry(
        "resnet50", "torchvision", (stems.IMAGENET_MEAN, stems.IMAGENET_STD),
        file="resnet50-11ad3fa6.pth",
        torchvision_weights="ResNet50_Weights.IMAGENET1K_V2",
        description="torchvision ResNet50_Weights.IMAGENET1K_V2"),
    "timm:vit_base_patch16_224": WeightsEntry(
        "vit_b16", "timm", (stems.HALF, stems.HALF),
        hf_repo="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        description="timm ViT-B/16, augreg2 ImageNet-21k -> 1k"),
    "timm:deit_base_patch16_224": WeightsEntry(
        "vit_b16", "timm", (stems.IMAGENET_MEAN, stems.IMAGENET_STD),
        hf_repo="timm/deit_base_patch16_224.fb_in1k",
        description="timm DeiT-B/16 (Touvron et al.), ImageNet-1k"),
    "hf:google/vit-base-patch16-224-in21k": WeightsEntry(
        "vit_b16", "hf", (stems.HALF, stems.HALF), hf_repo="google/vit-base-patch16-224-in21k",
        norm_eps=1e-12, description="Hugging Face ViTModel, ImageNet-21k"),
}
NONE = "none"


def fetch_command(name: str) -> str:
  return f"python -m experiments.fetch_weights {name}"


def weights_dir() -> pathlib.Path | None:
  value = os.environ.get("MMRL_WEIGHTS_DIR", "")
  return pathlib.Path(value).expanduser() if value else None


def torch_hub_dir() -> pathlib.Path:
  home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
  return pathlib.Path(home).expanduser() / "hub" / "checkpoints"


def hf_hub_dir() -> pathlib.Path:
  if os.environ.get("HF_HUB_CACHE"):
    return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
  return pathlib.Path(home).expanduser() / "hub"


def local_name(entry: WeightsEntry) -> str:
  """The file (torchvision) or folder (HF-hub names) name inside $MMRL_WEIGHTS_DIR."""
  return entry.file if entry.kind == "torchvision" else entry.hf_repo.replace("/", "--")


def candidates(name: str) -> list[pathlib.Path]:
  """Every place `name` is looked for, in resolution order."""
  entry = CATALOG[name]
  out = []
  wd = weights_dir()
  if wd is not None:
    out.append(wd / local_name(entry) / ("" if entry.kind == "torchvision" else "model.safetensors"))
  if entry.kind == "torchvision":
    out.append(torch_hub_dir() / entry.file)
  else:
    snapshots = hf_hub_dir() / f"models--{entry.hf_repo.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*/model.safetensors")) if snapshots.is_dir() else []
    out += found or [snapshots / "<revision>" / "model.safetensors"]
  return [pathlib.Path(str(p).rstrip("/")) for p in out]


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A resolved config.model.image.weights: the file and what it expects."""
  spec: str
  path: pathlib.Path
  entry: WeightsEntry | None   # None for an explicit path


def resolve(spec: str, *, arch: str) -> Resolved | None:
  """config.model.image.weights -> Resolved (None for 'none'); ConfigError when not on disk."""
  spec = str(spec).strip()
  if spec.lower() == NONE:
    return None
  if not spec:
    raise ConfigError("config.model.image.weights is empty; give 'none' (random init), a local "
                      f"file, or one of: {', '.join(CATALOG)}")
  if spec in CATALOG:
    entry = CATALOG[spec]
    if entry.arch != arch:
      raise ConfigError(f"config.model.image.weights={spec!r} is a {entry.arch} checkpoint but "
                        f"config.model.image.name={arch!r}; set image.name={entry.arch!r} or "
                        "choose other weights")
    places = candidates(spec)
    for p in places:
      if p.is_file():
        return Resolved(spec, p, entry)
    raise ConfigError(
        f"config.model.image.weights={spec!r} ({entry.description}) is not on disk; looked for "
        + ", ".join(str(p) for p in places)
        + f". Fetch it on a machine with internet access with `{fetch_command(spec)}` (set "
        "MMRL_WEIGHTS_DIR to choose the folder) and copy it here, or set "
        "config.model.image.weights=none to train from random init")
  path = pathlib.Path(spec).expanduser()
  if path.exists():
    return Resolved(spec, path, None)
  if ":" in spec and not path.is_absolute():
    raise ConfigError(f"config.model.image.weights={spec!r} is not a known name ({', '.join(CATALOG)}) "
                      "nor an existing path")
  raise ConfigError(f"config.model.image.weights={spec!r}: no such file or folder; give 'none', "
                    f"a local checkpoint, or one of: {', '.join(CATALOG)}")
