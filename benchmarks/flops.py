"""Analytic FLOPs of one training step: ResNet / ViT / BERT towers plus each method's heads.

CONVENTION: 1 FLOP = one multiply OR one add, so a multiply-accumulate (MAC) is 2 FLOPs and a
[m,k] x [k,n] matrix product costs 2*m*k*n FLOPs. Only matrix products and convolutions are
counted (the terms that run on tensor cores and dominate the time); normalisation, activations,
softmax, pooling, embedding lookups and the optimiser update are not. This is the usual MFU
convention (PaLM appendix B). Published "GFLOPs" tables for vision models (torchvision, fvcore,
the ViT/DeiT papers) count MACs: ResNet-50 at 224² (3 channels, with its 1000-way classifier) is
4.09 G*MACs* = 8.2 GFLOPs here; ViT-B/16 at 224² is 17.6 GMACs = 35.1 GFLOPs here.

Training step = forward + backward. Backward through a matrix product costs two products (the
input gradient and the weight gradient), so a trainable part costs 3x its forward. A frozen part
whose input needs no gradient (a frozen tower, or the frozen *bottom* layers of BERT) costs its
forward only, as XLA drops the backward pass there. Rematerialisation (config remat,
GLoRIA's chunked loss) recomputes forwards; those recomputations are NOT counted (model FLOPs,
not hardware FLOPs), so remat lowers MFU as it should.

Heads are counted from the method's layer sizes in the config ("roughly": every matrix product of
the heads and objectives, including the batch x batch terms of GLoRIA's word-region attention
and PLACE's set alignment, which grow as B² and matter at batch 512).

Used by benchmarks/step.py (MFU of mmrl's step) and benchmarks/torch_reference.py (the same count
for the PyTorch model, so both MFUs share one definition).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

# Dense bf16 tensor-core peak, TFLOP/s, by `jax.Device.device_kind` / torch device name substring.
# (NVIDIA datasheets; sparsity excluded.) Lower-case substring match, first hit wins.
PEAK_TFLOPS = (
    ("h200", 989.0),
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("gh200", 989.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("a10g", 125.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v4", 275.0),
)


def peak_tflops(device_kind: str) -> float | None:
  """Dense bf16 peak TFLOP/s for a device kind string, or None when unknown (e.g. CPU)."""
  kind = device_kind.lower()
  for key, value in PEAK_TFLOPS:
    if key in kind:
      return value
  return None


# ---------------------------------------------------------------------------------------------
# Primitives (FLOPs = 2 x MACs)
# ---------------------------------------------------------------------------------------------


def dense(tokens: int, d_in: int, d_out: int) -> float:
  """x[tokens, d_in] @ W[d_in, d_out]."""
  return 2.0 * tokens * d_in * d_out


def conv(out_h: int, out_w: int, c_in: int, c_out: int, kernel: int, groups: int = 1) -> float:
  """A kernel x kernel convolution producing [out_h, out_w, c_out] (one example)."""
  return 2.0 * out_h * out_w * (c_in // groups) * c_out * kernel * kernel


def attention_core(q_len: int, kv_len: int, dim: int) -> float:
  """softmax(Q K^T) V over all heads (dim = heads * head_dim): two products."""
  return 2.0 * 2.0 * q_len * kv_len * dim


def self_attention(tokens: int, dim: int) -> float:
  """Multi-head self-attention: Q, K, V, out projections + the attention core."""
  return 4.0 * dense(tokens, dim, dim) + attention_core(tokens, tokens, dim)


def cross_attention(q_len: int, kv_len: int, dim: int, kv_dim: int | None = None) -> float:
  """Q and out on the queries, K and V on the memory (width kv_dim), the attention core."""
  kv_dim = dim if kv_dim is None else kv_dim
  return (2.0 * dense(q_len, dim, dim) + 2.0 * dense(kv_len, kv_dim, dim)
          + attention_core(q_len, kv_len, dim))


def mlp2(tokens: int, d_in: int, hidden: int, d_out: int) -> float:
  """Linear(d_in -> hidden) -> act -> Linear(hidden -> d_out)."""
  return dense(tokens, d_in, hidden) + dense(tokens, hidden, d_out)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


# ---------------------------------------------------------------------------------------------
# Towers (forward FLOPs per example)
# ---------------------------------------------------------------------------------------------


def resnet_forward(stage_sizes: Sequence[int], widths: Sequence[int], *, bottleneck: bool,
                   stem_width: int, image_size: int, in_channels: int = 1,
                   num_classes: int = 0) -> tuple[float, int]:
  """(forward FLOPs, final grid side) of a v1.5 ResNet (torchvision layout, SAME padding).

  7x7/2 stem, 3x3/2 max-pool, stages of bottleneck (1x1, 3x3 strided, 1x1 x4) or basic (3x3,
  3x3) blocks with a 1x1 projection shortcut where the shape changes; `num_classes` > 0 adds a
  final classifier (for comparison with published counts).
  """
  side = _ceil_div(image_size, 2)
  flops = conv(side, side, in_channels, stem_width, 7)
  side = _ceil_div(side, 2)
  c = stem_width
  expansion = 4 if bottleneck else 1
  for s, (blocks, width) in enumerate(zip(stage_sizes, widths)):
    for b in range(blocks):
      stride = 2 if (s > 0 and b == 0) else 1
      out_side = _ceil_div(side, stride)
      out_c = width * expansion
      if bottleneck:
        flops += conv(side, side, c, width, 1)
        flops += conv(out_side, out_side, width, width, 3)
        flops += conv(out_side, out_side, width, out_c, 1)
      else:
        flops += conv(out_side, out_side, c, width, 3)
        flops += conv(out_side, out_side, width, width, 3)
      if stride != 1 or c != out_c:
        flops += conv(out_side, out_side, c, out_c, 1)
      side, c = out_side, out_c
  if num_classes:
    flops += dense(1, c, num_classes)
  return flops, side


def vit_forward(*, patch: int, dim: int, depth: int, mlp_dim: int, image_size: int,
                in_channels: int = 1, num_classes: int = 0) -> tuple[float, int]:
  """(forward FLOPs, number of patch tokens) of a pre-LN ViT with a [CLS] token."""
  n = (image_size // patch) ** 2
  t = n + 1
  flops = conv(image_size // patch, image_size // patch, in_channels, dim, patch)
  block = self_attention(t, dim) + mlp2(t, dim, mlp_dim, dim)
  flops += depth * block
  if num_classes:
    flops += dense(1, dim, num_classes)
  return flops, n


def bert_layer_forward(seq_len: int, hidden: int, intermediate: int) -> float:
  """One post-LN BERT layer: self-attention + the feed-forward pair."""
  return self_attention(seq_len, hidden) + mlp2(seq_len, hidden, intermediate, hidden)


# ---------------------------------------------------------------------------------------------
# Sizes read from an mmrl config
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one training step at a global batch, split by part (all already x batch)."""
  image: float        # image tower, fwd (+bwd unless frozen)
  text: float         # text tower, fwd (+bwd of its trainable layers)
  heads: float        # projections, pooling, attention heads and the objectives' products
  batch_size: int
  image_forward_per_example: float
  text_forward_per_example: float

  @property
  def total(self) -> float:
    return self.image + self.text + self.heads

  def as_dict(self) -> dict[str, float]:
    return {"flops_per_step": self.total, "flops_image": self.image, "flops_text": self.text,
            "flops_heads": self.heads, "flops_image_fwd_per_example":
            self.image_forward_per_example, "flops_text_fwd_per_example":
            self.text_forward_per_example}


