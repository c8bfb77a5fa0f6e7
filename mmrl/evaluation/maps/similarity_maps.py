"""BioViL-style similarity maps: cos(projected region, projected sentence) of every method.

The second localisation read-out (`config.eval.localisation.readouts`, 'similarity'), beside each
method's *own* map of `mmrl.evaluation.maps.alignment_maps`. BioViL (microsoft/hi-ml,
`ImageTextInferenceEngine.get_similarity_map_from_raw_data`) grounds a phrase by the cosine of
the projected patch embeddings with the projected phrase embedding; here each method's map is the
cosine in the space its local loss aligns, one function per method family, registered by method
name in `SIMILARITY_MAPS`:

  lovt      cos('lovt/sentence_embed', 'lovt/region_embed'): LoVT's local sentence and region
            projections (the space of its local losses).
  gloria    cos(mean of the sentence's word embeddings 'text_words' ([CLS] left out),
            'image_regions' (image_local_projection)): GLoRIA's local image embedding vs words.
  mgca, mlip, lrclr  cos(mean of the sentence's tca words, tca regions) with tca's own keys
            (mlip: the knowledge-enhanced words; lrclr: its region head on every grid cell, as the
            own map does).
  place     cos('sentence_embed', query_projection(patch)): PLACE's sentences live in the space of
            its projected queries; the patches have no projection of their own, so the query
            projection (position-wise MLP) is applied to each patch feature (our choice, like
            ConVIRT's); it needs the decoder width to equal the patch width.
  local_mi  separable critic: cos(g(region), h(sentence)) (its two maps); bilinear critic:
            cos(W region, sentence); the concat-MLP critic (Liao et al.'s) has no shared space:
            `has_similarity` is False and the read-out is skipped.
  convirt   cos(text_projection(sentence), image_projection(region)): today's own map.
  (other)   the ConVIRT choice.

Each function is `fn(config, method_cfg, state, outputs, batch) -> f32[B,S,R]`, reading only the
model outputs of the forward pass that gives the own map (no second forward pass).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.evaluation.maps import alignment_maps as am
from mmrl.models import towers
from mmrl.objectives.methods import method_config, objective_options
from mmrl.objectives.registry import declared_options
from mmrl.registry import Registry

SimilarityFn = Callable[[Any, Any, Any, Mapping[str, Any], Mapping[str, jax.Array]], jax.Array]
SIMILARITY_MAPS: Registry[SimilarityFn] = Registry("similarity map")
SIMILARITY_SOURCES = {
    "lovt": "cos(LoVT local sentence projection, local region projection)",
    "gloria": "cos(mean of the sentence's word embeddings, image_local_projection of the region)",
    "mgca": "cos(mean of the sentence's tca word projections, tca patch projection)",
    "mlip": "cos(mean of the sentence's knowledge-enhanced words, tca patch projection)",
    "lrclr": "cos(mean of the sentence's tca words, LRCLR region head on every cell)",
    "place": "cos(sentence projection, query projection applied to the patch) [our choice]",
    "local_mi": "separable: cos(g(region), h(sentence)); bilinear: cos(W region, sentence); "
                "concat_mlp: none (no shared space)",
    "convirt": "cos(text projection of sentence, image projection of region) = the own map",
}


def sentence_means(words: jax.Array, word_mask: jax.Array, batch: Mapping[str, jax.Array],
                   num_sentences: int, word_offset: int = 0) -> jax.Array:
  """f32[B,S,D]: the mean of each sentence's valid word embeddings words f[B,W,D]."""
  w2s = am.word_sentence_matrix(batch["token_to_word"], batch["token_to_sentence"],
                                batch["attention_mask"], words.shape[1], num_sentences,
                                word_offset=word_offset)
  return am.pool_words_to_sentences(words, word_mask, w2s)


def _num_sentences(outputs) -> int:
  return int(outputs["text"].sentence_mask.shape[-1])


def _proj_kw(config, method_cfg) -> dict:
  return dict(hidden=int(method_cfg.projection_hidden), out=int(method_cfg.embed_dim),
              norm=str(method_cfg.projection_norm), dtype=towers.compute_dtype(config.model))


@SIMILARITY_MAPS.register("lovt")
def _lovt(config, method_cfg, state, outputs, batch):
  del config, method_cfg, state, batch
  return am.cosine_maps(outputs["lovt/sentence_embed"], outputs["lovt/region_embed"])


@SIMILARITY_MAPS.register("gloria")
def _gloria(config, method_cfg, state, outputs, batch):
  del config, state
  offset = 1 if bool(method_cfg.word_include_cls) else 0
  word_mask = jnp.asarray(outputs["word_mask"], bool)
  if offset:
    word_mask = word_mask.at[:, 0].set(False)
  sentences = sentence_means(outputs["text_words"], word_mask, batch, _num_sentences(outputs),
                             offset)
  return am.cosine_maps(sentences, outputs["image_regions"])


