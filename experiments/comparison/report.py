"""The comparison's report: per-method statistics over seeds, the prose that answers "do local
methods localise better than ConVIRT, and at what cost?", the markdown tables, the plots, and
`reanalyse` (comparison.md rewritten from the per-seed runs in comparison.json; trains nothing).

`summarise(results)` -> method -> metric -> mean, sample std, n, 95 % t-interval, by_seed;
`paired` / `analysis` (paired t-tests over seeds, `mmrl.evaluation.metrics.statistics`); `markdown`
(comparison.md); `plots` (PNG bar charts and a trade-off scatter, matplotlib).
"""
from __future__ import annotations

import json
import math
import pathlib
import platform
import re
from typing import Optional, Sequence

import numpy as np

from experiments.comparison import method_configs
from experiments.comparison.budget import BASELINE, LOCAL_METHODS
from mmrl.evaluation.metrics import statistics as stats

# Headline metrics (regexes, in table order); every metric is in comparison.json.
LOCALISATION_METRICS = (
    r"^loc/synthetic/pointing$", r"^loc/synthetic/pointing_cell$",
    r"^loc/synthetic_templated/pointing$", r"^loc/synthetic_templated/pointing_cell$",
    r"^loc/synthetic_nolocation/pointing$", r"^loc/nih_templated/pointing$",
    r"^loc/nih_templated/pointing_cell$", r"^loc/nih_nolocation/pointing$")
GLOBAL_METRICS = (
    r"^retrieval/i2t_R@1$", r"^retrieval/i2t_R@10$", r"^retrieval/t2i_R@1$",
    r"^retrieval/t2i_R@10$", r"^zero_shot/mean_auc$", r"^linear_probe/.*macro_auroc$")
# The papers' own lenses (Budget.lenses): frozen linear segmentation and frozen detection of the
# synthetic findings, and the similarity-map (BioViL) read-out beside each method's own map.
LENS_METRICS = (
    r"^segmentation/linear/(10|100)pct/dice$", r"^segmentation/linear/(10|100)pct/dice_nonempty$",
    r"^detection/frozen/(10|100)pct/map$")
READOUT_METRICS = (
    r"^loc/(synthetic|synthetic_templated|nih_templated)/sim/pointing$",
    r"^loc/(synthetic|synthetic_templated|nih_templated)/sim/cnr$",
    r"^loc/(synthetic|synthetic_templated|nih_templated)/cnr$",
    r"^loc/.*_templated/sim/swap/drop$")
CHANCE_METRICS = (r"^loc/.*/gt_area$", r"^retrieval/chance_R@(1|10)$")


def summarise(results: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
  """method -> metric -> `statistics.describe` over seeds as a dict (mean, sample std with
  ddof 1, n, 95 % t-interval ci_low / ci_high), NaNs left out; plus 'by_seed' {seed: value}
  for the paired tests."""
  by: dict[str, dict[str, dict[int, float]]] = {}
  for r in results:
    for k, v in r["metrics"].items():
      if isinstance(v, (int, float)):
        by.setdefault(r["method"], {}).setdefault(k, {})[int(r.get("seed", 0))] = float(v)
  out = {}
  for method, metrics in by.items():
    out[method] = {}
    for k, vals in metrics.items():
      d = stats.describe(list(vals.values()))
      if d.n:
        out[method][k] = {**d.as_dict(), "by_seed": {str(s): v for s, v in vals.items()
                                                     if not math.isnan(v)}}
  return out


def _select(summary, patterns) -> list[str]:
  keys = sorted({k for m in summary.values() for k in m})
  return [k for p in patterns for k in keys if re.search(p, k)]


def _cell(summary, method, key, digits=3) -> str:
  v = summary.get(method, {}).get(key)
  if v is None:
    return "–"
  if v["n"] < 2 or v["std"] is None or math.isnan(v["std"]):
    return f"{v['mean']:.{digits}f} (n={v['n']})"
  return (f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f} "
          f"[{v['ci_low']:.{digits}f}, {v['ci_high']:.{digits}f}]")


