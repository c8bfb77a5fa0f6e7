"""Fits of a method's step cost in the global batch, and the tables and plots of docs/scaling.md.

Input: rows of benchmarks/cost_model.py (one compiled point each: method, batch_size, fsdp,
variant, per-device FLOPs / bytes / memory). Each quantity of one (method, fsdp, variant) is
fitted by least squares in the global batch B:
- step FLOPs a + b B, or a + b B + c B^2 when the measured FLOPs per sample grow by more than
  GROWTH_TOL between the smallest and the largest compiled batch (an all-pairs [B, B, ...] term:
  GLoRIA's exact local loss, local MI's critic); through the origin (a = 0) when there are fewer
  batches than parameters (a single batch: FLOPs per sample taken as constant);
- memory and bytes a + b B (+ c B^2 for those quadratic groups when >= 3 batches were compiled);
  with as many parameters as points the fit passes through them (residuals 0: no check).
Figures at batches that were not compiled come from the fit and are marked 'fit'; the residuals
at the measured points are reported next to them. The local objective's FLOPs (full - global
step at the batches where both were compiled) are fitted through the origin the same way.

Derived per method: the largest per-device batch whose peak memory fits a device (DEVICES_GIB),
fsdp off and on, and the global batch where the local term passes 25 % of the step's FLOPs.
Nothing here compiles; it reads numbers.
"""
from __future__ import annotations

import collections
import math
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

GROWTH_TOL = 0.01
BATCHES = (64, 128, 256, 512, 1024, 2048)
DEVICES_GIB = (("H100 80 GiB", 80.0), ("H200 141 GiB", 141.0), ("TPU v4 32 GiB", 32.0),
               ("TPU v5e 16 GiB", 16.0))
QUANTITIES = (("flops_per_sample", "GFLOP / sample", 1e9),
              ("peak_bytes", "peak GiB / device", 2**30),
              ("temp_bytes", "temporaries GiB / device", 2**30),
              ("bytes_accessed_per_device", "bytes accessed GiB / device", 2**30))
LOCAL_SHARE_LIMIT = 0.25


def fit(xs: Sequence[float], ys: Sequence[float], *, degree: int,
        through_origin: bool = False) -> dict[str, Any]:
  """Least-squares polynomial in x: {'coef' (a, b[, c]) lowest first, 'degree', 'residuals'
  (y - fit at each x, relative), 'n'}. The degree drops to what the distinct points allow."""
  xs = np.asarray(xs, float)
  ys = np.asarray(ys, float)
  n_distinct = len(set(xs.tolist()))
  powers = list(range(1 if through_origin else 0, degree + 1))
  while len(powers) > max(n_distinct, 1):
    powers.pop()
  a = np.stack([xs ** p for p in powers], axis=1)
  sol, *_ = np.linalg.lstsq(a, ys, rcond=None)
  coef = [0.0] * (degree + 1)
  for p, s in zip(powers, sol):
    coef[p] = float(s)
  pred = a @ sol
  rel = ((ys - pred) / np.where(ys == 0, 1.0, np.abs(ys))).tolist()
  return {"coef": coef, "degree": max(powers) if powers else 0, "n": int(len(xs)),
          "residuals": rel, "x": xs.tolist()}


def evaluate(f: dict[str, Any], x: float) -> float:
  return float(sum(c * x ** p for p, c in enumerate(f["coef"])))


def solve_max_x(f: dict[str, Any], limit: float) -> float | None:
  """The largest x >= 0 with evaluate(f, x) <= limit (None when even x = 0 does not fit)."""
  if evaluate(f, 0.0) > limit:
    return None
  c = f["coef"] + [0.0] * (3 - len(f["coef"]))
  a, b, q = c[0] - limit, c[1], c[2]
  if q > 0:
    return float((-b + math.sqrt(b * b - 4 * q * a)) / (2 * q))
  if b <= 0:
    return math.inf
  return float(-a / b)


