"""The PyTorch reference step for issue 6: the same model and losses as mmrl's ConVIRT / LoVT step.

COMMAND (GPU): python benchmarks/torch_reference.py --device=cuda --methods=convirt,lovt \
                 --batch_sizes=64,128,256 --compile --json_out=/tmp/torch.jsonl
SMOKE (CPU):   python benchmarks/torch_reference.py --tiny --device=cpu --no-compile --steps=2 \
                 --warmup=1 --batch_sizes=4

Model (random init, no downloads):
  image  torchvision ResNet-50 (v1.5), 1-channel stem (--channels=3 replicates the channel into
         the stock 3-channel stem), channels_last; regions = the last stage's 7x7 grid at 224²,
         global = their mean. --tiny: torchvision ResNet with one BasicBlock per stage. Without
         torchvision (CPU CI) an identical local definition of the same layout is used; the row's
         image_impl says which.
  text   transformers BertModel from a BertConfig (bert-base: 12 layers, 768, 12 heads, 3072;
         SDPA attention; no pooler), --seq_len tokens, right padding with an attention mask.
         Sentences = masked max of the token states per sentence id; ConVIRT's text global = the
         masked max over content tokens (mmrl's `max_tokens`).
  convirt  mlp2 projections 2048->512 of both globals, no norm; mmrl's `clip_nce` (tau 0.1,
         image->text weight 0.75, cosine logits in fp32).
  lovt   as mmrl's `lovt` method: attention pools (one mean query, 8-head MHA) for both globals,
         mlp2 projections with BatchNorm, local mlp2 projections with BatchNorm over valid
         positions, `lovt_symmetric` sentence<->region cross-attention (shared K, V, out,
         /sqrt(d), masked output BatchNorm) and mmrl's `intra_local_nce` on both sides (image:
         tau 0.3, positives within 0.5 of the grid diagonal weighted exp(-d); report: tau 0.3,
         the sentence itself), anchors weighted by the (detached) pool weights; total loss =
         clip_nce + 0.375 x (image + report local). The masked BatchNorms normalise with batch
         statistics but keep no running averages (a negligible cost left out).
Training: AdamW (fused=True on CUDA), lr 1e-4, wd 1e-6, global-norm clipping at 1.0 as mmrl's
optimiser; bf16 autocast with the loss math (normalisation, logits, softmax, logsumexp) in fp32.
Modes: eager, and with --compile also torch.compile of the model + loss (optimiser step eager).

Timing: --warmup untimed steps (the first compiles), then --steps steps with one device
synchronisation at the end. One JSON line per (method, mode, batch): samples_per_s, step_ms,
first_step_s (compile time for torch.compile), peak_memory_gib (torch.cuda.max_memory_allocated,
reset per configuration; null on CPU), flops_per_step (benchmarks/flops.py, the same count as for
mmrl's step), tflops_per_s, mfu (null when the device's peak is unknown, e.g. CPU).

Over 400 lines on purpose: one job, a self-contained PyTorch re-implementation of mmrl's ConVIRT /
LoVT step that must mirror mmrl's step op by op and run as one script on a GPU machine without
mmrl's training code.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from benchmarks import flops as flops_lib  # noqa: E402

NEG_INF = -1e9


# ---------------------------------------------------------------------------------------------
# Losses (mmrl.objectives.contrastive.clip_nce and mmrl.objectives.lovt.intra_sample_nce)
# ---------------------------------------------------------------------------------------------


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
  x = x.float()
  return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps * eps))


def clip_nce(img: torch.Tensor, txt: torch.Tensor, *, tau: float = 0.1,
             image_to_text_weight: float = 0.75) -> torch.Tensor:
  """All-pairs InfoNCE, cosine logits / tau, lam * CE(i->t) + (1 - lam) * CE(t->i)."""
  logits = l2_normalize(img) @ l2_normalize(txt).T / tau
  target = torch.arange(logits.shape[0], device=logits.device)
  lam = image_to_text_weight
  return lam * F.cross_entropy(logits, target) + (1 - lam) * F.cross_entropy(logits.T, target)


def positive_weights(coords: np.ndarray, *, threshold: float, scale: float,
                     smooth: bool) -> np.ndarray:
  """1[d <= threshold] (* exp(-d) when smooth) with d = distances / scale, as mmrl's."""
  c = coords / scale
  d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
  p = (d <= threshold).astype(np.float64)
  return (p * np.exp(-d) if smooth else p).astype(np.float32)


