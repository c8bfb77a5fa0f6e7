"""Sentence -> image-grid alignment maps of every method, for localisation and heat maps.

`make_alignment_fn(config, mesh, state_shardings)` returns a jitted, batch-sharded

    fn(state, global_batch) -> {'maps': f32[B,S,gh,gw], 'sentence_mask': bool[B,S]}

where maps[b, s] scores every cell of image b's feature grid (row-major `grid_hw`) for report
sentence s of the same row (higher = the sentence is about that cell). The model runs with
`train=False` (BatchNorm running statistics). Each method's map comes from its own local
alignment where it has one:

  lovt      'lovt/attention_s2r': each sentence's attention over the regions in LoVT's symmetric
            cross-attention (softmax over regions of (W_k z_a).(W_k z_b)/sqrt(d)).
  gloria    GLoRIA's word->region attention alpha (gloria_local's tau1 / exact), averaged over the
            words of each sentence ([CLS] left out).
  mgca      MGCA tca's word side: softmax_r(w_t . p_r / tau_l) of the L2-normalised local word
            and patch embeddings, averaged over the words of each sentence.
  mlip      the same tca word->patch attention on the words tca reads (config: the knowledge-
            enhanced words 'text_words_knowledge').
  lrclr     the same tca word->region attention with LRCLR's own local head (region_input Dense +
            region_projection) applied to *every* grid cell, not only the top-k it selected
            (the head is position-wise, so the selected cells get exactly their training
            embeddings; unselected cells are scored by the same head).
  place     the VPOE cross-attention of the queries over the patches ('query_attention'),
            mixed per sentence by softmax_k(cos(query_k, sentence) / tau_p) (set_align's tau):
            the queries that represent the sentence, as set_align's max over queries picks them.
  local_mi  the critic's score T(region r, sentence s) of each region with each sentence of the
            same report (the critic of Liao et al. applied to every sentence, not only the one
            sampled in training; with pairs='global' the critic is applied to the grid cells too).
  convirt   (no local head) the cosine similarity between the projected sentence feature
            (ConVIRT's text projection on the tower's sentence feature) and each region feature
            passed through ConVIRT's *image* projection. This is our choice: ConVIRT never trained
            the projections on regions, which is the point of the comparison.
Any other method falls back to the ConVIRT choice (it needs 'image_projection'/'text_projection').

Words are mapped to sentences through the batch's `token_to_word` / `token_to_sentence`.

`make_query_batch(images, queries, tokenizer, ...)` is the text-query variant: one row per
(image, query sentence) pair, the query as a one-sentence report, so `fn` gives the map of an
arbitrary sentence (e.g. the templated NIH ChestX-ray14 sentences) over its image.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmrl.config_errors import ConfigError
from mmrl.models import towers
from mmrl.objectives.contrastive import l2_normalize
from mmrl.objectives.gloria import gloria_attention_maps
from mmrl.objectives.methods import get_method, method_config, objective_options
from mmrl.objectives.registry import declared_options
from mmrl.parallel.mesh import batch_sharding
from mmrl.ops.masking import NEG_INF

# Batch keys the alignment function reads (the model's keys plus word ids and validity).
ALIGNMENT_KEYS = ("image", "input_ids", "attention_mask", "token_to_sentence", "token_to_word",
                  "sentence_mask", "valid")
LOCAL_SOURCES = {
    "lovt": "LoVT sentence->region cross-attention",
    "gloria": "GLoRIA word->region attention, mean over the sentence's words",
    "mgca": "MGCA tca word->patch attention, mean over the sentence's words",
    "mlip": "MLIP tca (knowledge-enhanced) word->patch attention, mean over the sentence's words",
    "lrclr": "LRCLR tca word->region attention over all cells, mean over the sentence's words",
    "place": "PLACE query->patch attention, mixed by query-sentence similarity",
    "local_mi": "Liao critic score of each region with each sentence",
    "convirt": "cosine(text projection of sentence, image projection of region) [our choice]",
}


def map_source(method_name: str) -> str:
  """One line saying where `method_name`'s maps come from (for reports and docs)."""
  return LOCAL_SOURCES.get(method_name, LOCAL_SOURCES["convirt"] + " (fallback)")


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------


