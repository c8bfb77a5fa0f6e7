"""Downloads named ImageNet weights (docs/pretrained.md) on a machine with internet access.

  python -m experiments.fetch_weights torchvision:resnet50 [--dir=DIR]
  python -m experiments.fetch_weights --list           # names, and whether each is on disk

torchvision names go to the torch hub cache (or DIR / $MMRL_WEIGHTS_DIR) through
torch.hub.load_state_dict_from_url; timm / hf names through huggingface_hub.hf_hub_download into
the Hugging Face hub cache (or DIR/<org>--<repo>/). Training never downloads: it reads what this
put on disk (mmrl.models.pretrained.catalog). Offline, this fails with a message saying so.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Callable

from absl import app
from absl import flags

from mmrl.config_errors import ConfigError
from mmrl.models.pretrained import catalog

_DIR = flags.DEFINE_string("dir", "", "target folder (default: $MMRL_WEIGHTS_DIR, else the "
                           "torch / Hugging Face hub cache)")
_LIST = flags.DEFINE_bool("list", False, "list the known names and where each was found")


class FetchError(RuntimeError):
  """Download failed (offline, missing package, unknown name)."""


def _torchvision(entry: catalog.WeightsEntry, target: pathlib.Path | None) -> pathlib.Path:
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise FetchError("fetching torchvision weights needs torch and torchvision: "
                     "pip install 'mmrl[torch]'") from None
  url = torchvision.models.get_weight(entry.torchvision_weights).url
  folder = target if target is not None else catalog.torch_hub_dir()
  folder.mkdir(parents=True, exist_ok=True)
  torch.hub.load_state_dict_from_url(url, model_dir=str(folder), map_location="cpu",
                                     progress=True, check_hash=True, weights_only=True)
  return folder / entry.file


def _hf(entry: catalog.WeightsEntry, target: pathlib.Path | None) -> pathlib.Path:
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise FetchError("fetching Hugging Face hub weights needs huggingface_hub: "
                     "pip install 'mmrl[torch]'") from None
  kwargs = {}
  if target is not None:
    kwargs["local_dir"] = str(target / catalog.local_name(entry))
  path = huggingface_hub.hf_hub_download(entry.hf_repo, "model.safetensors", **kwargs)
  if entry.kind == "hf":
    huggingface_hub.hf_hub_download(entry.hf_repo, "config.json", **kwargs)
  return pathlib.Path(path)


DOWNLOADERS: dict[str, Callable[[catalog.WeightsEntry, pathlib.Path | None], pathlib.Path]] = {
    "torchvision": _torchvision, "timm": _hf, "hf": _hf}


def fetch(name: str, target: str | pathlib.Path | None = None) -> pathlib.Path:
  """Downloads `name` and returns the file; FetchError with the reason when it cannot."""
  if name not in catalog.CATALOG:
    raise FetchError(f"unknown weights name {name!r}; known: {', '.join(catalog.CATALOG)}")
  entry = catalog.CATALOG[name]
  if target is None and catalog.weights_dir() is not None:
    target = catalog.weights_dir()
  target = pathlib.Path(target).expanduser() if target else None
  where = (f"torchvision {entry.torchvision_weights}" if entry.kind == "torchvision"
           else f"the Hugging Face hub repo {entry.hf_repo}")
  try:
    return DOWNLOADERS[entry.kind](entry, target)
  except FetchError:
    raise
  except Exception as e:  # URLError, OSError, huggingface_hub's offline / HTTP errors
    raise FetchError(
        f"could not download {name} from {where} ({type(e).__name__}: {str(e)[:300]}). This "
        "command needs internet access; on an offline machine, fetch it elsewhere and copy the "
        f"file to one of: {', '.join(str(p) for p in catalog.candidates(name))}") from e


def main(argv):
  names = argv[1:]
  if _LIST.value or not names:
    for name, entry in catalog.CATALOG.items():
      try:
        where = str(catalog.resolve(name, arch=entry.arch).path)
      except ConfigError:
        where = "not on disk"
      print(f"{name:40s} {entry.arch:9s} {entry.description}  [{where}]")
    return 0 if names or _LIST.value else 1
  for name in names:
    try:
      print(f"{name}: {fetch(name, _DIR.value or None)}")
    except FetchError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  app.run(main)