def intra_local_nce(local: torch.Tensor, attended: torch.Tensor, mask: torch.Tensor,
                    weights: torch.Tensor, pos: torch.Tensor, tau: float) -> torch.Tensor:
  """LoVT's intra-sample InfoNCE, both directions, mean over samples with a valid position."""
  z, za = l2_normalize(local), l2_normalize(attended)
  s = torch.einsum("bid,bjd->bij", z, za) / tau
  col = mask[:, None, :]
  p = pos[None] * col
  p = p / torch.clamp(p.sum(-1, keepdim=True), min=1e-12)
  w = weights.float() * mask
  w = w / torch.clamp(w.sum(-1, keepdim=True), min=1e-12)

  def direction(scores):
    masked = torch.where(col, scores, torch.full_like(scores, NEG_INF))
    ce = torch.logsumexp(masked, -1) - (p * scores).sum(-1)
    return (w * ce).sum(-1)

  per_sample = direction(s) + direction(s.transpose(1, 2))
  ok = mask.any(1).float()
  return (per_sample * ok).sum() / torch.clamp(ok.sum(), min=1.0)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
  return torch.softmax(torch.where(mask, scores.float(), torch.full_like(scores.float(), NEG_INF)),
                       dim=dim)


class MaskedBatchNorm(nn.Module):
  """BatchNorm over all positions where mask is True (batch statistics; no running average)."""

  def __init__(self, dim: int):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.bias = nn.Parameter(torch.zeros(dim))

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].float()
    n = torch.clamp(m.sum(), min=1.0)
    xf = x.float()
    mean = (xf * m).sum(dim=tuple(range(x.dim() - 1))) / n
    var = (((xf - mean) ** 2) * m).sum(dim=tuple(range(x.dim() - 1))) / n
    return ((xf - mean) * torch.rsqrt(var + 1e-5) * self.weight + self.bias).to(x.dtype)


class MLP2(nn.Module):
  """Linear -> [masked BatchNorm] -> ReLU -> Linear (mmrl's mlp2 / MaskedMLPProjection)."""

  def __init__(self, d_in: int, hidden: int, d_out: int, norm: bool):
    super().__init__()
    self.fc1 = nn.Linear(d_in, hidden, bias=not norm)
    self.norm = MaskedBatchNorm(hidden) if norm else None
    self.fc2 = nn.Linear(hidden, d_out)

  def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    y = self.fc1(x)
    if self.norm is not None:
      y = self.norm(y, torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)
                    if mask is None else mask)
    y = self.fc2(F.relu(y))
    return y if mask is None else y * mask[..., None]


class AttentionPool(nn.Module):
  """LoVT's avgpool_attention: masked-mean query, multi-head attention over x [B,N,D]."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

  def forward(self, x: torch.Tensor, mask: torch.Tensor):
    b, n, d = x.shape
    h, dh = self.heads, d // self.heads
    m = mask[..., None].to(x.dtype)
    query = (x * m).sum(1) / torch.clamp(m.sum(1), min=1.0)
    q = self.q(query).view(b, h, dh)
    k = self.k(x).view(b, n, h, dh)
    v = self.v(x).view(b, n, h, dh)
    scores = torch.einsum("bhc,bnhc->bhn", q, k).float() / math.sqrt(dh)
    probs = masked_softmax(scores, mask[:, None, :]) * mask[:, None, :]
    pooled = torch.einsum("bhn,bnhc->bhc", probs.to(v.dtype), v).reshape(b, d)
    return self.o(pooled), probs.mean(1)


class SymmetricCrossAttention(nn.Module):
  """lovt_symmetric: shared K, V, out; regions <-> sentences; masked output BatchNorm."""

  def __init__(self, dim: int):
    super().__init__()
    self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(3))
    self.norm = MaskedBatchNorm(dim)
    self.scale = 1.0 / math.sqrt(dim)

  def forward(self, a, b, a_mask, b_mask):
    scores = torch.einsum("brd,bsd->brs", self.k(a), self.k(b)).float() * self.scale
    p_r2s = masked_softmax(scores, b_mask[:, None, :]) * a_mask[:, :, None]
    p_s2r = masked_softmax(scores.transpose(1, 2), a_mask[:, None, :]) * b_mask[:, :, None]
    va, vb = self.v(a), self.v(b)
    att_a = self.o(torch.einsum("brs,bsd->brd", p_r2s.to(vb.dtype), vb))
    att_b = self.o(torch.einsum("bsr,brd->bsd", p_s2r.to(va.dtype), va))
    return self.norm(att_a, a_mask), self.norm(att_b, b_mask)


class _Block(nn.Module):
  """torchvision's BasicBlock / Bottleneck (v1.5: stride on the 3x3), for hosts without it."""

  def __init__(self, c_in: int, width: int, stride: int, bottleneck: bool):
    super().__init__()
    out = width * (4 if bottleneck else 1)
    if bottleneck:
      convs = [nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
               nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
               nn.ReLU(True), nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)]
    else:
      convs = [nn.Conv2d(c_in, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
               nn.ReLU(True), nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)]
    self.body = nn.Sequential(*convs)
    self.downsample = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                     nn.BatchNorm2d(out))
                       if stride != 1 or c_in != out else nn.Identity())

  def forward(self, x):
    return F.relu(self.body(x) + self.downsample(x))