def image_tower_forward(name: str, image_size: int) -> tuple[float, int, int]:
  """(forward FLOPs per example, number of local features R, feature width) for an mmrl tower."""
  from mmrl.models.resnet import RESNETS  # pylint: disable=g-import-not-at-top
  from mmrl.models.vit import VITS  # pylint: disable=g-import-not-at-top
  if name in RESNETS:
    s = RESNETS[name]
    f, side = resnet_forward(s.stage_sizes, s.widths, bottleneck=s.bottleneck,
                             stem_width=s.stem_width, image_size=image_size)
    return f, side * side, s.out_dim
  if name in VITS:
    s = VITS[name]
    f, n = vit_forward(patch=s.patch, dim=s.dim, depth=s.depth, mlp_dim=s.mlp_dim,
                       image_size=image_size)
    return f, n, s.dim
  raise ValueError(f"flops: image tower {name!r} is not a ResNet or ViT known to mmrl")


def _objective_names(config: Any) -> list[str]:
  return [str(o["name"]) for o in config.method.objectives]


def lovt_heads_forward(batch: int, *, regions: int, sentences: int, image_dim: int,
                       text_dim: int, embed_dim: int, hidden: int, image_pool: bool = True,
                       text_pool: bool = True, local_sides: Sequence[str] = ("image", "report")
                       ) -> float:
  """Forward FLOPs of LoVT's heads and local losses (mmrl's `lovt` method and the PyTorch
  reference's LoVT mode): attention pools (one mean query, MHA over regions / sentences), global
  and local mlp2 projections, `lovt_symmetric` cross-attention (shared K, V, out; R x S scores;
  both weighted sums) and the intra-sample [N, N] similarity of each local side."""
  e, h = embed_dim, hidden
  f = mlp2(1, image_dim, h, e) + mlp2(1, text_dim, h, e)
  if image_pool:
    f += 2 * dense(1, image_dim, image_dim) + 2 * dense(regions, image_dim, image_dim)
    f += attention_core(1, regions, image_dim)
  if text_pool:
    f += 2 * dense(1, text_dim, text_dim) + 2 * dense(sentences, text_dim, text_dim)
    f += attention_core(1, sentences, text_dim)
  f += mlp2(regions, image_dim, h, e) + mlp2(sentences, text_dim, h, e)
  f += 3 * dense(regions + sentences, e, e) + dense(regions, e, sentences)
  f += 2 * dense(regions, sentences, e)
  for side in local_sides:
    n = regions if side == "image" else sentences
    f += dense(n, e, n)
  return batch * f


