"""How each method's train step grows with the batch: FLOPs, bytes and memory from XLA (issue 17).

COMMAND: XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
           nice -n 15 python benchmarks/cost_model.py --out_dir=results/scaling
         (then `python benchmarks/cost_model.py --report_only --out_dir=results/scaling` rebuilds
          the tables, fits and plots of docs/scaling.md from the JSON lines without compiling)
SMOKE:   ... benchmarks/cost_model.py --tiny --methods=gloria --points=gloria:16:1:full

Each point (method, global batch, fsdp axis size, variant) builds the method's paper config at
benchmark size (benchmarks/step.py's bench_config: its own image tower at 224², random-init
BERT-base, 128 tokens, bf16, random-init image weights — cost does not depend on the values),
lowers and compiles the sharded train step on an abstract state over a data x fsdp mesh of all
devices (mmrl.train.cost_analysis.train_step_cost; no memory is allocated), and appends one JSON
line with XLA's per-device FLOPs (loop-corrected), bytes accessed, argument / output / alias /
temporary sizes and the compile time to <out_dir>/points.jsonl. A point already in the file is
not compiled again (resume after an interruption).

Variants: 'full' (the config), 'global' (local objectives removed: only clip_nce /
soft_clip_nce kept, clip_nce when nothing is left; local_mi: its mi_bound with pairs='global',
the critic on the global vectors instead of every location; local share = 1 - global / full FLOPs: the
local losses, their backward and whatever heads only they read), 'remat' / 'remat_<policy>'
(model.{image,text}.remat on with that policy, mmrl/models/remat.py), 'group<G>' (gloria_local with negatives_group=G), 'chunk<C>' (the chunked form of the
all-pairs local terms: local MI's method.critic_chunk, PLACE's set_align chunk_size, GLoRIA's
caption_chunk = C).

Points are chosen, not swept: compilation of a full-size step takes ~1-3 CPU minutes, so the
default grid (DEFAULT_POINTS) is sized to ~40 CPU minutes on 2 cores, and per method the FLOPs
and memory are fitted in the batch (linear; quadratic where a [B, B, ...] term exists) and
extrapolated to 64 ... 2048 — every extrapolated figure is marked 'fit' in the tables, with the
fit residuals at the measured points (mmrl.train.scaling_fit).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time
import traceback

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

METHODS = ("convirt", "gloria", "mgca", "lovt", "local_mi", "place", "mlip", "lrclr")
GLOBAL_OBJECTIVES = ("clip_nce", "soft_clip_nce")

# method:batch:fsdp:variant
DEFAULT_POINTS = tuple(
    [f"{m}:{b}:1:full" for m in METHODS for b in (64, 256)]
    + [f"{m}:64:1:global" for m in METHODS if m != "convirt"]
    + ["gloria:512:1:full", "gloria:1024:1:full", "gloria:256:1:global", "gloria:1024:1:global",
       "place:256:1:global", "mgca:256:1:global", "convirt:1024:1:full"]
    + [f"{m}:64:8:full" for m in METHODS]
    + ["convirt:64:1:remat", "convirt:256:1:remat", "mgca:64:1:remat",
       "gloria:256:1:group64", "gloria:1024:1:group64"])


def point_config(method: str, batch: int, fsdp: int, variant: str, *, tiny: bool = False):
  """The config of one point (module docstring)."""
  from benchmarks import step as step_bench  # pylint: disable=g-import-not-at-top
  remat = variant.startswith("remat")
  c = step_bench.bench_config(method, "", batch, tiny=tiny, remat=remat, global_only=False)
  if remat:  # remat | remat_<policy> (mmrl.models.remat.POLICIES)
    policy = variant[len("remat_"):] if variant.startswith("remat_") else "nothing"
    c.model.image.remat_policy = policy
    c.model.text.remat_policy = policy
  if variant == "global":
    kept = [o for o in c.method.objectives if o["name"] in GLOBAL_OBJECTIVES]
    if not kept and str(c.method.name) == "local_mi":
      # Its heads need an mi_bound: the same bound on the global vectors (one critic score per
      # pair instead of one per location) is the step without the local term.
      kept = [o for o in c.method.objectives if o["name"] == "mi_bound"]
      for o in kept:
        o.pairs = "global"
    if not kept:
      import ml_collections  # pylint: disable=g-import-not-at-top
      kept = [ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.1,
                                             learnable_tau=False, image_to_text_weight=0.5))]
    c.method.objectives = kept  # the EMA stays as configured (its update is cheap)
  elif variant.startswith("group"):
    k = int(variant[len("group"):])
    for o in c.method.objectives:
      if o["name"] == "gloria_local":
        o.negatives_group = k
  elif variant.startswith("chunk"):  # the existing chunked forms of the all-pairs terms
    k = int(variant[len("chunk"):])
    if "critic_chunk" in c.method:
      c.method.critic_chunk = k
    for o in c.method.objectives:
      if o["name"] == "set_align":
        o.chunk_size = k
      if o["name"] == "gloria_local":
        o.caption_chunk = k
  elif variant != "full" and not remat:
    raise ValueError(f"unknown variant {variant!r}; use full | global | remat[_<policy>] | "
                     "group<G> | chunk<C>")
  c.mesh.fsdp = fsdp
  c.mesh.data = -1
  return c


def measure_point(method: str, batch: int, fsdp: int, variant: str, *, tiny: bool = False):
  from mmrl.train import cost_analysis  # pylint: disable=g-import-not-at-top
  from benchmarks import step as step_bench  # pylint: disable=g-import-not-at-top
  config = point_config(method, batch, fsdp, variant, tiny=tiny)
  template = step_bench.synthetic_batch(config, 8)
  rep = cost_analysis.train_step_cost(config, batch_template=template)
  row = rep.as_dict()
  row.update(method=method, fsdp=fsdp, variant=variant,
             image_tower=str(config.model.image.name), image_size=int(config.data.image_size),
             seq_len=int(config.data.max_tokens), dtype=str(config.model.dtype),
             text_layers=int(config.model.text.num_layers), tiny=tiny,
             objectives=[str(o["name"]) for o in config.method.objectives])
  return row


def analytic_flops(method: str, batch: int, fsdp: int, variant: str, *, tiny: bool = False
                   ) -> float:
  """benchmarks/flops.py's step FLOPs for the point's config (products only, remat not counted)."""
  from benchmarks import flops as flops_lib  # pylint: disable=g-import-not-at-top
  return flops_lib.step_flops(point_config(method, batch, fsdp, variant, tiny=tiny), batch).total


def _key(row) -> str:
  return f"{row['method']}:{row['batch_size']}:{row['fsdp']}:{row['variant']}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out_dir", default="results/scaling")
  p.add_argument("--points", default="", help="comma list method:batch:fsdp:variant "
                 "('' = DEFAULT_POINTS)")
  p.add_argument("--methods", default="", help="only these methods (comma list)")
  p.add_argument("--tiny", action="store_true", help="tiny towers (tests, smoke)")
  p.add_argument("--report_only", action="store_true", help="only rebuild tables/plots")
  p.add_argument("--docs", default="", help="also write the markdown report here")
  args = p.parse_args(argv)
  out = pathlib.Path(args.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  jsonl = out / "points.jsonl"
  done = {}
  if jsonl.exists():
    for line in jsonl.read_text().splitlines():
      if line.strip():
        row = json.loads(line)
        if "error" not in row:  # a failed point is compiled again
          done[_key(row)] = row
  points = [s for s in (args.points.split(",") if args.points else DEFAULT_POINTS) if s]
  if args.methods:
    keep = set(args.methods.split(","))
    points = [s for s in points if s.split(":")[0] in keep]
  if not args.report_only:
    import jax  # pylint: disable=g-import-not-at-top
    command = "python " + " ".join(sys.argv)
    for spec in points:
      if spec in done:
        continue
      method, batch, fsdp, variant = spec.split(":")
      t0 = time.perf_counter()
      try:
        row = measure_point(method, int(batch), int(fsdp), variant, tiny=args.tiny)
      except Exception as e:  # pylint: disable=broad-except
        traceback.print_exc()
        row = {"method": method, "batch_size": int(batch), "fsdp": int(fsdp), "variant": variant,
               "error": f"{type(e).__name__}: {str(e)[:400]}"}
      row.update(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 command=command, machine=f"{platform.machine()} {os.cpu_count()} cores, "
                 f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                 jax_version=jax.__version__, wall_s=time.perf_counter() - t0)
      done[spec] = row
      with jsonl.open("a") as f:
        f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
      print(f"{spec}: " + (f"{row['flops_per_sample'] / 1e9:.1f} GFLOP/sample, peak "
                           f"{row['peak_gib']:.2f} GiB/device, compile {row['compile_s']:.0f} s"
                           if "error" not in row else row["error"]), file=sys.stderr, flush=True)
  from mmrl.train import scaling_fit  # pylint: disable=g-import-not-at-top
  rows = [r for r in done.values() if "error" not in r]
  for r in rows:  # benchmarks/flops.py's analytic count of the same config (no compilation)
    if "analytic_flops_per_step" not in r:
      r["analytic_flops_per_step"] = analytic_flops(r["method"], r["batch_size"], r["fsdp"],
                                                    r["variant"], tiny=bool(r.get("tiny")))
  tables = scaling_fit.build_report(rows)
  (out / "report.json").write_text(json.dumps(tables, indent=1, sort_keys=True, default=str))
  md = scaling_fit.markdown(tables)
  (out / "tables.md").write_text(md)
  if not args.tiny:
    scaling_fit.plots(tables, out)
  if args.docs:
    pathlib.Path(args.docs).write_text(md)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
