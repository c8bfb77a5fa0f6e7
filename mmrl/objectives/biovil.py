"""Method `biovil`: BioViL's two towers (Boecking et al., ECCV 2022; microsoft/hi-ml) as heads.

Image: the projector `MLP(2048 -> J -> J, use_1x1_convs)` = 1x1 conv (no bias) -> BatchNorm ->
ReLU -> 1x1 conv, applied to every cell of the ResNet-50's last grid
(`mmrl.heads.projection.MLPProjection(norm='batch')` on `image.local`); the image embedding is
the mean of the projected grid (`ImageModel.forward_post_encoder`: projected_global_embedding),
not a projection of the pooled feature. Text: CXR-BERT's [CLS] through `BertProjectionHead`
(`mmrl.heads.biovil_heads`). Reads config.method.{embed_dim (J), projection_hidden (= J in the
release)}. Outputs 'image_embed', 'text_embed' [B, J] (un-normalised, as the source's before its
F.normalize) and 'image_regions' [B, R, J] (projected patches, BioViL's phrase-grounding
features), 'region_mask'.

The objectives are the config's (experiments/configs/biovil.py: clip_nce); BioViL's own training
also had masked-language modelling and was done in stages, which this method does not reproduce:
it exists to evaluate and fine-tune the released weights.
"""
from __future__ import annotations

import jax.numpy as jnp

from mmrl.heads.biovil_heads import BertProjectionHead
from mmrl.heads.projection import MLPProjection
from mmrl.objectives.methods import METHODS, Method


@METHODS.register("biovil")
class BioViL(Method):
  """BioViL heads (module docstring)."""

  def apply_heads(self, image, text, batch, *, train, dtype):
    del batch
    c = self.cfg
    d = int(c.embed_dim)
    regions = MLPProjection(hidden=int(c.get("projection_hidden", d)), out=d, norm="batch",
                            dtype=dtype, name="image_projection")(image.local, train=train)
    regions = regions.astype(jnp.float32)
    text_embed = BertProjectionHead(d, dtype=dtype, name="text_projection")(
        text.global_embedding, train=train)
    return {"image_embed": jnp.mean(regions, axis=1), "text_embed": text_embed.astype(jnp.float32),
            "image_regions": regions, "region_mask": jnp.ones(regions.shape[:2], bool)}