def convirt_heads_forward(batch: int, *, image_dim: int, text_dim: int, embed_dim: int,
                          hidden: int) -> float:
  """Forward FLOPs of ConVIRT's two global mlp2 projections."""
  return batch * (mlp2(1, image_dim, hidden, embed_dim) + mlp2(1, text_dim, hidden, embed_dim))


def heads_forward(config: Any, *, batch: int, regions: int, image_dim: int, text_dim: int
                  ) -> float:
  """Forward FLOPs of the method's heads and objectives at global batch `batch` (rough)."""
  m = config.method
  name = str(m.name)
  seq = int(config.data.max_tokens)
  sentences = int(config.data.max_sentences)
  e, h = int(m.get("embed_dim", 512)), int(m.get("projection_hidden", 2048))
  objectives = _objective_names(config)
  b = batch
  f = 0.0
  if "clip_nce" in objectives:
    f += dense(b, e if name != "gloria" else text_dim, b)  # the [B, B] logits
  if name == "convirt":
    f += convirt_heads_forward(b, image_dim=image_dim, text_dim=text_dim, embed_dim=e, hidden=h)
  elif name == "lovt":
    sides = [str(o.get("side", "image")) for o in config.method.objectives
             if o["name"] == "intra_local_nce"]
    f += lovt_heads_forward(b, regions=regions, sentences=sentences, image_dim=image_dim,
                            text_dim=text_dim, embed_dim=e, hidden=h,
                            image_pool=str(m.get("image_pool", "avgpool_mha")) == "avgpool_mha",
                            text_pool=str(m.get("text_pool", "sentence_mha")) == "sentence_mha",
                            local_sides=sides)
  elif name == "gloria":
    words = int(m.get("max_words", 96))
    f += b * (dense(regions, image_dim, text_dim) + dense(1, image_dim, text_dim))
    if "gloria_local" in objectives:
      # every caption against every image: scores, context, cosine: [B, B, W, R, D]
      f += b * b * (2 * dense(words, text_dim, regions) + dense(words, text_dim, 1))
  elif name == "place":
    p = m.place
    k = int(p.num_queries)
    heads = b * (mlp2(1, image_dim, h, e) + mlp2(1, text_dim, h, e))
    if "set_align" in objectives:
      dec = int(p.decoder_layers) * (self_attention(k, image_dim)
                                     + cross_attention(k, regions, image_dim)
                                     + mlp2(k, image_dim, int(p.decoder_mlp_dim), image_dim))
      heads += b * (dec + mlp2(k, image_dim, h, e) + mlp2(sentences, text_dim, h, e))
      f += b * b * dense(k, e, sentences)
    if "corr_predict" in objectives:
      pred = int(p.predictor_layers) * (
          self_attention(regions, image_dim) + cross_attention(regions, seq, image_dim, text_dim)
          + mlp2(regions, image_dim, int(p.predictor_mlp_dim), image_dim))
      heads += b * (pred + dense(regions, image_dim, image_dim))
      f += b * 2 * dense(regions, image_dim, regions)  # target and predicted correlations
    f += heads
  else:
    # Unknown method: count the two global projections only (a lower bound).
    f += b * (mlp2(1, image_dim, h, e) + mlp2(1, text_dim, h, e))
  return f


