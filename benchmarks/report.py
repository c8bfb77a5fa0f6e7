"""Turns the JSON lines of benchmarks/torch_reference.py and benchmarks/step.py into markdown.

COMMAND: python benchmarks/report.py /path/results-*.jsonl > section.md
         (benchmarks/gpu_run.sh runs it on its own results file)

Tables: mmrl's step (device-resident batches), the PyTorch reference (eager and torch.compile),
the speed ratio mmrl / reference at equal method and batch (issue 6 target: >= 1.5x the compiled
reference for ConVIRT and LoVT at 224²), the local-loss share of the step (target <= 25 % at batch
512) and the input-pipeline ratio (target >= 0.9). Every number comes from the rows; rows with an
'error' or 'skipped' are listed as such. The header names the dates, devices and commands found.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Iterable

RATIO_TARGET = 1.5
LOCAL_SHARE_TARGET = 0.25
PIPELINE_TARGET = 0.9


def read_rows(paths: Iterable[str | pathlib.Path]) -> list[dict[str, Any]]:
  """All JSON objects of the given JSON-lines files (blank lines and non-JSON lines skipped)."""
  rows = []
  for path in paths:
    for line in pathlib.Path(path).read_text().splitlines():
      line = line.strip()
      if line.startswith("{"):
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return rows


def _f(x: Any, fmt: str = "{:.1f}") -> str:
  if x is None or isinstance(x, str):
    return "–" if x is None else x
  return fmt.format(x)


def _pct(x: Any) -> str:
  return "–" if x is None else f"{100 * x:.1f} %"


def _table(header: list[str], lines: list[list[str]]) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(line) + " |" for line in lines]
  return "\n".join(out)


def _status(row: dict) -> str | None:
  if "error" in row:
    return "error: " + str(row["error"])[:120]
  if "skipped" in row:
    return str(row["skipped"])[:120]
  return None


def mmrl_table(rows: list[dict]) -> str:
  lines = []
  for r in rows:
    note = _status(r)
    if note:
      lines.append([r.get("method", "?"), r.get("image_tower", "?"), str(r.get("batch_size")),
                    note, "", "", "", "", ""])
      continue
    lines.append([r["method"], r["image_tower"], str(r["batch_size"]),
                  _f(r["samples_per_s"]), _f(r["step_ms"]), _f(r.get("tflops_per_s")),
                  _pct(r.get("mfu")), _f(r.get("peak_memory_gib"), "{:.2f}"),
                  _f(r.get("compile_s"))])
  return _table(["method", "image tower", "batch", "samples/s", "step ms", "TFLOP/s", "MFU",
                 "peak mem GiB", "compile s"], lines)


def torch_table(rows: list[dict]) -> str:
  lines = []
  for r in rows:
    note = _status(r)
    if note:
      lines.append([r.get("method", "?"), r.get("mode", "?"), str(r.get("batch_size")), note,
                    "", "", "", "", ""])
      continue
    lines.append([r["method"], r["mode"], str(r["batch_size"]), _f(r["samples_per_s"]),
                  _f(r["step_ms"]), _f(r.get("tflops_per_s")), _pct(r.get("mfu")),
                  _f(r.get("peak_memory_gib"), "{:.2f}"), _f(r.get("first_step_s"))])
  return _table(["method", "mode", "batch", "samples/s", "step ms", "TFLOP/s", "MFU",
                 "peak mem GiB", "first step s"], lines)


def ratios(mmrl: list[dict], torch: list[dict]) -> list[dict[str, Any]]:
  """mmrl samples/s over the reference's, per (method, batch, reference mode), ResNet towers."""
  ref = {(r["method"], r["batch_size"], r["mode"], r.get("image_size")): r for r in torch
         if "samples_per_s" in r}
  out = []
  for r in mmrl:
    if "samples_per_s" not in r or not str(r.get("image_tower", "")).startswith("resnet"):
      continue
    for mode in ("compile", "eager"):
      t = ref.get((r["method"], r["batch_size"], mode, r.get("image_size")))
      if t is not None:
        out.append({"method": r["method"], "batch_size": r["batch_size"], "reference": mode,
                    "image_size": r.get("image_size"), "mmrl": r["samples_per_s"],
                    "torch": t["samples_per_s"], "ratio": r["samples_per_s"] / t["samples_per_s"]})
  return out


