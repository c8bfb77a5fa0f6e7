"""Planted tower outputs for the mechanism tests: features whose grid oracle a head can reach.

Only the mechanism tests use this, so it lives in tests/ (ARCHITECTURE.md: "planted-feature
mechanism tests live in tests/ with a tiny tower that can only see its own cell").

`planted_batch(rng, ...)` returns one batch of *tower outputs* (not images / token ids):

  image  an 8x8 region grid, D channels. Every cell holds a per-image background vector (the same
         in all cells of that image) + Gaussian noise; the cells of a finding's box additionally
         hold `signal * code_k` (code_k a random unit vector per finding class k). A cell sees only
         itself: there is no positional signal, so only the finding's identity can point.
         Findings (1 or 2 per image, distinct classes) are 2x2- or 3x3-cell boxes at uniformly
         random places, so no location prior can win.
  text   one token per word, a report = one sentence per finding, named as the templated
         sentences of `mmrl.evaluation.maps.sentences.templated_sentence` ("there is a nodule in
         the right upper zone"), plus 1-2 normal/distractor sentences in random order.
         A word's token vector is its vocabulary vector + noise; the finding word's vocabulary
         vector is `rotation @ code_k` (a fixed random orthogonal map of the image code: a
         learnable linear map aligns them). Sentences are the mean of their tokens, the global
         the mean of the sentences; [CLS] (position 0) is the mean of the report's tokens.
  batch  the batch-contract keys the heads, objectives and `alignment_maps.method_maps` read:
         input_ids (word ids + 2, [CLS]=1, padding 0), attention_mask, token_to_sentence,
         token_to_word (-1 on [CLS]/padding), sentence_mask, valid.
  truth  per sentence the finding box (cells, row-major) it names, or none (normal sentence).

`query_batch` makes one-sentence (templated) queries of the same images: one row per finding,
the report being that single sentence, exactly as `alignment_maps.make_query_batch` builds them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

FINDINGS = ("nodule", "effusion", "atelectasis", "pneumothorax", "mass", "consolidation")
FILLER = ("there", "is", "a", "in", "the", "zone", "right", "left", "upper", "mid", "lower")
NORMAL = (("heart", "size", "is", "normal"), ("no", "acute", "osseous", "abnormality"),
          ("the", "mediastinum", "is", "unremarkable"), ("lungs", "are", "otherwise", "clear"))
VOCAB = tuple(dict.fromkeys(FINDINGS + FILLER + tuple(w for s in NORMAL for w in s)))
WORD_ID = {w: i for i, w in enumerate(VOCAB)}


@dataclasses.dataclass(frozen=True)
class World:
  """The fixed codes of one planted world (one per seed): image codes, vocabulary, rotation."""
  codes: np.ndarray        # f32[K, D] unit image codes of the findings
  vocab: np.ndarray        # f32[V, D] word vectors (finding words = rotation @ code)
  grid: tuple[int, int] = (8, 8)
  dim: int = 32
  signal: float = 1.0
  noise: float = 0.3
  background: float = 1.0
  word_noise: float = 0.1


def make_world(seed: int, *, dim: int = 32, grid: tuple[int, int] = (8, 8), signal: float = 1.0,
               noise: float = 0.3, background: float = 1.0) -> World:
  rng = np.random.default_rng(seed)
  codes = rng.normal(size=(len(FINDINGS), dim))
  codes /= np.linalg.norm(codes, axis=1, keepdims=True)
  rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  vocab = rng.normal(size=(len(VOCAB), dim)) / np.sqrt(dim)
  vocab[:len(FINDINGS)] = codes @ rotation.T
  return World(codes.astype(np.float32), vocab.astype(np.float32), grid, dim, signal, noise,
               background)


def _location_words(box: tuple[int, int, int, int], grid: tuple[int, int]) -> list[str]:
  """The templated location (image left = patient right; zone by the box centre's third)."""
  r0, c0, r1, c1 = box
  cy, cx = (r0 + r1) / 2 / grid[0], (c0 + c1) / 2 / grid[1]
  side = "right" if cx < 0.5 else "left"
  zone = "upper" if cy < 1 / 3 else ("mid" if cy < 2 / 3 else "lower")
  return ["in", "the", side, zone, "zone"]


def finding_sentence(k: int, box, grid) -> list[str]:
  return ["there", "is", "a", FINDINGS[k]] + _location_words(box, grid)


def _encode(world: World, rng, reports: list[list[list[str]]], max_tokens: int,
            max_sentences: int) -> dict[str, np.ndarray]:
  """Token/sentence/global features and batch keys of reports (a report = list of sentences)."""
  b, d = len(reports), world.dim
  out = {"input_ids": np.zeros([b, max_tokens], np.int32),
         "attention_mask": np.zeros([b, max_tokens], np.int32),
         "token_to_sentence": np.full([b, max_tokens], -1, np.int32),
         "token_to_word": np.full([b, max_tokens], -1, np.int32),
         "sentence_mask": np.zeros([b, max_sentences], bool),
         "text_tokens": np.zeros([b, max_tokens, d], np.float32),
         "text_sentences": np.zeros([b, max_sentences, d], np.float32),
         "text_global": np.zeros([b, d], np.float32)}
  for i, report in enumerate(reports):
    pos, word = 1, 0
    out["input_ids"][i, 0], out["attention_mask"][i, 0] = 1, 1
    for s, sentence in enumerate(report[:max_sentences]):
      vecs = []
      for w in sentence:
        if pos >= max_tokens:
          raise ValueError(f"planted report {i} needs more than max_tokens={max_tokens} tokens")
        v = world.vocab[WORD_ID[w]] + world.word_noise * rng.normal(size=d) / np.sqrt(d)
        out["text_tokens"][i, pos] = v
        out["input_ids"][i, pos] = WORD_ID[w] + 2
        out["attention_mask"][i, pos] = 1
        out["token_to_sentence"][i, pos] = s
        out["token_to_word"][i, pos] = word
        vecs.append(v)
        pos, word = pos + 1, word + 1
      out["text_sentences"][i, s] = np.mean(vecs, axis=0)
      out["sentence_mask"][i, s] = True
    n = int(out["sentence_mask"][i].sum())
    out["text_global"][i] = out["text_sentences"][i, :n].mean(axis=0)
    out["text_tokens"][i, 0] = out["text_tokens"][i, 1:pos].mean(axis=0)
  out["text_token_mask"] = out["attention_mask"] > 0
  out["valid"] = np.ones([b], bool)
  out["study_id"] = np.arange(b, dtype=np.int32)  # every row its own study
  return out


def planted_batch(world: World, rng: np.random.Generator, batch_size: int, *,
                  max_tokens: int = 64, max_sentences: int = 4, two_findings: float = 0.3
                  ) -> tuple[dict[str, np.ndarray], list[list[tuple | None]]]:
  """(batch, truth): a batch of planted tower outputs and, per row and sentence, the box
  (r0, c0, r1, c1) in cells the sentence names (None for normal sentences / padding)."""
  gh, gw = world.grid
  d = world.dim
  local = world.noise * rng.normal(size=(batch_size, gh, gw, d)) / np.sqrt(d)
  local += world.background * rng.normal(size=(batch_size, 1, 1, d)) / np.sqrt(d)
  reports, truth = [], []
  for i in range(batch_size):
    n = 2 if rng.random() < two_findings else 1
    classes = rng.choice(len(FINDINGS), size=n, replace=False)
    sentences = []
    for k in classes:
      size = int(rng.integers(2, 4))
      r0, c0 = int(rng.integers(0, gh - size + 1)), int(rng.integers(0, gw - size + 1))
      box = (r0, c0, r0 + size, c0 + size)
      local[i, r0:r0 + size, c0:c0 + size] += world.signal * world.codes[k]
      sentences.append((finding_sentence(int(k), box, world.grid), (int(k), box)))
    for j in rng.choice(len(NORMAL), size=int(rng.integers(1, 3)), replace=False):
      sentences.append((list(NORMAL[j]), None))
    sentences = sentences[:max_sentences]
    order = rng.permutation(len(sentences))
    reports.append([sentences[j][0] for j in order])
    truth.append([sentences[j][1] for j in order])
  batch = _encode(world, rng, reports, max_tokens, max_sentences)
  batch["image_local"] = local.reshape(batch_size, gh * gw, d).astype(np.float32)
  batch["image_global"] = local.mean(axis=(1, 2)).astype(np.float32)
  return batch, truth


def query_batch(world: World, rng: np.random.Generator, batch: dict[str, np.ndarray],
                truth: list[list[tuple | None]], *, max_tokens: int = 64, max_sentences: int = 4
                ) -> tuple[dict[str, np.ndarray], list[tuple]]:
  """One row per finding of `batch`: its image, and a one-sentence report (the templated
  sentence of the finding). Returns (query batch, [(class, box)] per row)."""
  rows, reports, items = [], [], []
  for i, row in enumerate(truth):
    for t in row:
      if t is not None:
        rows.append(i)
        reports.append([finding_sentence(t[0], t[1], world.grid)])
        items.append(t)
  q = _encode(world, rng, reports, max_tokens, max_sentences)
  q["image_local"] = batch["image_local"][rows]
  q["image_global"] = batch["image_global"][rows]
  return q, items


def box_masks(boxes: list[tuple], grid: tuple[int, int], pixels_per_cell: int = 4) -> np.ndarray:
  """bool[N, H, W] pixel masks of cell boxes (H = gh * pixels_per_cell)."""
  gh, gw = grid
  p = pixels_per_cell
  gt = np.zeros([len(boxes), gh * p, gw * p], bool)
  for n, (r0, c0, r1, c1) in enumerate(boxes):
    gt[n, r0 * p:r1 * p, c0 * p:c1 * p] = True
  return gt