def _group(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
  g: dict[tuple[str, int, str], list[dict[str, Any]]] = collections.defaultdict(list)
  for r in rows:
    g[(r["method"], int(r["fsdp"]), r["variant"])].append(r)
  for v in g.values():
    v.sort(key=lambda r: r["batch_size"])
  return g


def _quadratic(pts: Sequence[dict[str, Any]]) -> bool:
  """Do the FLOPs per sample grow by more than GROWTH_TOL over the compiled batches?"""
  if len(pts) < 2:
    return False
  lo, hi = pts[0]["flops_per_sample"], pts[-1]["flops_per_sample"]
  return hi > lo * (1.0 + GROWTH_TOL)


def build_report(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The fitted curves, the tables' cells and the derived limits (module docstring)."""
  groups = _group(rows)
  curves: dict[str, Any] = {}
  for (method, fsdp, variant), pts in sorted(groups.items()):
    xs = [p["batch_size"] for p in pts]
    quad = _quadratic(pts) or _quadratic(groups.get((method, 1, variant), []))
    cur = {"method": method, "fsdp": fsdp, "variant": variant, "measured": {}, "fits": {},
           "quadratic": quad}
    for q, _, _ in QUANTITIES:
      if q == "flops_per_sample":  # fitted per step; per sample is that over B
        ys = [float(p[q]) * p["batch_size"] for p in pts]
        deg = 2 if quad else 1
        # A per-step constant (MLIP's knowledge encoding) when the points allow one.
        f = fit(xs, ys, degree=deg, through_origin=len(set(xs)) < deg + 1)
      else:
        ys = [float(p[q]) for p in pts]
        f = fit(xs, ys, degree=2 if quad and len(set(xs)) >= 3 else 1)
      cur["fits"][q] = f
    for p in pts:
      cur["measured"][p["batch_size"]] = {q: p[q] for q, _, _ in QUANTITIES} | {
          "compile_s": p.get("compile_s"), "argument_bytes": p.get("argument_bytes"),
          "output_bytes": p.get("output_bytes"), "alias_bytes": p.get("alias_bytes"),
          "loop_missing_flops_per_device": p.get("loop_missing_flops_per_device", 0.0),
          "flops_per_device_xla": p.get("flops_per_device_xla"),
          "num_devices": p.get("num_devices")}
    curves[f"{method}|{fsdp}|{variant}"] = cur

  local: dict[str, Any] = {}
  for method in sorted({k[0] for k in groups}):
    full = {p["batch_size"]: p for p in groups.get((method, 1, "full"), [])}
    for variant in ["full"] + sorted(v for (m, f, v) in groups if m == method and f == 1
                                     and v.startswith("group")):
      pts = {p["batch_size"]: p for p in groups.get((method, 1, variant), [])}
      glob = {p["batch_size"]: p for p in groups.get((method, 1, "global"), [])}
      both = sorted(set(pts) & set(glob))
      if not both:
        continue
      lx = both
      ly = [pts[b]["flops_per_step"] - glob[b]["flops_per_step"] for b in both]
      deg = 2 if curves[f"{method}|1|{variant}"]["quadratic"] else 1
      lf = fit(lx, ly, degree=deg, through_origin=True)
      step_fit = curves[f"{method}|1|{variant}"]["fits"]["flops_per_sample"]
      shares = {}
      for b in BATCHES:
        total = evaluate(step_fit, b)
        shares[b] = {"share": evaluate(lf, b) / total if total else 0.0,
                     "measured": b in both and b in pts}
      if lf["coef"][1] > 0 or lf["coef"][-1] > 0:
        crossing = _share_crossing(lf, step_fit, LOCAL_SHARE_LIMIT)
      else:
        crossing = None
      local[f"{method}|{variant}"] = {"fit": lf, "shares": shares, "crossing_batch": crossing,
                                      "measured_local_flops": dict(zip(lx, ly))}
    del full

  limits: dict[str, Any] = {}
  for method in sorted({k[0] for k in groups}):
    base = curves.get(f"{method}|1|full")
    if base is None:
      continue
    peak = base["fits"]["peak_bytes"]
    row: dict[str, Any] = {}
    if peak["n"] < 2:  # one batch: no slope to extrapolate with
      limits[method] = {"fsdp1|source": "needs 2 compiled batches (1 point)"}
      continue
    for fsdp_key, shift, label in _fsdp_shifts(method, groups, peak):
      shifted = dict(peak, coef=[peak["coef"][0] + shift] + peak["coef"][1:])
      n_dev = next(iter(base["measured"].values()))["num_devices"] or 8
      for name, gib in DEVICES_GIB:
        x = solve_max_x(shifted, gib * 2**30)
        row[f"{fsdp_key}|{name}"] = (None if x is None else
                                     (math.inf if math.isinf(x) else int(x // n_dev)))
      row[f"{fsdp_key}|source"] = label
    limits[method] = row

  growth: dict[str, Any] = {}
  for key, cur in curves.items():
    ms = sorted(cur["measured"])
    if len(ms) >= 2:
      b0, b1 = ms[0], ms[-1]
      t0, t1 = cur["measured"][b0]["temp_bytes"], cur["measured"][b1]["temp_bytes"]
      growth[key] = {"from": b0, "to": b1,
                     "temp_exponent": math.log(t1 / t0) / math.log(b1 / b0) if t0 and t1 else None,
                     "peak_exponent": math.log(cur["measured"][b1]["peak_bytes"]
                                               / cur["measured"][b0]["peak_bytes"])
                     / math.log(b1 / b0)}
  return {"curves": curves, "local": local, "limits": limits, "growth": growth,
          "rows": list(rows)}


def _fsdp_shifts(method, groups, peak_fit):
  """[(key, intercept shift, how)] for fsdp off (the fit) and on (the fsdp=8 points' offset from
  the fsdp=1 fit at the same batches: parameters and optimiser state sharded, activations the
  same per device)."""
  out = [("fsdp1", 0.0, "fit of fsdp=1 points")]
  on = [(f, pts) for (m, f, v), pts in groups.items() if m == method and v == "full" and f > 1]
  for f, pts in on:
    deltas = [p["peak_bytes"] - evaluate(peak_fit, p["batch_size"]) for p in pts]
    out.append((f"fsdp{f}", float(np.mean(deltas)),
                f"fsdp=1 slope, intercept from the fsdp={f} point(s) at B="
                + ",".join(str(p["batch_size"]) for p in pts)))
  return out


def _share_crossing(local_fit, step_fit, limit) -> float | None:
  """Smallest global batch in [1, 1e6] where local / step >= limit (bisection on a grid)."""
  grid = np.geomspace(1, 1e6, 2000)
  for b in grid:
    total = evaluate(step_fit, b)
    if total > 0 and evaluate(local_fit, b) / total >= limit:
      return float(b)
  return None


# ---------------------------------------------------------------------------------------------
# Markdown and plots
# ---------------------------------------------------------------------------------------------


def _cell(value: float, measured: bool, scale: float, fmt: str = "{:.1f}") -> str:
  s = fmt.format(value / scale)
  return s if measured else f"{s} (fit)"


def markdown(report: dict[str, Any]) -> str:
  """The tables of docs/scaling.md."""
  out: list[str] = []
  curves = report["curves"]
  for q, title, scale in QUANTITIES:
    out.append(f"\n### {title} (fsdp off unless stated; '(fit)' = extrapolated)\n")
    out.append("| method | variant | fsdp | " + " | ".join(f"B {b}" for b in BATCHES)
               + " | max rel. residual |")
    out.append("|---|---|---|" + "---|" * len(BATCHES) + "---|")
    for key, cur in sorted(curves.items()):
      f = cur["fits"][q]
      cells = []
      for b in BATCHES:
        measured = b in cur["measured"]
        if measured:
          cells.append(_cell(cur["measured"][b][q], True, scale))
        elif q != "flops_per_sample" and f["n"] < 2:
          cells.append("–")  # one batch: no slope, nothing to extrapolate with
        else:
          cells.append(_cell(evaluate(f, b) / (b if q == "flops_per_sample" else 1), False,
                             scale))
      res = max((abs(r) for r in f["residuals"]), default=0.0)
      note = f"{100 * res:.2f} % (deg {f['degree']}, {f['n']} pts)"
      out.append(f"| {cur['method']} | {cur['variant']} | {cur['fsdp']} | " + " | ".join(cells)
                 + f" | {note} |")
  out.append("\n### Share of the step's FLOPs in the local objective(s) (fsdp off)\n")
  out.append("| method | variant | " + " | ".join(f"B {b}" for b in BATCHES)
             + " | local > 25 % from B | local fit residuals |")
  out.append("|---|---|" + "---|" * len(BATCHES) + "---|---|")
  for key, loc in sorted(report["local"].items()):
    method, variant = key.split("|")
    cells = [f"{100 * loc['shares'][b]['share']:.1f} %"
             + ("" if loc["shares"][b]["measured"] else " (fit)") for b in BATCHES]
    cross = loc["crossing_batch"]
    if cross is not None and cross < BATCHES[0]:
      cross_text = f"already at B {BATCHES[0]}"
    else:
      cross_text = "never (≤ 1e6)" if cross is None else f"{cross:,.0f}"
    res = ", ".join(f"{100 * r:+.1f} %" for r in loc["fit"]["residuals"])
    out.append(f"| {method} | {variant} | " + " | ".join(cells) + " | "
               + cross_text + f" | {res or '-'} |")
  out.append("\n### Largest per-device batch whose peak memory fits (8-device mesh; fit)\n")
  names = [n for n, _ in DEVICES_GIB]
  out.append("| method | fsdp | " + " | ".join(names) + " | how |")
  out.append("|---|---|" + "---|" * len(names) + "---|")
  for method, row in sorted(report["limits"].items()):
    for fkey in sorted({k.split("|")[0] for k in row}):
      vals = [row.get(f"{fkey}|{n}", "n/a") for n in names]
      cells = ["none" if v is None else ("∞" if v == math.inf else str(v)) for v in vals]
      out.append(f"| {method} | {fkey[4:]} | " + " | ".join(cells) + f" | {row[fkey + '|source']} |")
  out.append("\n### Memory growth: exponent k of temp / peak ∝ B^k between the measured batches\n")
  out.append("| method | fsdp | variant | from B | to B | temp k | peak k |")
  out.append("|---|---|---|---|---|---|---|")
  for key, g in sorted(report["growth"].items()):
    m, f, v = key.split("|")
    tk = "-" if g["temp_exponent"] is None else f"{g['temp_exponent']:.2f}"
    out.append(f"| {m} | {f} | {v} | {g['from']} | {g['to']} | {tk} | {g['peak_exponent']:.2f} |")
  out.append("\n### XLA against benchmarks/flops.py (GFLOP / sample, measured points)\n")
  out.append("flops.py counts matrix products and convolutions only, and no rematerialised "
             "recomputation; 'products' is the same subset read from the compiled HLO "
             "(loop-corrected); 'XLA' adds XLA's elementwise, reduction and optimiser FLOPs.\n")
  out.append("| method | variant | fsdp | B | XLA (corrected) | products (HLO) | flops.py | "
             "XLA / flops.py | products / flops.py |")
  out.append("|---|---|---|---|---|---|---|---|---|")
  for r in sorted(report["rows"], key=lambda r: (r["method"], r["variant"], r["fsdp"],
                                                 r["batch_size"])):
    a = r.get("analytic_flops_per_step")
    if not a:
      continue
    b = r["batch_size"]
    prod = r["product_flops_per_device"] * r["num_devices"]
    out.append(f"| {r['method']} | {r['variant']} | {r['fsdp']} | {b} | "
               f"{r['flops_per_sample'] / 1e9:.1f} | {prod / b / 1e9:.1f} | {a / b / 1e9:.1f} | "
               f"{r['flops_per_step'] / a:.3f} | {prod / a:.3f} |")
  out.append("\n### Compile time (s, this machine) and XLA's uncorrected count\n")
  out.append("| method | variant | fsdp | B | compile s | XLA GFLOP/device (while once) | "
             "loop correction GFLOP/device | argument GiB | output GiB | alias GiB |")
  out.append("|---|---|---|---|---|---|---|---|---|---|")
  for key, cur in sorted(curves.items()):
    for b, m in sorted(cur["measured"].items()):
      out.append(f"| {cur['method']} | {cur['variant']} | {cur['fsdp']} | {b} | "
                 f"{m['compile_s']:.0f} | {m['flops_per_device_xla'] / 1e9:.0f} | "
                 f"{m['loop_missing_flops_per_device'] / 1e9:.1f} | "
                 f"{m['argument_bytes'] / 2**30:.2f} | {m['output_bytes'] / 2**30:.2f} | "
                 f"{m['alias_bytes'] / 2**30:.2f} |")
  return "\n".join(out) + "\n"


def plots(report: dict[str, Any], out_dir: pathlib.Path) -> list[pathlib.Path]:
  """One log-log png per quantity (a panel per method: measured points, fitted curves)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = report["curves"]
  methods = sorted({c["method"] for c in curves.values()})
  xs = np.geomspace(BATCHES[0], BATCHES[-1], 50)
  written = []
  panels = list(QUANTITIES) + [("local_share", "local share of step FLOPs", 1.0)]
  for q, title, scale in panels:
    ncol = 4
    nrow = -(-len(methods) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
    for ax, method in zip(axes.flat, methods):
      if q == "local_share":
        for key, loc in sorted(report["local"].items()):
          m, variant = key.split("|")
          if m != method:
            continue
          step_fit = curves[f"{m}|1|{variant}"]["fits"]["flops_per_sample"]
          ys = [max(evaluate(loc["fit"], x) / evaluate(step_fit, x), 1e-6) for x in xs]
          ax.plot(xs, ys, "--", label=f"{variant} (fit)")
          mx = sorted(loc["measured_local_flops"])
          ax.plot(mx, [max(loc["measured_local_flops"][b] / evaluate(step_fit, b), 1e-6)
                       for b in mx], "o")
        ax.axhline(LOCAL_SHARE_LIMIT, color="grey", lw=0.8)
      else:
        for key, cur in sorted(curves.items()):
          if cur["method"] != method:
            continue
          label = f"{cur['variant']} fsdp{cur['fsdp']}"
          f = cur["fits"][q]
          ys = [evaluate(f, x) / (x if q == "flops_per_sample" else 1) / scale for x in xs]
          line, = ax.plot(xs, np.maximum(ys, 1e-9), "--", lw=1)
          mb = sorted(cur["measured"])
          ax.plot(mb, [cur["measured"][b][q] / scale for b in mb], "o", color=line.get_color(),
                  label=label)
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_title(method)
      ax.set_xlabel("global batch")
      ax.set_ylabel(title)
      ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(methods):]:
      ax.axis("off")
    fig.suptitle(f"{title}: points = compiled, dashed = fit (8 fake CPU devices)")
    fig.tight_layout()
    path = pathlib.Path(out_dir) / f"{q}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
  return written