class _ResNet(nn.Module):
  """The torchvision ResNet layout (conv1/bn1/relu/maxpool/layer1-4), torchvision-free."""

  def __init__(self, stages, bottleneck: bool, channels: int):
    super().__init__()
    self.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    c = 64
    for i, (n, width) in enumerate(zip(stages, (64, 128, 256, 512))):
      blocks = []
      for j in range(n):
        blocks.append(_Block(c, width, 2 if (i > 0 and j == 0) else 1, bottleneck))
        c = width * (4 if bottleneck else 1)
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))


def image_tower(tiny: bool, channels: int) -> tuple[nn.Module, str]:
  """(ResNet-50, or one BasicBlock per stage when tiny; 'torchvision' | 'local')."""
  stages, bottleneck = ((1, 1, 1, 1), False) if tiny else ((3, 4, 6, 3), True)
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
    from torchvision.models import resnet as tv  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _ResNet(stages, bottleneck, channels), "local (torchvision not installed)"
  net = (tv.ResNet(tv.BasicBlock, list(stages)) if tiny else torchvision.models.resnet50())
  if channels == 1:
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
  net.fc = nn.Identity()
  net.avgpool = nn.Identity()
  return net, "torchvision"


def text_tower(tiny: bool, seq_len: int) -> nn.Module:
  from transformers import BertConfig, BertModel  # pylint: disable=g-import-not-at-top
  size = (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
          if tiny else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072))
  cfg = BertConfig(vocab_size=30522, max_position_embeddings=max(512, seq_len),
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **size)
  try:
    return BertModel(cfg, add_pooling_layer=False, attn_implementation="sdpa")
  except (TypeError, ValueError):
    cfg._attn_implementation = "sdpa"  # pylint: disable=protected-access
    return BertModel(cfg, add_pooling_layer=False)


