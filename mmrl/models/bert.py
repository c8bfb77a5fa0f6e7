"""The BERT text tower: a BERT encoder plus token / sentence / global pooling -> TextFeatures.

Encoder (the HF `BertModel` computation, so HF checkpoints load 1:1 via hf_weights.py):
embeddings = LayerNorm(word + absolute position + token_type[0]); then N post-LN layers
x = LN(x + SelfAttention(x)); x = LN(x + Dense(act(Dense(x)))) with act = exact-erf GELU for HF
'gelu'. Attention is `jax.nn.dot_product_attention` (vit.SelfAttention), cuDNN's fused kernel on
GPU in half precision.

Padding: our batch contract (data_pipeline/batch_spec.py) pads on the right, so by default
(`padding='right'`) the padding is given to attention as `key_value_seq_lengths =
sum(attention_mask)` (what cuDNN's fused kernel takes: `jax.nn.dot_product_attention(...,
implementation='cudnn')` refuses a [B, 1, 1, L] boolean mask). `padding='any'` passes a
[B, 1, 1, L] boolean mask instead (XLA implementation), for left- or mid-padded inputs.
For right-padded inputs both give the same outputs (tests/test_bert.py).

Attention implementation (`attention_impl`, config.model.text.attention_impl): None (default) =
cuDNN's fused kernel on GPU in half precision where it applies, XLA's otherwise (and when this
cuDNN build rejects the shape); 'xla' = always XLA's; 'cudnn' = always cuDNN's (needs
padding='right', a GPU and bf16/fp16; fails loudly instead of falling back).

`cls_attention=True` also returns the last layer's [CLS] -> token attention, head-mean, as
TextFeatures.cls_attention f32[B, L] (MGCA's word weights, METHODS.md §4.1), computed by a
separate q_cls . K softmax over the last layer's keys with the same padding
(vit.cls_attention_row), so the fused kernel is untouched.

Outputs (all float32):
  tokens     last hidden state [B, L, D]; with sum_last_layers=n the sum of the last n hidden
             states (GLoRIA's `last_n_layers: 4, aggregate_method: sum`, METHODS.md §3.1)
  token_mask content tokens: token_to_sentence >= 0 and attention_mask == 1 (no [CLS]/[SEP]/pad)
  sentences  pool_sentences(tokens, token_to_sentence, S, sentence_pool) + sentence_mask
  global     global_pool: 'cls' = the [CLS] hidden state; 'max_tokens' / 'mean_tokens' = masked
             max / mean over the content tokens (ConVIRT uses max); 'mean_positions' = the sum
             over all attended tokens ([CLS] .. [SEP]) divided by L, the padded length
             (GLoRIA's mean over all word slots with zero pads, METHODS.md §3.1).

Dropout (HF trains with 0.1) is off unless `BertConfig.dropout_rate` > 0; with it, train-mode
calls need `rngs={'dropout': key}`.

Parameter paths (see towers.py): `embeddings/{word,position,token_type}_embeddings/embedding`,
`embeddings/norm`, `layer_{i}/attention/{query,key,value,out}`, `layer_{i}/attention_norm`,
`layer_{i}/intermediate`, `layer_{i}/output`, `layer_{i}/output_norm`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.models import remat as remat_lib
from mmrl.ops.pooling import masked_max, masked_mean, pool_sentences
from mmrl.models.features import TextFeatures
from mmrl.models.vit import SelfAttention

GLOBAL_POOLS = ("cls", "max_tokens", "mean_tokens", "mean_positions")
SENTENCE_POOLS = ("max", "mean")
PADDINGS = ("right", "any")
ATTENTION_IMPLS = (None, "xla", "cudnn")
_ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT sizes (the fields of an HF config.json that the computation depends on)."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  dropout_rate: float = 0.0

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ConfigError(f"text hidden_size={self.hidden_size} is not a multiple of "
                       f"num_heads={self.num_heads}; set config.model.text.num_heads to a divisor")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"BERT hidden_act={self.hidden_act!r} is not supported; known: "
                       f"{', '.join(sorted(_ACTIVATIONS))}")
    if self.num_layers < 1:
      raise ConfigError(f"BERT num_layers={self.num_layers} must be >= 1 "
                       "(config.model.text.num_layers)")

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], *, source: str = "config.json") -> "BertConfig":
    """Builds the config from an HF BERT config.json dict; `source` names it in errors."""
    model_type = hf.get("model_type", "bert")
    if model_type != "bert":
      raise ValueError(f"{source}: model_type={model_type!r} is not 'bert'; only BERT-layout "
                       "checkpoints (BertModel) can be loaded")
    pos_type = hf.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
      raise ValueError(f"{source}: position_embedding_type={pos_type!r} is not supported; "
                       "only 'absolute'")
    try:
      return cls(vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
                 num_layers=int(hf["num_hidden_layers"]),
                 num_heads=int(hf["num_attention_heads"]),
                 intermediate_size=int(hf["intermediate_size"]),
                 max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
                 type_vocab_size=int(hf.get("type_vocab_size", 2)),
                 layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                 hidden_act=str(hf.get("hidden_act", "gelu")))
    except KeyError as e:
      raise ValueError(f"{source} lacks the key {e.args[0]!r} that a BERT config needs") from None


class BertEmbeddings(nn.Module):
  """word + position + token_type[0] embeddings, LayerNorm, dropout."""
  config: BertConfig
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    c = self.config
    length = input_ids.shape[1]
    if length > c.max_position_embeddings:
      raise ConfigError(f"token length {length} exceeds the text tower's "
                       f"max_position_embeddings={c.max_position_embeddings}; lower "
                       "config.data.max_tokens")
    init = nn.initializers.normal(0.02)
    embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=self.dtype, embedding_init=init,
                                     name=name)
    x = embed(c.vocab_size, "word_embeddings")(input_ids)
    pos = embed(c.max_position_embeddings, "position_embeddings")(jnp.arange(length))
    tok = embed(c.type_vocab_size, "token_type_embeddings")(jnp.zeros((1,), jnp.int32))
    x = x + pos[None] + tok[None]
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=self.deterministic)


class BertLayer(nn.Module):
  """Post-LN transformer layer (HF BertLayer)."""
  config: BertConfig
  dtype: Any = jnp.float32
  deterministic: bool = True
  return_cls_attention: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, kv_lengths: jax.Array | None, mask: jax.Array | None):
    """x f[B, L, D] -> f[B, L, D] (and the [CLS] attention row f32[B, L] when asked)."""
    c = self.config
    init = nn.initializers.normal(0.02)
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)
    y = SelfAttention(c.num_heads, dtype=self.dtype, kernel_init=init,
                      implementation=self.attention_impl, name="attention")(
                          x, kv_lengths=kv_lengths, mask=mask,
                          return_cls_attention=self.return_cls_attention)
    attn = None
    if self.return_cls_attention:
      y, attn = y
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="attention_norm")(
        x + drop(y))
    y = nn.Dense(c.intermediate_size, dtype=self.dtype, kernel_init=init, name="intermediate")(x)
    y = _ACTIVATIONS[c.hidden_act](y)
    y = nn.Dense(c.hidden_size, dtype=self.dtype, kernel_init=init, name="output")(y)
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="output_norm")(x + drop(y))
    return (x, attn) if self.return_cls_attention else x


class BertTextTower(nn.Module):
  """BERT encoder + pooling -> TextFeatures (module docstring).

  Attributes:
    config: BERT sizes.
    global_pool: 'cls' | 'max_tokens' | 'mean_tokens'.
    sentence_pool: 'max' | 'mean'.
    dtype: compute dtype; parameters stay float32; outputs are float32.
    remat: rematerialise each layer in the backward pass.
    remat_policy: what a rematerialised layer keeps (mmrl.models.remat.POLICIES).
    padding: 'right' (key_value_seq_lengths, the batch contract) | 'any' (boolean mask).
    attention_impl: None | 'xla' | 'cudnn' (module docstring).
    cls_attention: also return the last layer's [CLS] attention row (module docstring).
    sum_last_layers: tokens = the sum of the last n hidden states (HF `hidden_states[-n:]`,
      the embeddings' output counting as one; GLoRIA: 4); 1 = the last layer.
  """
  config: BertConfig
  global_pool: str = "cls"
  sentence_pool: str = "max"
  dtype: Any = jnp.bfloat16
  remat: bool = False
  remat_policy: str = "nothing"
  padding: str = "right"
  attention_impl: str | None = None
  cls_attention: bool = False
  sum_last_layers: int = 1

  def __post_init__(self):
    if not 1 <= self.sum_last_layers <= self.config.num_layers + 1:
      raise ConfigError(f"config.model.text.sum_last_layers={self.sum_last_layers} must be in "
                        f"1..{self.config.num_layers + 1} (the hidden states: embeddings + "
                        f"{self.config.num_layers} layers)")
    if self.global_pool not in GLOBAL_POOLS:
      raise ConfigError(f"config.model.text.global_pool={self.global_pool!r} is not supported; "
                       f"use one of {GLOBAL_POOLS}")
    if self.sentence_pool not in SENTENCE_POOLS:
      raise ConfigError(f"config.model.text.sentence_pool={self.sentence_pool!r} is not "
                       f"supported; use one of {SENTENCE_POOLS}")
    if self.padding not in PADDINGS:
      raise ValueError(f"BERT padding={self.padding!r} is not supported; use one of {PADDINGS}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ConfigError(f"config.model.text.attention_impl={self.attention_impl!r} is not "
                        f"supported; use one of {ATTENTION_IMPLS}")
    if self.attention_impl == "cudnn" and self.padding != "right":
      raise ConfigError("config.model.text.attention_impl='cudnn' needs right-padded text "
                        "(padding='right': key/value sequence lengths); cuDNN refuses a boolean "
                        "mask. Use attention_impl=None or 'xla' with padding='any'")
    super().__post_init__()

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_to_sentence: jax.Array, *, num_sentences: int,
               train: bool) -> TextFeatures:
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be i32[B, L]; got shape {input_ids.shape}")
    deterministic = not train
    x = BertEmbeddings(self.config, dtype=self.dtype, deterministic=deterministic,
                       name="embeddings")(input_ids)
    if self.padding == "right":
      # At least 1 so an all-padding row (an evaluation filler example) stays finite.
      kv_lengths = jnp.maximum(jnp.sum(attention_mask > 0, axis=-1), 1).astype(jnp.int32)
      mask = None
    else:
      kv_lengths = None
      mask = (attention_mask > 0)[:, None, None, :]
    layer_cls = remat_lib.maybe_remat(BertLayer, self.remat, self.remat_policy,
                                      "model.text.remat_policy")
    cls_attention = None
    hidden = [x]  # HF hidden_states: the embeddings' output, then each layer's
    for i in range(self.config.num_layers):
      last = self.cls_attention and i == self.config.num_layers - 1
      x = layer_cls(self.config, dtype=self.dtype, deterministic=deterministic,
                    return_cls_attention=last, attention_impl=self.attention_impl,
                    name=f"layer_{i}")(x, kv_lengths, mask)
      if last:
        x, cls_attention = x
      hidden.append(x)

    tokens = sum(h.astype(jnp.float32) for h in hidden[-self.sum_last_layers:])
    token_mask = (token_to_sentence >= 0) & (attention_mask > 0)
    if self.global_pool == "cls":
      global_embedding = tokens[:, 0]
    elif self.global_pool == "max_tokens":
      global_embedding = masked_max(tokens, token_mask)
    elif self.global_pool == "mean_positions":
      real = (attention_mask > 0)[..., None]
      global_embedding = jnp.sum(jnp.where(real, tokens, 0.0), axis=1) / tokens.shape[1]
    else:
      global_embedding = masked_mean(tokens, token_mask)
    sentence_ids = jnp.where(token_mask, token_to_sentence, -1)
    sentences, sentence_mask = pool_sentences(tokens, sentence_ids, num_sentences,
                                              self.sentence_pool)
    return TextFeatures(global_embedding=global_embedding, tokens=tokens, token_mask=token_mask,
                        sentences=sentences, sentence_mask=sentence_mask,
                        cls_attention=cls_attention)
