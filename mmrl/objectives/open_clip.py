"""Method `open_clip`: the heads of an open_clip `CustomTextCLIP` with a timm image tower and a
Hugging Face text tower (BiomedCLIP, Zhang et al. 2023; mlfoundations/open_clip).

Image: `TimmModel(proj='linear', proj_bias=False)` = a bias-free Linear on the tower's global
feature (timm ViT: [CLS] after the final norm) -> 'image_embed' [B, embed_dim]
(`LinearProjection(use_bias=False)`, 'image_projection'). Text: `HFTextEncoder(proj_type='mlp')`
= Linear(D -> (D + embed_dim) // 2, no bias) -> exact GELU -> Linear(-> embed_dim, no bias) on the
pooled [CLS] (`cls_last_hidden_state_pooler` = config.model.text.global_pool='cls') ->
'text_embed' (`MLPProjection(activation='gelu', use_bias=False)`, 'text_projection'; hidden =
config.method.projection_hidden). Both un-normalised (open_clip's encode_* with normalize=False).
The logit scale: open_clip's `logit_scale` s (logits = exp(s) * cos) is our 'temperature/log_tau'
= -s ('log_tau' output), present when an objective has learnable_tau=True (the config's
clip_nce does), so the import carries the trained temperature.
The objectives are the config's (experiments/configs/open_clip.py: clip_nce, CLIP's symmetric
InfoNCE); this method exists to evaluate and fine-tune released open_clip models.
"""
from __future__ import annotations

import jax.numpy as jnp

from mmrl.heads.projection import LinearProjection, LogTemperature, MLPProjection
from mmrl.objectives.methods import METHODS, Method


@METHODS.register("open_clip")
class OpenCLIP(Method):
  """open_clip CustomTextCLIP heads (module docstring)."""

  def apply_heads(self, image, text, batch, *, train, dtype):
    del batch
    c = self.cfg
    d = int(c.embed_dim)
    image_embed = LinearProjection(d, use_bias=False, dtype=dtype, name="image_projection")(
        image.global_embedding, train=train)
    text_embed = MLPProjection(hidden=int(c.projection_hidden), out=d, activation="gelu",
                               use_bias=False, dtype=dtype, name="text_projection")(
                                   text.global_embedding, train=train)
    out = {"image_embed": image_embed.astype(jnp.float32),
           "text_embed": text_embed.astype(jnp.float32)}
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out
