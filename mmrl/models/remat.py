"""Rematerialisation of tower blocks: `config.model.{image,text}.remat` and `.remat_policy`.

With remat on, each ResNet block / ViT block / BERT layer is wrapped in `flax.linen.remat`
(`jax.checkpoint`): its activations are not kept for the backward pass but recomputed from the
block's input, trading FLOPs for memory. The policy says what a block may still keep:

- 'nothing'   keep nothing (the whole block's forward runs again in the backward pass; least
              memory, ~+1 forward of FLOPs);
- 'dots'      keep the outputs of matrix products and convolutions (`dot_general`,
              `conv_general_dilated`) and recompute the elementwise work between them (norms,
              activations; `jax.checkpoint_policies.dots_saveable`);
- 'dots_no_batch'  keep the products without batch dimensions (the dense layers' outputs, not
              attention's [B, H, L, L] scores, nor convolutions;
              `dots_with_no_batch_dims_saveable`).
docs/scaling.md has each policy's measured memory and FLOPs.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax

from mmrl.config_errors import ConfigError


POLICIES: dict[str, Callable[..., bool] | None] = {
    "nothing": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def policy(name: str, key: str = "model.*.remat_policy") -> Callable[..., bool] | None:
  """The jax.checkpoint policy named `name` (module docstring); ConfigError when unknown."""
  if name not in POLICIES:
    raise ConfigError(f"config.{key}={name!r} is not a remat policy; use one of "
                      f"{', '.join(POLICIES)}")
  return POLICIES[name]


def maybe_remat(block_cls: type[nn.Module], remat: bool, policy_name: str = "nothing",
                key: str = "model.*.remat_policy") -> Any:
  """`block_cls` wrapped in nn.remat with the named policy when `remat`, else unchanged."""
  p = policy(policy_name, key)  # checked even when remat is off: a typo never hides
  if not remat:
    return block_cls
  return nn.remat(block_cls, policy=p)