class ReferenceModel(nn.Module):
  """batch -> scalar loss (module docstring)."""

  def __init__(self, method: str, *, tiny: bool, channels: int, seq_len: int, sentences: int,
               image_size: int, embed_dim: int = 512, hidden: int = 2048):
    super().__init__()
    self.method, self.channels, self.sentences = method, channels, sentences
    self.image, self.image_impl = image_tower(tiny, channels)
    self.text = text_tower(tiny, seq_len)
    d_img = 512 if tiny else 2048
    d_txt = self.text.config.hidden_size
    lovt = method == "lovt"
    self.image_proj = MLP2(d_img, hidden, embed_dim, norm=lovt)
    self.text_proj = MLP2(d_txt, hidden, embed_dim, norm=lovt)
    if lovt:
      self.image_pool = AttentionPool(d_img, 8 if not tiny else 4)
      self.text_pool = AttentionPool(d_txt, 8 if not tiny else 2)
      self.image_local = MLP2(d_img, hidden, embed_dim, norm=True)
      self.text_local = MLP2(d_txt, hidden, embed_dim, norm=True)
      self.cross = SymmetricCrossAttention(embed_dim)
      side = math.ceil(image_size / 32)
      rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
      grid = np.stack([rows.ravel(), cols.ravel()], 1).astype(np.float64)
      self.register_buffer("pos_image", torch.from_numpy(positive_weights(
          grid, threshold=0.5, scale=math.sqrt(2 * side * side), smooth=True)), persistent=False)
      self.register_buffer("pos_report", torch.eye(sentences), persistent=False)

  def regions(self, images: torch.Tensor) -> torch.Tensor:
    n = self.image
    x = n.maxpool(n.relu(n.bn1(n.conv1(images))))
    x = n.layer4(n.layer3(n.layer2(n.layer1(x))))       # [B, C, h, w]
    return x.flatten(2).transpose(1, 2)                  # [B, R, C]

  def sentence_pool(self, tokens, token_to_sentence, content):
    """Masked max of token states per sentence id -> [B, S, D] (0 for empty sentences)."""
    b, _, d = tokens.shape
    idx = torch.where(content, token_to_sentence, torch.full_like(token_to_sentence,
                                                                 self.sentences))
    out = torch.full((b, self.sentences + 1, d), -1e4, dtype=tokens.dtype, device=tokens.device)
    out = out.scatter_reduce(1, idx[..., None].expand(-1, -1, d), tokens, "amax",
                             include_self=True)[:, :self.sentences]
    return torch.where(out <= -1e4, torch.zeros_like(out), out)

  def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    images = batch["image"]
    if self.channels == 3:
      images = images.expand(-1, 3, -1, -1)
    regions = self.regions(images)
    tokens = self.text(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).last_hidden_state
    t2s = batch["token_to_sentence"]
    content = (t2s >= 0) & (batch["attention_mask"] > 0)
    if self.method == "convirt":
      img_g = regions.mean(1)
      txt_g = torch.where(content[..., None], tokens, torch.full_like(tokens, -1e4)).amax(1)
      return clip_nce(self.image_proj(img_g), self.text_proj(txt_g), tau=0.1,
                      image_to_text_weight=0.75)
    sentences = self.sentence_pool(tokens, t2s, content)
    s_mask = batch["sentence_mask"]
    r_mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
    img_g, r_w = self.image_pool(regions, r_mask)
    txt_g, s_w = self.text_pool(sentences, s_mask)
    glob = clip_nce(self.image_proj(img_g), self.text_proj(txt_g), tau=0.1,
                    image_to_text_weight=0.75)
    z_a = self.image_local(regions, r_mask)
    z_b = self.text_local(sentences, s_mask)
    att_a, att_b = self.cross(z_a, z_b, r_mask, s_mask)
    local_img = intra_local_nce(z_a, att_a, r_mask, r_w.detach(), self.pos_image, 0.3)
    local_rep = intra_local_nce(z_b, att_b, s_mask, s_w.detach(), self.pos_report, 0.3)
    return glob + 0.375 * (local_img + local_rep)


# ---------------------------------------------------------------------------------------------
# Batch, step, timing
# ---------------------------------------------------------------------------------------------