def word_sentence_matrix(token_to_word: jax.Array, token_to_sentence: jax.Array,
                         attention_mask: jax.Array, num_words: int, num_sentences: int,
                         word_offset: int = 0) -> jax.Array:
  """f32[B, W, S]: 1 where word slot w (after `word_offset` leading slots, e.g. [CLS]) has a
  piece in sentence s. Words beyond `num_words` and padding tokens contribute nothing."""
  w_ids = jnp.asarray(token_to_word, jnp.int32) + int(word_offset)
  s_ids = jnp.asarray(token_to_sentence, jnp.int32)
  ok = (jnp.asarray(attention_mask) > 0) & (s_ids >= 0) & (w_ids >= word_offset)
  ok = ok & (jnp.asarray(token_to_word) >= 0)
  w1 = jax.nn.one_hot(jnp.where(ok, w_ids, -1), num_words, dtype=jnp.float32)     # [B,L,W]
  s1 = jax.nn.one_hot(jnp.where(ok, s_ids, -1), num_sentences, dtype=jnp.float32)  # [B,L,S]
  return (jnp.einsum("blw,bls->bws", w1, s1) > 0).astype(jnp.float32)


def pool_words_to_sentences(word_maps: jax.Array, word_mask: jax.Array,
                            word_to_sentence: jax.Array) -> jax.Array:
  """Mean over each sentence's valid words: word_maps f[B,W,R] -> f32[B,S,R] (0 for a sentence
  without any word)."""
  m = word_to_sentence * jnp.asarray(word_mask, jnp.float32)[:, :, None]           # [B,W,S]
  total = jnp.einsum("bws,bwr->bsr", m, word_maps.astype(jnp.float32))
  return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)[:, :, None]


def word_patch_attention(words: jax.Array, word_mask: jax.Array, regions: jax.Array,
                         tau: float) -> jax.Array:
  """MGCA tca's word side: softmax_r(w_t . p_r / tau) of L2-normalised features, f32[B,W,R]
  (rows of padded words are zeroed)."""
  s = jnp.einsum("bwd,brd->bwr", l2_normalize(words.astype(jnp.float32)),
                 l2_normalize(regions.astype(jnp.float32))) / tau
  return jax.nn.softmax(s, axis=-1) * jnp.asarray(word_mask, jnp.float32)[:, :, None]


def cosine_maps(sentences: jax.Array, regions: jax.Array) -> jax.Array:
  """cos(sentence s, region r) f32[B,S,R]."""
  return jnp.einsum("bsd,brd->bsr", l2_normalize(sentences.astype(jnp.float32)),
                    l2_normalize(regions.astype(jnp.float32)))


# ---------------------------------------------------------------------------------------------
# Per-method maps from the model outputs
# ---------------------------------------------------------------------------------------------



def _sub(tree: Any, key: str, what: str) -> Any:
  if not tree or key not in tree:
    raise ConfigError(f"alignment maps: the state has no {what} {key!r} (known: "
                      f"{sorted(tree) if tree else []}); was the state built for this config?")
  return tree[key]


def _apply_projection(state, name: str, x: jax.Array, *, hidden: int, out: int, norm: str,
                      dtype: Any, output_norm: str = "none") -> jax.Array:
  """Runs the MLPProjection head `name` of the model (its params and BatchNorm statistics) on x."""
  from mmrl.heads.projection import MLPProjection  # pylint: disable=g-import-not-at-top
  variables = {"params": _sub(state.params, name, "head")}
  if state.batch_stats and name in state.batch_stats:
    variables["batch_stats"] = state.batch_stats[name]
  module = MLPProjection(hidden=hidden, out=out, norm=norm, output_norm=output_norm, dtype=dtype)
  return module.apply(variables, x, train=False)


def _word_maps_to_sentences(word_maps, word_mask, batch, num_sentences, word_offset):
  w2s = word_sentence_matrix(batch["token_to_word"], batch["token_to_sentence"],
                             batch["attention_mask"], word_maps.shape[1], num_sentences,
                             word_offset=word_offset)
  return pool_words_to_sentences(word_maps, word_mask, w2s)


