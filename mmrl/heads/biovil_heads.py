"""BioViL's text projection head (microsoft/hi-ml, `health_multimodal.text.model.
modelling_cxrbert.BertProjectionHead`): Linear -> exact GELU -> LayerNorm(eps 1e-12) -> Linear,
on CXR-BERT's last-layer [CLS].

It differs from `mmrl.heads.projection.MLPProjection(norm='layer')` (Linear -> LayerNorm -> ReLU
-> Linear): the activation comes before the norm, and it is a GELU. Parameter names follow the
source's (`dense_to_hidden`, `LayerNorm`, `dense_to_output`) so the import is a rename.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BertProjectionHead(nn.Module):
  """x [.., D] -> [.., out]: Dense(out) -> GELU (erf) -> LayerNorm -> Dense(out)."""
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    x = nn.Dense(self.out, dtype=self.dtype, name="dense_to_hidden")(x)
    x = nn.gelu(x, approximate=False)
    x = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="LayerNorm")(x)
    return nn.Dense(self.out, dtype=self.dtype, name="dense_to_output")(x)