def _table(summary, methods, keys) -> list[str]:
  lines = ["| method | " + " | ".join(f"`{k}`" for k in keys) + " |",
           "|---|" + "---|" * len(keys)]
  for m in methods:
    if m in summary:
      lines.append(f"| {m} | " + " | ".join(_cell(summary, m, k) for k in keys) + " |")
  return lines


# Model-free rows of the localisation table: (row name, metric suffix replacing '/pointing').
REFERENCE_ROWS = (("grid oracle", "grid_oracle/pointing"), ("best fixed cell", "best_fixed_cell/pointing"),
                  ("random map", "random_map/pointing"))


def _reference_table(summary, sets: Sequence[str]) -> list[str]:
  """The grid oracle, best-fixed-cell and random-map pointing (pixel and cell level) of each
  localisation set, read from the random_init runs (they depend only on the boxes and the
  grid, the same for every method)."""
  src = summary.get(BASELINE) or next(iter(summary.values()), {})
  head = ["| reference | " + " | ".join(f"`loc/{x}/pointing`" for x in sets)
          + " | " + " | ".join(f"`loc/{x}/pointing_cell`" for x in sets) + " |",
          "|---|" + "---|" * (2 * len(sets))]
  for name, suffix in REFERENCE_ROWS:
    px = [src.get(f"loc/{x}/{suffix}") for x in sets]
    cell_suffix = suffix.replace("/pointing", "/pointing_cell")
    cl = [src.get(f"loc/{x}/{cell_suffix}") if "oracle" not in suffix else None for x in sets]
    fmt = lambda v: "–" if v is None else f"{v['mean']:.3f}"
    head.append(f"| {name} | " + " | ".join(fmt(v) for v in px) + " | "
                + " | ".join(fmt(v) if "oracle" not in suffix else "1.000" for v in cl) + " |")
  return head


def paired(summary, a: str, b: str, key: str) -> Optional[stats.PairedTest]:
  """The paired t-test of method a vs b on `key` over the seeds both have (None if missing)."""
  va, vb = summary.get(a, {}).get(key), summary.get(b, {}).get(key)
  if va is None or vb is None:
    return None
  seeds = sorted(set(va["by_seed"]) & set(vb["by_seed"]), key=int)
  if not seeds:
    return None
  return stats.paired_t_test([va["by_seed"][s] for s in seeds],
                             [vb["by_seed"][s] for s in seeds])


def _verdict(test: Optional[stats.PairedTest], what: str) -> str:
  if test is None:
    return f"{what}: not measured"
  return stats.format_test(test, name=what)