def step_flops(config: Any, batch_size: int | None = None) -> StepFlops:
  """Analytic FLOPs of one training step of the mmrl model described by `config`.

  Reads config.model.image.name, config.data.{image_size, max_tokens, max_sentences},
  config.model.text.{num_layers, hidden_size, intermediate_size} (random-init sizes; with
  text.weights set, the checkpoint's config.json via mmrl.models.towers.text_config),
  config.optim.freeze, config.method.
  """
  from mmrl.models import towers  # pylint: disable=g-import-not-at-top
  b = int(config.train.batch_size if batch_size is None else batch_size)
  img_f, regions, image_dim = image_tower_forward(str(config.model.image.name),
                                                  int(config.data.image_size))
  tc = towers.text_config(config.model)
  seq = int(config.data.max_tokens)
  layer = bert_layer_forward(seq, tc.hidden_size, tc.intermediate_size)
  freeze = config.optim.freeze
  text_fwd = tc.num_layers * layer
  if freeze.get("text", False):
    text = b * text_fwd
  else:
    n_frozen = min(int(freeze.get("text_first_n_layers", 0)), tc.num_layers)
    # Frozen bottom layers: forward only (no parameter or input gradient is needed below them).
    text = b * (n_frozen * layer + 3 * (tc.num_layers - n_frozen) * layer)
  image = b * img_f * (1 if freeze.get("image", False) else 3)
  heads = 3 * heads_forward(config, batch=b, regions=regions, image_dim=image_dim,
                            text_dim=tc.hidden_size)
  return StepFlops(image=image, text=text, heads=heads, batch_size=b,
                   image_forward_per_example=img_f, text_forward_per_example=text_fwd)


def reference_step_flops(*, method: str, batch: int, image_size: int, seq_len: int,
                         in_channels: int = 1, hidden: int = 768, layers: int = 12,
                         intermediate: int = 3072, embed_dim: int = 512,
                         projection_hidden: int = 2048, sentences: int = 32,
                         resnet_stages: Sequence[int] = (3, 4, 6, 3),
                         resnet_widths: Sequence[int] = (64, 128, 256, 512),
                         stem_width: int = 64, bottleneck: bool = True) -> float:
  """FLOPs of one step of benchmarks/torch_reference.py's model (every part trainable): ResNet
  + BERT + the `method`'s heads ('convirt': global projections; 'lovt': LoVT's heads and both
  local losses) + the [B, B] global logits. The same counting as `step_flops`."""
  img_f, side = resnet_forward(resnet_stages, resnet_widths, bottleneck=bottleneck,
                               stem_width=stem_width, image_size=image_size,
                               in_channels=in_channels)
  image_dim = resnet_widths[-1] * (4 if bottleneck else 1)
  text_f = layers * bert_layer_forward(seq_len, hidden, intermediate)
  kw = dict(image_dim=image_dim, text_dim=hidden, embed_dim=embed_dim, hidden=projection_hidden)
  if method == "convirt":
    heads = convirt_heads_forward(batch, **kw)
  elif method == "lovt":
    heads = lovt_heads_forward(batch, regions=side * side, sentences=sentences, **kw)
  else:
    raise ValueError(f"reference_step_flops: method={method!r}; use 'convirt' or 'lovt'")
  heads += dense(batch, embed_dim, batch)
  return 3.0 * (batch * (img_f + text_f) + heads)


def describe(flops: float) -> str:
  """'12.3 TFLOP' style."""
  if flops <= 0 or math.isnan(flops):
    return "0 FLOP"
  units = ("", "K", "M", "G", "T", "P")
  i = min(int(math.log10(flops) // 3), len(units) - 1)
  return f"{flops / 10 ** (3 * i):.3g} {units[i]}FLOP"
