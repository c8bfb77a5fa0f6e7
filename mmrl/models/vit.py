"""ViT image towers for 1-channel images (S/16, B/16, a tiny test net) and the fused self-attention
that both transformer towers (ViT here, BERT in bert.py) use.

ViT: a 1-channel patch embedding (a p x p / p convolution), a learned [CLS] token, learned
position embeddings for the patch grid, pre-LN blocks (x + MHA(LN(x)); x + MLP(LN(x)), exact-erf
GELU), a final LayerNorm. global = the [CLS] token after the final LN, local = the patch tokens
after the final LN (row-major over the grid), grid_hw = (H / p, W / p).

Position embeddings are sized from the image given at `init` (i.e. config.data.image_size); they
are stored as a grid [1, gh, gw, D], and an `apply` on another image size bilinearly resizes them
to the new grid (the usual fine-tune-at-a-new-resolution trick), so no config key is needed. The
[CLS] token carries no separate position embedding (it would be redundant with its own value).

Attention goes through `jax.nn.dot_product_attention`: on GPU with bf16/fp16 and a head size that
cuDNN supports it asks for cuDNN's fused (flash) kernel, elsewhere the XLA implementation.
`cls_attention=True` also returns the last block's [CLS] -> patch attention row (head-mean,
f32[B, R]) from a separate q_cls . K softmax (`cls_attention_row`), leaving the fused kernel as is.

Parameter paths (see towers.py): `patch_embedding`, `cls`, `pos_embedding`, `block_{i}/norm1`,
`block_{i}/attention/{query,key,value,out}`, `block_{i}/norm2`, `block_{i}/mlp/{fc1,fc2}`,
`final_norm`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.models import remat as remat_lib
from mmrl.models.features import ImageFeatures


def attention_implementation(dtype: Any, head_dim: int) -> str | None:
  """'cudnn' where the fused kernel applies (GPU, half precision, head size <= 128, % 8); else None.

  None means XLA's implementation (the only one on CPU/TPU, and what fp32 uses on GPU so that
  parity tests stay exact).
  """
  if jax.default_backend() != "gpu":
    return None
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return None
  if head_dim > 128 or head_dim % 8:
    return None
  return "cudnn"


IMPLEMENTATIONS = (None, "xla", "cudnn")


def cls_attention_row(q_cls: jax.Array, k: jax.Array, *, kv_lengths: jax.Array | None = None,
                      mask: jax.Array | None = None) -> jax.Array:
  """The [CLS] query's attention over all keys, head-mean: f32[B, T].

  A separate q_cls . K softmax (float32, finite -1e9 mask), so the fused attention kernel that
  computes the layer's output is untouched and nothing [B, N, T, T] is materialised.

  Args:
    q_cls: f[B, N, hd] the [CLS] position's queries (heads N).
    k: f[B, T, N, hd] the keys.
    kv_lengths: i32[B], keys >= length are padding (0 weight); or
    mask: bool[B, 1|N, T_q, T] (the row of query 0 is used) / bool[B, 1|N, 1, T].
  """
  hd = q_cls.shape[-1]
  logits = jnp.einsum("bnd,btnd->bnt", q_cls.astype(jnp.float32), k.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST) / jnp.sqrt(jnp.float32(hd))
  t = k.shape[1]
  ok = jnp.ones((k.shape[0], 1, t), bool)
  if kv_lengths is not None:
    ok = ok & (jnp.arange(t)[None, None, :] < kv_lengths[:, None, None])
  if mask is not None:
    ok = ok & jnp.asarray(mask).astype(bool)[:, :, 0, :]
  probs = jax.nn.softmax(jnp.where(ok, logits, -1e9), axis=-1)
  return jnp.mean(jnp.where(ok, probs, 0.0), axis=1)


class SelfAttention(nn.Module):
  """Multi-head self-attention: Dense query/key/value [D -> D] split into heads, fused attention,
  Dense out. Parameter names (query, key, value, out) match the HF BERT layout one-to-one.

  Attributes:
    num_heads: number of heads; D must be a multiple.
    dtype: compute dtype (parameters float32).
    implementation: None = cuDNN's fused kernel where it applies (`attention_implementation`),
      XLA's otherwise or when this cuDNN build rejects the shape; 'xla' = always XLA's; 'cudnn' =
      always cuDNN's (an error where it does not apply: GPU, half precision, sequence lengths, not
      a boolean mask).
  """
  num_heads: int
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()
  implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, kv_lengths: jax.Array | None = None,
               mask: jax.Array | None = None, return_cls_attention: bool = False):
    """x f[B, T, D]; kv_lengths i32[B] (keys >= length are padding) or mask bool[B, 1|N, T, T].

    Returns y f[B, T, D], and with return_cls_attention also `cls_attention_row` f32[B, T] of
    position 0's query.
    """
    if self.implementation not in IMPLEMENTATIONS:
      raise ConfigError(f"attention implementation={self.implementation!r} is not known; use one "
                        f"of {IMPLEMENTATIONS} (config.model.text.attention_impl)")
    b, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"hidden size {d} is not a multiple of num_heads={self.num_heads}; "
                       "choose a head count that divides the hidden size")
    hd = d // self.num_heads
    dense = lambda name: nn.Dense(d, dtype=self.dtype, kernel_init=self.kernel_init, name=name)
    q = dense("query")(x).reshape(b, t, self.num_heads, hd)
    k = dense("key")(x).reshape(b, t, self.num_heads, hd)
    v = dense("value")(x).reshape(b, t, self.num_heads, hd)
    if self.implementation == "cudnn":
      if mask is not None:
        raise ConfigError("attention implementation='cudnn' takes key/value sequence lengths, "
                          "not a boolean mask: use right padding (BERT padding='right')")
      y = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths,
                                       implementation="cudnn")
    elif self.implementation == "xla":
      y = jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=kv_lengths,
                                       implementation="xla")
    else:
      impl = attention_implementation(q.dtype, hd)
      if impl == "cudnn" and mask is not None:
        impl = None  # cuDNN takes sequence lengths, not arbitrary boolean masks.
      y = None
      if impl == "cudnn":
        try:
          y = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths,
                                           implementation="cudnn")
        except (NotImplementedError, RuntimeError, ValueError):
          y = None  # This cuDNN build / GPU rejects the shape at trace time: use XLA's.
      if y is None:
        y = jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=kv_lengths)
    out = dense("out")(y.reshape(b, t, d))
    if return_cls_attention:
      return out, cls_attention_row(q[:, 0], k, kv_lengths=kv_lengths, mask=mask)
    return out


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> exact GELU -> Dense(D)."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.xavier_uniform()
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=init,
                 bias_init=nn.initializers.normal(1e-6), name="fc1")(x)
    y = nn.gelu(y, approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=init,
                    bias_init=nn.initializers.normal(1e-6), name="fc2")(y)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block; with return_cls_attention also its [CLS] attention row."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  return_cls_attention: bool = False
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array):
    y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm1")(x)
    y = SelfAttention(self.num_heads, dtype=self.dtype, name="attention")(
        y, return_cls_attention=self.return_cls_attention)
    attn = None
    if self.return_cls_attention:
      y, attn = y
    x = x + y
    y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm2")(x)
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
    return (x, attn) if self.return_cls_attention else x


@dataclasses.dataclass(frozen=True)
class ViTSpec:
  """Architecture of one named ViT."""
  patch: int
  dim: int
  depth: int
  heads: int
  mlp_dim: int


VITS = {
    "vit_s16": ViTSpec(patch=16, dim=384, depth=12, heads=6, mlp_dim=1536),
    "vit_b16": ViTSpec(patch=16, dim=768, depth=12, heads=12, mlp_dim=3072),
    "vit_tiny": ViTSpec(patch=8, dim=64, depth=2, heads=2, mlp_dim=128),
}


class ViT(nn.Module):
  """A ViT over f32[B, H, W, 1] images -> ImageFeatures (CLS global, patch-token local).

  Attributes:
    patch: patch size p (H and W must be multiples).
    dim, depth, heads, mlp_dim: transformer sizes.
    dtype: compute dtype; parameters stay float32.
    remat: rematerialise each block in the backward pass.
    remat_policy: what a rematerialised block keeps (mmrl.models.remat.POLICIES).
    cls_attention: also return the last block's [CLS] -> patch attention (head-mean) as
      ImageFeatures.cls_attention f32[B, R] (MGCA's patch weights).
    norm_eps: LayerNorm epsilon (timm: 1e-6; Hugging Face ViTModel checkpoints: 1e-12).
  """
  patch: int
  dim: int
  depth: int
  heads: int
  mlp_dim: int
  dtype: Any = jnp.bfloat16
  remat: bool = False
  remat_policy: str = "nothing"
  cls_attention: bool = False
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> ImageFeatures:
    del train  # no dropout / stochastic depth; kept for the tower interface.
    if images.ndim != 4:
      raise ValueError(f"ViT expects images f32[B, H, W, C] (C = 1 for X-rays); got shape "
                       f"{images.shape}")
    b, h, w, _ = images.shape
    p = self.patch
    if h % p or w % p:
      raise ConfigError(f"image size {h}x{w} is not a multiple of the ViT patch size {p}; set "
                       f"config.data.image_size to a multiple of {p}")
    x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="patch_embedding")(images.astype(self.dtype))
    gh, gw = x.shape[1], x.shape[2]
    if self.has_variable("params", "pos_embedding"):
      # Read without a shape check: the stored grid may differ from this image's grid.
      pos = self.get_variable("params", "pos_embedding")
    else:
      pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, gh, gw, self.dim),
                       jnp.float32)
    if pos.shape[1:3] != (gh, gw):
      pos = jax.image.resize(pos, (1, gh, gw, self.dim), method="bilinear")
    x = (x + pos.astype(self.dtype)).reshape(b, gh * gw, self.dim)
    cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, self.dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.dim)), x], axis=1)

    block_cls = remat_lib.maybe_remat(EncoderBlock, self.remat, self.remat_policy,
                                      "model.image.remat_policy")
    attn = None
    for i in range(self.depth):
      last = self.cls_attention and i == self.depth - 1
      x = block_cls(self.heads, self.mlp_dim, dtype=self.dtype, return_cls_attention=last,
                    norm_eps=self.norm_eps, name=f"block_{i}")(x)
      if last:
        x, attn = x
        attn = attn[:, 1:]  # [CLS] -> patches (MGCA: attn[:, :, 0, 1:].mean(heads))
    x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="final_norm")(x)
    x = x.astype(jnp.float32)
    return ImageFeatures(global_embedding=x[:, 0], local=x[:, 1:], grid_hw=(gh, gw),
                         cls_attention=attn)


def vit(name: str, *, dtype: Any = jnp.bfloat16, remat: bool = False,
        cls_attention: bool = False, norm_eps: float = 1e-6, remat_policy: str = "nothing") -> ViT:
  """The named ViT ('vit_s16' | 'vit_b16' | 'vit_tiny')."""
  if name not in VITS:
    raise ConfigError(f"config.model.image.name={name!r} is not a ViT; known: "
                     f"{', '.join(sorted(VITS))}")
  s = VITS[name]
  return ViT(patch=s.patch, dim=s.dim, depth=s.depth, heads=s.heads, mlp_dim=s.mlp_dim,
             dtype=dtype, remat=remat, cls_attention=cls_attention, norm_eps=norm_eps,
             remat_policy=remat_policy)
