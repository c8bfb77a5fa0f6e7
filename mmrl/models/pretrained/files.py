"""Reading a checkpoint's tensors from a local file or folder into {name: numpy array}.

Formats: `.safetensors` (read with safetensors.numpy; no torch needed), and PyTorch pickles
(`.pth`, `.pt`, `.bin`, `.ckpt`) read through `torch.load(weights_only=True)` when torch is
installed. A folder is read through its `model.safetensors`, else `pytorch_model.bin`, else its
single `.safetensors` / `.pth` file. Nested dicts (a Lightning checkpoint's `state_dict`, a
`{'model': ...}` wrapper) are flattened with '.' joins, so `prefix='state_dict.'` selects the
inner state dict; non-tensor entries (epoch counters, hyper-parameters) are left out. bfloat16
and float16 tensors come back as float32. Nothing here touches the network.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


class CheckpointFileError(ValueError):
  """The file cannot be read as a checkpoint (truncated, not a checkpoint, needs torch)."""


def checkpoint_file(path: str | pathlib.Path) -> pathlib.Path:
  """The tensor file for `path` (a file, or a folder holding one)."""
  path = pathlib.Path(path).expanduser()
  if path.is_file():
    return path
  if not path.is_dir():
    raise FileNotFoundError(f"{path} does not exist")
  for name in ("model.safetensors", "pytorch_model.bin"):
    if (path / name).is_file():
      return path / name
  files = sorted(p for p in path.iterdir()
                 if p.suffix == ".safetensors" or p.suffix in TORCH_SUFFIXES)
  if len(files) == 1:
    return files[0]
  raise FileNotFoundError(
      f"{path} holds {'no' if not files else len(files)} checkpoint files "
      f"({', '.join(p.name for p in files) or 'none of *.safetensors, *.pth, *.bin'}); point at "
      "the file itself")


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    out[prefix[:-1]] = t.float().numpy() if t.is_floating_point() else t.numpy()
  elif isinstance(obj, dict):
    for k, v in obj.items():
      _flatten(v, f"{prefix}{k}.", out)


def read_tensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{tensor name: array} of the checkpoint at `path` (module docstring)."""
  file = checkpoint_file(path)
  if file.suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      tensors = load_file(str(file))
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers/sizes
      raise CheckpointFileError(
          f"{file} is not a readable safetensors file ({type(e).__name__}: {e}); it is "
          f"probably truncated or corrupt ({file.stat().st_size} bytes): fetch it again") from e
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16"
                else v) for k, v in tensors.items()}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointFileError(
        f"{file} is a PyTorch pickle; reading it needs torch (pip install 'mmrl[torch]'), or "
        "convert it to .safetensors on a machine that has torch") from None
  try:
    obj = torch.load(str(file), map_location="cpu", weights_only=True)
  except Exception as e:  # truncated zip, not a pickle, disallowed globals
    raise CheckpointFileError(
        f"{file} cannot be read by torch.load(weights_only=True) ({type(e).__name__}: "
        f"{str(e)[:300]}); it is truncated, corrupt or not a checkpoint: fetch it again") from e
  out: dict[str, np.ndarray] = {}
  _flatten(obj, "", out)
  if not out:
    raise CheckpointFileError(f"{file} holds no tensors")
  return out
