"""Released Lightning checkpoints written by PyTorch Lightning itself (`Trainer.save_checkpoint`).

`save_with_trainer(model, path, hparams)` wraps the reference `model` (whose attributes are the
authors' top-level modules, so the state dict keys are theirs) in a LightningModule that calls
`save_hyperparameters(hparams)` as the authors' modules do -- GLoRIA's `PretrainModel` passes its
OmegaConf `DictConfig`, MGCA's `MGCA` its keyword arguments (an `AttributeDict`) -- runs one
optimiser step with learning rate 0 (so `optimizer_states` holds real Adam moments and the weights
do not change) and saves through `Trainer.save_checkpoint`.

Lightning here is the installed 2.x; the releases were written by 1.1.x (GLoRIA) and 1.5.x
(MGCA). `pl1_extras=True` adds what 1.1.x with `precision=16` also wrote and 2.x does not: the
AMP scaler state (`native_amp_scaling_state`) and `callbacks` keyed by the callback *class*
rather than by a string.
"""
from __future__ import annotations

import pathlib
from typing import Any

import torch


def save_with_trainer(model: torch.nn.Module, path: pathlib.Path, hparams: Any, *,
                      pl1_extras: bool = False, version: str | None = None) -> pathlib.Path:
  """See the module docstring. `model` is left in eval mode with unchanged weights."""
  import pytorch_lightning as pl  # pylint: disable=import-outside-toplevel

  class Released(pl.LightningModule):
    def __init__(self, cfg):
      super().__init__()
      self.save_hyperparameters(cfg)
      for name, child in model.named_children():
        self.add_module(name, child)

    def training_step(self, batch, batch_idx):
      del batch, batch_idx
      params = [p for p in self.parameters() if p.is_floating_point()][:4]
      return sum((p ** 2).sum() for p in params)

    def configure_optimizers(self):
      return torch.optim.Adam(self.parameters(), lr=0.0)

  module = Released(hparams)
  data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1, 1)))
  trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, num_sanity_val_steps=0)
  trainer.fit(module, train_dataloaders=data)
  trainer.save_checkpoint(str(path))
  model.eval()
  if pl1_extras or version:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    if version:
      ckpt["pytorch-lightning_version"] = version
    if pl1_extras:
      from pytorch_lightning import callbacks  # pylint: disable=import-outside-toplevel
      ModelCheckpoint = callbacks.ModelCheckpoint  # pylint: disable=invalid-name
      ckpt["callbacks"] = {ModelCheckpoint: {"monitor": "val_loss",
                                             "best_model_score": torch.tensor(1.5),
                                             "best_model_path": "epoch=7.ckpt"}}
      ckpt["native_amp_scaling_state"] = {"scale": 65536.0, "growth_factor": 2.0,
                                          "backoff_factor": 0.5, "growth_interval": 2000,
                                          "_growth_tracker": 0}
    torch.save(ckpt, str(path))
  return path