def analysis(summary) -> list[str]:
  """Plain sentences answering 'do local methods localise better than ConVIRT, and at what cost
  in global metrics?', written from the numbers. A difference is called better / worse only when
  the paired t-test over seeds gives p < 0.05 (`mmrl.evaluation.metrics.statistics`); otherwise it is
  'not distinguishable with N seeds'."""
  lines = []
  loc_keys = [k for k in ("loc/synthetic/pointing", "loc/synthetic_templated/pointing",
                          "loc/nih_templated/pointing")
              if any(k in s for s in summary.values())]
  glob_keys = [k for k in ("retrieval/i2t_R@1", "zero_shot/mean_auc")
               if any(k in s for s in summary.values())]
  glob_keys += _select(summary, (r"^linear_probe/.*macro_auroc$",))[:1]
  lens_keys = _select(summary, LENS_METRICS) + [
      k for k in ("loc/synthetic/sim/pointing", "loc/synthetic_templated/sim/pointing",
                  "loc/nih_templated/sim/pointing", "loc/synthetic/cnr",
                  "loc/synthetic/sim/cnr") if any(k in s for s in summary.values())]
  if "convirt" not in summary:
    return ["ConVIRT was not run, so the question cannot be answered from this table."]
  seeds = min((v["n"] for m in summary.values() for v in m.values()), default=0)
  if seeds < 2:
    lines.append("- Only one seed per method: differences are listed, none can be called "
                 "(run with --seeds >= 2; 3 or more for a paired test with any power).")
  better = {k: [] for k in loc_keys}
  for m in [m for m in LOCAL_METHODS if m in summary]:
    parts = [_verdict(paired(summary, m, "convirt", k), f"`{k}`") for k in loc_keys + glob_keys]
    lines.append(f"- **{m} vs ConVIRT**: " + "; ".join(parts) + ".")
    if lens_keys:
      parts = [_verdict(paired(summary, m, "convirt", k), f"`{k}`") for k in lens_keys]
      lines.append(f"  - papers' lenses and the similarity read-out: " + "; ".join(parts) + ".")
    for k in loc_keys:
      t = paired(summary, m, "convirt", k)
      if t is not None and stats.verdict(t) == "better":
        better[k].append(m)
  for k in loc_keys:
    conv = summary["convirt"].get(k)
    ref = summary.get(BASELINE) or summary["convirt"]
    oracle = ref.get(k.replace("/pointing", "/grid_oracle/pointing"))
    rnd_map = ref.get(k.replace("/pointing", "/random_map/pointing"))
    best = ref.get(k.replace("/pointing", "/best_fixed_cell/pointing"))
    rnd = summary.get(BASELINE, {}).get(k)
    ctx = []
    if conv is not None:
      ctx.append(f"ConVIRT {conv['mean']:.3f}")
    if rnd is not None:
      ctx.append(f"random init {rnd['mean']:.3f}")
    if rnd_map is not None:
      ctx.append(f"random map {rnd_map['mean']:.3f}")
    if best is not None:
      ctx.append(f"best fixed cell {best['mean']:.3f}")
    if oracle is not None:
      ctx.append(f"grid oracle {oracle['mean']:.3f}")
    n_local = len([m for m in LOCAL_METHODS if m in summary])
    line = (f"- On `{k}` ({', '.join(ctx)}), {len(better[k])} of {n_local} local methods "
            f"localise better than ConVIRT by the paired t-test (p < 0.05)"
            + (f": {', '.join(better[k])}." if better[k] else "."))
    if oracle is not None and oracle["mean"] > 0:
      half = [m for m in LOCAL_METHODS if m in summary and k in summary[m]
              and summary[m][k]["mean"] >= 0.5 * oracle["mean"]]
      line += (f" Reaching >= 50 % of the grid oracle ({0.5 * oracle['mean']:.3f}): "
               f"{', '.join(half) if half else 'none'}.")
    lines.append(line)
  for k in glob_keys:
    worse = [m for m in LOCAL_METHODS if m in summary
             and (t := paired(summary, m, "convirt", k)) is not None
             and stats.verdict(t) == "worse"]
    lines.append(f"- Global cost on `{k}`: worse than ConVIRT by the paired t-test: "
                 f"{', '.join(worse) if worse else 'none'}.")
  return lines


def plots(summary, methods: Sequence[str], out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Bar charts (localisation, global; mean with std error bars) and a localisation-vs-global
  scatter; returns the PNG paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  methods = [m for m in methods if m in summary]
  paths = []
  for name, patterns in (("localisation", LOCALISATION_METRICS), ("global", GLOBAL_METRICS)):
    keys = _select(summary, patterns)
    if not keys:
      continue
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(methods) * max(1, len(keys)) / 2), 4))
    width = 0.8 / len(keys)
    x = np.arange(len(methods))
    for i, k in enumerate(keys):
      mean = [summary[m].get(k, {}).get("mean", np.nan) for m in methods]
      std = np.nan_to_num([summary[m].get(k, {}).get("std", 0.0) for m in methods])
      ax.bar(x + i * width, mean, width, yerr=std, capsize=2, label=k)
    ax.set_xticks(x + 0.4 - width / 2, methods, rotation=30)
    ax.set_ylabel("mean ± std over seeds")
    ax.set_title(f"{name} metrics")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"comparison_{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  loc_key = next(iter(_select(summary, (r"^loc/synthetic/pointing$",))), None)
  glob_key = next(iter(_select(summary, (r"^retrieval/i2t_R@1$", r"^zero_shot/mean_auc$"))), None)
  if loc_key and glob_key:
    fig, ax = plt.subplots(figsize=(5, 4))
    for m in methods:
      a, b = summary[m].get(glob_key), summary[m].get(loc_key)
      if a and b:
        ax.errorbar(a["mean"], b["mean"], xerr=np.nan_to_num(a["std"]),
                    yerr=np.nan_to_num(b["std"]), fmt="o", capsize=2)
        ax.annotate(m, (a["mean"], b["mean"]), fontsize=8)
    ax.set_xlabel(glob_key)
    ax.set_ylabel(loc_key)
    ax.set_title("localisation vs global")
    fig.tight_layout()
    path = out_dir / "comparison_tradeoff.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths




def markdown(summary, methods: Sequence[str], meta: dict) -> str:
  """The comparison.md text."""
  from mmrl.evaluation.maps.alignment_maps import map_source  # pylint: disable=g-import-not-at-top
  rows = [m for m in list(methods) + [BASELINE] if m in summary]
  lines = [
      "# Method comparison: localisation vs global metrics", "",
      f"- **Command:** `{meta['command']}`",
      f"- **Date:** {meta['start']} → {meta['end']} (UTC); wall {meta['wall_s'] / 60:.1f} min",
      f"- **Machine:** {meta['nproc']} CPU cores, {meta['cpu']}; load average at start "
      f"{meta['load_start']}, at end {meta['load_end']}; jax {meta['jax']}, "
      f"Python {platform.python_version()}",
      f"- **Budget (every method):** {meta['budget']}; seeds {meta['seeds']}",
      f"- **Common model:** {meta['budget'].get('image_tower', 'resnet_small')} image tower at "
      f"{meta['budget'].get('image_size')} px, first {meta['budget'].get('text_layers', 2)} "
      f"layers of the pretrained MiniLM text tower "
      f"({'frozen' if meta['budget'].get('freeze_text', True) else 'trained'}, mean-token "
      "pooling), each method's own heads at embed_dim 64; synthetic data "
      f"({meta['budget'].get('variant', 'realistic')} finding sizes) made once and shared by every "
      "run; `random_init` = ConVIRT's model without training.",
      f"- **NIH ChestX-ray14:** {meta['nih']}",
      *([f"- **NOT RUN / NOT FINISHED (no result, not in any row):** "
         f"{', '.join(meta['missing'])}"] if meta.get("missing") else []),
      "- **Templated sentences:** the `synthetic_templated` and `nih_templated` localisation "
      "rows score sentences WE WROTE from each box's label and position (e.g. \"There is a "
      "nodule in the right upper zone.\"), not radiologist text; NIH ChestX-ray14 has no "
      "reports. `synthetic` scores the synthetic reports' own sentences that name a boxed "
      "finding (docs/localisation.md).",
      "- **Statistics** (`mmrl/evaluation/metrics/statistics.py`): each cell is mean ± sample std "
      "(ddof 1) over seeds [95 % Student-t interval of the mean]; a method is called better or "
      "worse than ConVIRT only when the two-sided paired t-test over seeds gives p < 0.05, "
      "otherwise 'not distinguishable with N seeds'.",
      "- **Identical inputs:** every method reads the whole report (`data.sentence_sampling="
      "all`; ConVIRT's own config samples one sentence) and the same images, augmentation, "
      "steps, batch, learning rate and seeds.",
      "- **What the common small model changes in each method:**"]
  for m in [m for m in list(methods) + [BASELINE] if m in summary]:
    try:
      changes = method_configs.fallbacks(m, meta["budget_obj"]) if "budget_obj" in meta else []
    except Exception as e:  # pylint: disable=broad-except
      changes = [f"(could not list: {e})"]
    lines.append(f"  - {m}: " + ("; ".join(changes) if changes else "none"))
  lines += [
      "- **Chance and ceiling:** `random map` is the exact expected pointing of a map of i.i.d. "
      "random cells on the same grid, `best fixed cell` always points at the one cell best on "
      "these very boxes (a location prior that ignores image and sentence), `grid oracle` "
      "scores each grid cell by its overlap with the box (the best a map on this grid can do). "
      "`pointing_cell` counts a hit when the map's maximum cell contains any box pixel. "
      "`gt_area` (mean box area) is not the chance level of a coarse map.",
      "- **Swap test:** `<set>_templated/swap/drop` = pointing with the true sentence minus "
      "pointing with 'left' and 'right' swapped (same box); `swap/moved_cell` = fraction of "
      "sentences whose maximum moves to another cell. A map that reads the side words drops.",
      "- **Location-free templates:** `<set>_nolocation` scores \"There is a nodule.\" (no side, "
      "no zone) on the same boxes: grounding the finding alone.", "",
      "## Localisation", ""]
  lines += _table(summary, rows, _select(summary, LOCALISATION_METRICS))
  loc_sets = [x for x in ("synthetic", "synthetic_templated", "synthetic_nolocation",
                          "nih_templated", "nih_nolocation")
              if any(f"loc/{x}/pointing" in v for v in summary.values())]
  lines += ["", "### Model-free references (same boxes, same grid)", ""]
  lines += _reference_table(summary, loc_sets)
  lines += ["", "### Swap test (left <-> right in the templated sentences)", ""]
  lines += _table(summary, rows, _select(summary, (r"^loc/.*/swap/(drop|moved_cell)$",)))
  if _select(summary, READOUT_METRICS):
    lines += ["", "### Similarity maps (BioViL's read-out: cosine of the projected region and "
              "sentence embeddings) and CNR", ""]
    lines += _table(summary, rows, _select(summary, READOUT_METRICS))
  if _select(summary, LENS_METRICS):
    lines += ["", "## The papers' lenses: frozen linear segmentation (Dice over the whole test "
              "set / over the images with a finding) and frozen YOLOv3 detection (mAP), at 10 % "
              "and 100 % of the labels", ""]
    lines += _table(summary, rows, _select(summary, LENS_METRICS))
  lines += ["", "## Global metrics", ""]
  lines += _table(summary, rows, _select(summary, GLOBAL_METRICS))
  lines += ["", "## Chance levels", ""]
  lines += _table(summary, rows[:1], _select(summary, CHANCE_METRICS))
  lines += ["", "## Do the local methods localise better than ConVIRT, and at what cost?", "",
            "Written from the numbers above (paired t-test over seeds, two-sided, p < 0.05; "
            "the interval is the 95 % t-interval of the per-seed difference):", ""]
  lines += analysis(summary)
  lines += ["", "## Where each method's maps come from", ""]
  lines += [f"- {m}: {map_source(m)}" for m in methods]
  lines += ["", "## Cost", ""]
  lines += _table(summary, rows, _select(summary, (r"^time/.*$", r"^train/final_loss$")))
  lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in meta.get("plots", [])), ""]
  return "\n".join(lines)