def _tca_maps(outputs, batch, method_cfg, num_sentences, *, regions=None):
  opts = (objective_options(method_cfg, "tca") or objective_options(method_cfg, "lrclr_region")
          or declared_options("tca"))
  words_key = str(opts["words_key"])
  word_mask = outputs[str(opts["word_mask_key"])]
  if regions is None:
    regions = outputs[str(opts["regions_key"])]
  att = word_patch_attention(outputs[words_key], word_mask, regions, float(opts["tau"]))
  return _word_maps_to_sentences(att, word_mask, batch, num_sentences, 0)


def method_maps(config: Any, state: Any, outputs: Mapping[str, Any],
                batch: Mapping[str, jax.Array]) -> jax.Array:
  """f32[B,S,R] maps of `config.method.name` (module docstring) from the model outputs."""
  method_cfg = method_config(config.method)  # the method's declared option defaults filled in
  name = str(method_cfg.name)
  image, text = outputs["image"], outputs["text"]
  s = int(text.sentence_mask.shape[-1])
  dtype = towers.compute_dtype(config.model)
  if name == "lovt":
    return outputs["lovt/attention_s2r"].astype(jnp.float32)
  if name == "gloria":
    opts = objective_options(method_cfg, "gloria_local") or declared_options("gloria_local")
    alpha = gloria_attention_maps(outputs["text_words"], outputs["word_mask"],
                                  outputs["image_regions"], outputs["region_mask"],
                                  tau1=float(opts["tau1"]), exact=bool(opts["exact"]))
    offset = 1 if bool(method_cfg.word_include_cls) else 0
    word_mask = jnp.asarray(outputs["word_mask"], bool)
    if offset:  # [CLS] is word 0 in training; a sentence's map pools its own words only
      word_mask = word_mask.at[:, 0].set(False)
    return _word_maps_to_sentences(alpha, word_mask, batch, s, offset)
  if name in ("mgca", "mlip"):
    return _tca_maps(outputs, batch, method_cfg, s)
  if name == "lrclr":
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    p = method_cfg.lrclr
    x = nn.Dense(int(p.width), dtype=dtype).apply(
        {"params": _sub(state.params, "region_input", "head")}, image.local)
    regions = _apply_projection(state, "region_projection", x,
                                hidden=int(method_cfg.projection_hidden),
                                out=int(method_cfg.embed_dim),
                                norm=str(method_cfg.projection_norm), dtype=dtype)
    return _tca_maps(outputs, batch, method_cfg, s, regions=regions.astype(jnp.float32))
  if name == "place":
    opts = objective_options(method_cfg, "set_align") or declared_options("set_align")
    if "query_attention" not in outputs:
      raise ConfigError("alignment maps for 'place' need its set_align heads (query_attention); "
                        "list set_align in config.method.objectives")
    sim = cosine_maps(outputs["sentence_embed"], outputs["query_embed"])          # [B,S,K]
    weights = jax.nn.softmax(sim / float(opts["tau"]), axis=-1)
    return jnp.einsum("bsk,bkr->bsr", weights, outputs["query_attention"].astype(jnp.float32))
  if name == "local_mi":
    from mmrl.heads.critics import make_critic  # pylint: disable=g-import-not-at-top
    critic = make_critic(str(method_cfg.critic), hidden=tuple(method_cfg.critic_hidden),
                         dim=int(method_cfg.critic_dim), dtype=dtype, name=None)
    params = {"params": _sub(state.params, "critic", "head")}
    one = lambda x, y: critic.apply(params, x[None], y)[0]                        # [S,R]
    return jax.vmap(one)(image.local, text.sentences).astype(jnp.float32)
  # ConVIRT and any method without a local head: projections applied to regions / sentences.
  kw = dict(hidden=int(method_cfg.projection_hidden), out=int(method_cfg.embed_dim),
            norm=str(method_cfg.projection_norm), dtype=dtype)
  regions = _apply_projection(state, "image_projection", image.local, **kw)
  sentences = _apply_projection(state, "text_projection", text.sentences, **kw)
  return cosine_maps(sentences, regions)