def synthetic_batch(batch: int, image_size: int, seq_len: int, sentences: int,
                    device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
  """The same contract and statistics as benchmarks/step.py's synthetic batch (NCHW image)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(seq_len // 2, seq_len + 1, size=batch)
  pos = np.arange(seq_len)[None]
  mask = (pos < lengths[:, None]).astype(np.int64)
  content = (pos >= 1) & (pos < lengths[:, None] - 1)
  ids = np.where(content, rng.integers(1000, 30522, size=(batch, seq_len)), 0)
  ids[:, 0] = 101
  ids[np.arange(batch), lengths - 1] = 102
  t2s = np.where(content, np.minimum((pos - 1) // 12, sentences - 1), -1)
  n_sent = np.minimum(-(-(lengths - 2) // 12), sentences)
  image = torch.from_numpy(rng.standard_normal((batch, 1, image_size, image_size),
                                               dtype=np.float32))
  return {
      "image": image.to(device).contiguous(memory_format=torch.channels_last),
      "input_ids": torch.from_numpy(ids.astype(np.int64)).to(device),
      "attention_mask": torch.from_numpy(mask).to(device),
      "token_to_sentence": torch.from_numpy(t2s.astype(np.int64)).to(device),
      "sentence_mask": torch.from_numpy(np.arange(sentences)[None] < n_sent[:, None]).to(device),
  }


def _sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def run_config(args, method: str, batch: int, compiled: bool) -> dict[str, Any]:
  device = torch.device(args.device)
  torch.manual_seed(0)
  heads = dict(embed_dim=32, hidden=64) if args.tiny else dict(embed_dim=512, hidden=2048)
  model = ReferenceModel(method, tiny=args.tiny, channels=args.channels, seq_len=args.seq_len,
                         sentences=args.max_sentences, image_size=args.image_size,
                         **heads).to(device)
  model = model.to(memory_format=torch.channels_last)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-6,
                          **({"fused": True} if device.type == "cuda" else {}))
  forward = torch.compile(model) if compiled else model
  data = synthetic_batch(batch, args.image_size, args.seq_len, args.max_sentences, device)
  amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.autocast)

  def step():
    with amp:
      loss = forward(data)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  t0 = time.perf_counter()
  loss = step()
  _sync(device)
  first_step_s = time.perf_counter() - t0
  for _ in range(max(args.warmup - 1, 0)):
    loss = step()
  _sync(device)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  _sync(device)
  step_s = (time.perf_counter() - t0) / args.steps
  if args.tiny:
    flops = flops_lib.reference_step_flops(
        method=method, batch=batch, image_size=args.image_size, seq_len=args.seq_len,
        in_channels=args.channels, hidden=32, layers=2, intermediate=64, embed_dim=32,
        projection_hidden=64, sentences=args.max_sentences, resnet_stages=(1, 1, 1, 1),
        bottleneck=False)
  else:
    flops = flops_lib.reference_step_flops(
        method=method, batch=batch, image_size=args.image_size, seq_len=args.seq_len,
        in_channels=args.channels, sentences=args.max_sentences)
  name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
  peak = args.peak_tflops or flops_lib.peak_tflops(name)
  tflops = flops / step_s / 1e12
  return {
      "bench": "torch_reference", "method": method, "mode": "compile" if compiled else "eager",
      "batch_size": batch, "image_size": args.image_size, "seq_len": args.seq_len,
      "channels": args.channels, "autocast_bf16": args.autocast, "tiny": args.tiny,
      "steps": args.steps, "step_ms": 1e3 * step_s, "samples_per_s": batch / step_s,
      "first_step_s": first_step_s, "loss": float(loss.detach().float().cpu()),
      "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                          if device.type == "cuda" else None),
      "flops_per_step": flops, "tflops_per_s": tflops, "peak_tflops": peak,
      "mfu": tflops / peak if peak else None, "device_kind": name,
      "torch_version": torch.__version__, "image_impl": model.image_impl,
  }


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default="convirt,lovt", help="convirt,lovt")
  p.add_argument("--batch_sizes", default="64,128,256")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--max_sentences", type=int, default=32)
  p.add_argument("--channels", type=int, choices=(1, 3), default=1,
                 help="1 = 1-channel stem (as mmrl); 3 = replicate into the stock stem")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                 help="also measure torch.compile (eager is always measured)")
  p.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=True,
                 help="bf16 autocast")
  p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="0 = by device name")
  p.add_argument("--tiny", action="store_true", help="CPU smoke sizes")
  p.add_argument("--json_out", default="", help="append each JSON line to this file too")
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.tiny and args.image_size == 224:
    args.image_size = 64
  if args.tiny and args.seq_len == 128:
    args.seq_len = 64
  if args.tiny and args.max_sentences == 32:
    args.max_sentences = 8
  if args.device == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  command = "python " + " ".join(sys.argv)
  modes = [False, True] if args.compile else [False]
  for method in args.methods.split(","):
    for compiled in modes:
      for b in sorted(int(x) for x in args.batch_sizes.split(",")):
        try:
          row = run_config(args, method, b, compiled)
        except Exception as e:  # pylint: disable=broad-except
          row = {"bench": "torch_reference", "method": method, "batch_size": b,
                 "mode": "compile" if compiled else "eager",
                 "error": f"{type(e).__name__}: {str(e)[:500]}"}
        row.update(date=date, command=command)
        line = json.dumps(row, sort_keys=True)
        print(line, flush=True)
        if args.json_out:
          with open(args.json_out, "a") as f:
            f.write(line + "\n")
        if args.device == "cuda":
          torch.cuda.empty_cache()


if __name__ == "__main__":
  main()