def reanalyse(results_dir: str | pathlib.Path, *, command: str = "",
              note: str = "") -> dict:
  """Rewrites `results_dir`/comparison.md (and the summary in comparison.json) from the per-seed
  runs stored in comparison.json with this module's current statistics; trains nothing. The
  table's header keeps the original run's command, date, machine and budget and adds
  `command` (the re-analysis) and `note`."""
  results_dir = pathlib.Path(results_dir)
  doc = json.loads((results_dir / "comparison.json").read_text())
  meta, runs = doc["meta"], doc["runs"]
  summary = summarise(runs)
  meta = {**meta, "reanalysis": {"command": command, "note": note}}
  text = markdown(summary, meta["methods"], meta)
  # Header lines that describe how today's code runs a comparison, not how these runs were made.
  today_only = ("- **Identical inputs:**", "- **What the common small model changes",
                "- **Chance and ceiling:**", "- **Swap test:**", "- **Location-free templates:**")
  kept, skipping = [], False
  for line in text.split("\n"):
    if line.startswith("- **"):
      skipping = line.startswith(today_only)
    elif not line.startswith("  "):
      skipping = False
    if not skipping:
      kept.append(line)
  head, _, rest = "\n".join(kept).partition("\n\n")
  extra = [f"- **Re-analysed** with the current statistics (`{command}`): sample std (ddof 1), "
           "95 % t-intervals and paired t-tests over seeds; the runs themselves are unchanged."]
  if note:
    extra.append(f"- **Note:** {note}")
  (results_dir / "comparison.md").write_text(head + "\n\n" + "\n".join(extra) + "\n" + rest)
  (results_dir / "comparison.json").write_text(json.dumps(
      {"meta": meta, "summary": summary, "runs": runs}, indent=1, default=float))
  return {"summary": summary, "meta": meta}