def render(rows: list[dict[str, Any]]) -> str:
  """The markdown section for `rows` (both benchmarks' JSON objects)."""
  mmrl = [r for r in rows if r.get("bench") == "mmrl_step" and r.get("mode") == "synthetic"]
  glob = [r for r in rows if r.get("bench") == "mmrl_step" and r.get("mode") == "global_only"]
  pipe = [r for r in rows if r.get("bench") == "mmrl_step" and r.get("mode") == "input_pipeline"]
  torch = [r for r in rows if r.get("bench") == "torch_reference"]
  parts = []
  dates = sorted({str(r.get("date")) for r in rows if r.get("date")})
  devices = sorted({str(r.get("device_kind")) for r in rows if r.get("device_kind")})
  commands = sorted({str(r.get("command")) for r in rows if r.get("command")})
  parts.append(f"- **Date:** {', '.join(dates) or 'unknown'}")
  parts.append(f"- **Device:** {', '.join(devices) or 'unknown'}")
  parts.append("- **Commands:**\n" + "\n".join(f"  - `{c}`" for c in commands))
  if mmrl:
    parts.append("\nmmrl train step (synthetic device-resident batches):\n\n" + mmrl_table(mmrl))
  if torch:
    parts.append("\nPyTorch reference:\n\n" + torch_table(torch))
  rat = ratios(mmrl, torch)
  if rat:
    lines = []
    for x in rat:
      verdict = ""
      if x["reference"] == "compile":
        verdict = "meets" if x["ratio"] >= RATIO_TARGET else "misses"
      lines.append([x["method"], str(x["batch_size"]), x["reference"], _f(x["mmrl"]),
                    _f(x["torch"]), f"{x['ratio']:.2f}x", verdict])
    parts.append(f"\nSpeed ratio mmrl / PyTorch (target >= {RATIO_TARGET}x the compiled "
                 "reference):\n\n" + _table(["method", "batch", "reference", "mmrl samples/s",
                                             "torch samples/s", "ratio", "target"], lines))
  shares = [r for r in mmrl if "local_loss_share" in r]
  if shares:
    lines = []
    for r in shares:
      g = next((x for x in glob if x["method"] == r["method"]
                and x["image_tower"] == r["image_tower"] and x["batch_size"] == r["batch_size"]),
               {})
      verdict = ""
      if r["batch_size"] >= 512:
        verdict = "meets" if r["local_loss_share"] <= LOCAL_SHARE_TARGET else "misses"
      lines.append([r["method"], r["image_tower"], str(r["batch_size"]), _f(r["step_ms"]),
                    _f(g.get("step_ms")), _pct(r["local_loss_share"]), verdict])
    parts.append(f"\nLocal-loss share of the step (target <= {LOCAL_SHARE_TARGET:.0%} at batch "
                 "512):\n\n" + _table(["method", "image tower", "batch", "full step ms",
                                       "global-only step ms", "local share", "target"], lines))
  if pipe:
    lines = []
    for r in pipe:
      note = _status(r)
      ratio = r.get("pipeline_ratio")
      verdict = "" if ratio is None else ("meets" if ratio >= PIPELINE_TARGET else "misses")
      lines.append([r["method"], r.get("image_tower", "?"), str(r["batch_size"]),
                    note or _f(r.get("step_ms")), str(r.get("pipeline", "")),
                    "–" if ratio is None else f"{ratio:.2f}", verdict])
    parts.append(f"\nReal input pipeline vs device-resident batches (target >= "
                 f"{PIPELINE_TARGET}):\n\n" + _table(["method", "image tower", "batch",
                                                      "pipeline step ms", "pipeline",
                                                      "ratio", "target"], lines))
  return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(__doc__, file=sys.stderr)
    return 2
  sys.stdout.write(render(read_rows(argv[1:])))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