def make_alignment_fn(config: Any, mesh: Mesh, state_shardings: Any, *, similarity: bool = False
                      ) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
  """`fn(state, global_batch) -> {'maps': f32[B,S,gh,gw], 'sentence_mask': bool[B,S]}`, jitted
  with the state's shardings and the batch sharded along its leading axis.

  The batch needs ALIGNMENT_KEYS (extra keys are ignored). Padded sentences (and every sentence
  of a row with valid=False) are False in 'sentence_mask'; their maps are zeros.
  similarity=True adds 'sim_maps' f32[B,S,gh,gw], the BioViL-style similarity maps of
  `mmrl.evaluation.maps.similarity_maps` from the same forward pass (same masking).
  """
  get_method(config.method)  # fails early with the known names on a bad config.method.name
  if similarity:
    from mmrl.evaluation.maps import similarity_maps  # pylint: disable=g-import-not-at-top

  def fn(state, batch):
    batch = {k: batch[k] for k in ALIGNMENT_KEYS if k in batch}
    outputs = state.apply_fn(state.variables(state.params), batch, train=False)
    maps = method_maps(config, state, outputs, batch)
    image = outputs["image"]
    gh, gw = image.grid_hw
    mask = jnp.asarray(outputs["text"].sentence_mask, bool) & jnp.asarray(
        batch["sentence_mask"], bool)
    if "valid" in batch:
      mask = mask & jnp.asarray(batch["valid"], bool)[:, None]
    maps = jnp.where(mask[:, :, None], maps, 0.0)
    b, s = mask.shape
    out = {"maps": maps.reshape(b, s, gh, gw), "sentence_mask": mask}
    if similarity:
      sim = similarity_maps.similarity_maps(config, state, outputs, batch)
      out["sim_maps"] = jnp.where(mask[:, :, None], sim, 0.0).reshape(b, s, gh, gw)
    return out

  bs = batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(state_shardings, bs), out_shardings=bs)


# ---------------------------------------------------------------------------------------------
# Text-query variant
# ---------------------------------------------------------------------------------------------


def make_query_batch(images: np.ndarray, queries: Sequence[tuple[int, str]], tokenizer: Any, *,
                     max_tokens: int, max_sentences: int, batch_size: int
                     ) -> list[dict[str, np.ndarray]]:
  """Host batches of (image, one query sentence) rows for the alignment function.

  Args:
    images: f32[N,H,W,1] normalised images (the batch contract's 'image').
    queries: (image index, sentence) pairs; each becomes one row whose report is that sentence.
    tokenizer: a `data_pipeline.tokenization.ReportTokenizer`.
    max_tokens, max_sentences: the config's data.max_tokens / data.max_sentences.
    batch_size: rows per batch (the last batch is padded with valid=False rows).

  Returns:
    Batches with ALIGNMENT_KEYS; row j of the concatenation is queries[j] (maps[:, 0] is the
    query's map).
  """
  out = []
  for start in range(0, len(queries), batch_size):
    chunk = list(queries[start:start + batch_size])
    n = len(chunk)
    enc = tokenizer.encode_batch([[q] for _, q in chunk], max_tokens, max_sentences)
    pad = batch_size - n
    idx = np.array([i for i, _ in chunk] + [chunk[0][0]] * pad, np.int64)
    sent_mask = np.zeros([batch_size, max_sentences], bool)
    sent_mask[:n, 0] = True
    batch = {"image": np.asarray(images, np.float32)[idx], "sentence_mask": sent_mask,
             "valid": np.arange(batch_size) < n}
    for k in ("input_ids", "attention_mask", "token_to_sentence", "token_to_word"):
      v = enc[k].astype(np.int32)
      batch[k] = np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) if pad else v
    out.append(batch)
  return out


__all__ = ["make_alignment_fn", "make_query_batch", "method_maps", "map_source",
           "word_sentence_matrix", "pool_words_to_sentences", "word_patch_attention",
           "cosine_maps", "ALIGNMENT_KEYS", "LOCAL_SOURCES"]