def _tca(method_cfg, outputs, batch, regions=None):
  opts = (objective_options(method_cfg, "tca") or objective_options(method_cfg, "lrclr_region")
          or declared_options("tca"))
  word_mask = outputs[str(opts["word_mask_key"])]
  if regions is None:
    regions = outputs[str(opts["regions_key"])]
  sentences = sentence_means(outputs[str(opts["words_key"])], word_mask, batch,
                             _num_sentences(outputs))
  return am.cosine_maps(sentences, regions)


@SIMILARITY_MAPS.register("mgca")
@SIMILARITY_MAPS.register("mlip")
def _mgca(config, method_cfg, state, outputs, batch):
  del config, state
  return _tca(method_cfg, outputs, batch)


def lrclr_regions(config, method_cfg, state, local: jax.Array) -> jax.Array:
  """LRCLR's region head (region_input Dense + region_projection) on every grid cell."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = nn.Dense(int(method_cfg.lrclr.width), dtype=towers.compute_dtype(config.model)).apply(
      {"params": am._sub(state.params, "region_input", "head")}, local)  # pylint: disable=protected-access
  return am._apply_projection(state, "region_projection", x,  # pylint: disable=protected-access
                              **_proj_kw(config, method_cfg)).astype(jnp.float32)


@SIMILARITY_MAPS.register("lrclr")
def _lrclr(config, method_cfg, state, outputs, batch):
  regions = lrclr_regions(config, method_cfg, state, outputs["image"].local)
  return _tca(method_cfg, outputs, batch, regions=regions)


@SIMILARITY_MAPS.register("place")
def _place(config, method_cfg, state, outputs, batch):
  del batch
  if "sentence_embed" not in outputs:
    raise ConfigError("similarity maps for 'place' need its set_align heads (sentence_embed); "
                      "list set_align in config.method.objectives")
  local = outputs["image"].local
  patches = am._apply_projection(state, "query_projection", local,  # pylint: disable=protected-access
                                 **_proj_kw(config, method_cfg))
  return am.cosine_maps(outputs["sentence_embed"], patches)


def _critic_params(state):
  return am._sub(state.params, "critic", "head")  # pylint: disable=protected-access


@SIMILARITY_MAPS.register("local_mi")
def _local_mi(config, method_cfg, state, outputs, batch):
  del batch
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from mmrl.heads import critics  # pylint: disable=g-import-not-at-top
  kind = str(method_cfg.critic)
  dtype = towers.compute_dtype(config.model)
  regions, sentences = outputs["image"].local, outputs["text"].sentences
  params = _critic_params(state)
  if kind == "separable":
    mlp = critics._MLP(tuple(int(h) for h in method_cfg.critic_hidden),  # pylint: disable=protected-access
                       int(method_cfg.critic_dim), dtype)
    g = mlp.apply({"params": params["image_map"]}, regions)
    h = mlp.apply({"params": params["text_map"]}, sentences)
    return am.cosine_maps(h, g)
  if kind == "bilinear":
    wx = nn.Dense(sentences.shape[-1], use_bias=False, dtype=dtype).apply(
        {"params": params["bilinear"]}, regions)
    return am.cosine_maps(sentences, wx)
  raise ConfigError(f"similarity maps: local_mi's critic {kind!r} has no shared embedding space "
                    "(has_similarity is False); drop 'similarity' from "
                    "config.eval.localisation.readouts or use critic='separable' | 'bilinear'")


def _convirt(config, method_cfg, state, outputs, batch):
  del batch
  kw = _proj_kw(config, method_cfg)
  regions = am._apply_projection(state, "image_projection", outputs["image"].local, **kw)  # pylint: disable=protected-access
  sentences = am._apply_projection(state, "text_projection", outputs["text"].sentences, **kw)  # pylint: disable=protected-access
  return am.cosine_maps(sentences, regions)


SIMILARITY_MAPS.register("convirt")(_convirt)


def has_similarity(config: Any) -> bool:
  """Whether `config.method` has a shared region/sentence space (local_mi's concat critic not)."""
  method_cfg = method_config(config.method)
  return not (str(method_cfg.name) == "local_mi" and str(method_cfg.critic) == "concat_mlp")


def similarity_source(method_name: str) -> str:
  """One line saying what `method_name`'s similarity map is (for reports and docs)."""
  return SIMILARITY_SOURCES.get(method_name, SIMILARITY_SOURCES["convirt"] + " (fallback)")


def similarity_maps(config: Any, state: Any, outputs: Mapping[str, Any],
                    batch: Mapping[str, jax.Array]) -> jax.Array:
  """f32[B,S,R] similarity map of `config.method.name` (module docstring) from the outputs."""
  method_cfg = method_config(config.method)
  name = str(method_cfg.name)
  fn = SIMILARITY_MAPS.get(name) if name in SIMILARITY_MAPS else _convirt
  return fn(config, method_cfg, state, outputs, batch).astype(jnp.float32)


__all__ = ["SIMILARITY_MAPS", "SIMILARITY_SOURCES", "similarity_maps", "has_similarity",
           "similarity_source", "sentence_means", "lrclr_regions"]
