"""What a compiled program costs, read from XLA: FLOPs (loop-corrected), bytes, memory, compile time.

Owns the measurement behind benchmarks/cost_model.py (docs/scaling.md). Nothing runs: a program
is lowered and compiled for its device mesh (a fake CPU mesh works for any model size, as the
state is abstract, `mmrl.train.state.abstract_train_state`) and XLA's own analyses are read.

Two traps of `Compiled.cost_analysis()` that this module handles:
- it reports the *per-device* program (the SPMD-partitioned module), so a step's FLOPs are the
  figure times the device count (`CostReport.flops_per_step`);
- it counts a `while` body once, whatever the loop's trip count (`lax.map`, `scan`, `fori_loop`,
  the rematerialised chunked local losses): a 16-step map reads 1/16 of its FLOPs.
  `loop_corrected_flops` walks the optimised HLO text, counts the matrix products and convolutions
  (2 FLOPs per multiply-accumulate, the convention of benchmarks/flops.py) of every computation,
  multiplies each by how often it runs (a while body by its `known_trip_count`, nested loops
  multiply) and adds the difference between that count and the count with every trip count 1 to
  XLA's figure. Elementwise work inside a loop body stays counted once (small next to the
  products it sits between); a loop whose trip count XLA does not know is reported in
  `unknown_trip_loops` and left at 1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from typing import Any, Callable

import jax

# ---------------------------------------------------------------------------------------------
# HLO text: matrix-product FLOPs per computation and the call graph with loop trip counts
# ---------------------------------------------------------------------------------------------

_COMP_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)="
                    r"%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)"?')
_COMBINER_OPS = (" reduce(", " reduce-window(", " scatter(", " sort(", " all-reduce(",
                 " select-and-scatter(", " reduce-scatter(", " all-reduce-start(")


def _dims(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def _operands(line: str, op: str) -> list[str]:
  """Operand names of `op(...)` on an HLO line (shapes are looked up by name)."""
  start = line.index(f" {op}(") + len(op) + 2
  depth, end = 1, start
  while end < len(line) and depth:
    depth += {"(": 1, ")": -1}.get(line[end], 0)
    end += 1
  return re.findall(r"%([\w.\-]+)", line[start:end - 1])


def _dot_flops(line: str, out: list[int], shapes: dict[str, list[int]]) -> float:
  """2 * prod(output) * prod(lhs contracting dims) for an HLO `dot` line."""
  ops = _operands(line, "dot")
  m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
  if not ops or ops[0] not in shapes or not m:
    return 0.0
  lhs = shapes[ops[0]]
  k = math.prod(lhs[i] for i in _dims(m.group(1)))
  return 2.0 * math.prod(out) * k


def _conv_flops(line: str, out: list[int], shapes: dict[str, list[int]]) -> float:
  """2 * prod(output) * window * input features per group for a `convolution` (padding taps
  counted as real ones, so 'SAME' borders make it slightly high)."""
  ops = _operands(line, "convolution")
  lab = re.search(r"dim_labels=\w+_(\w+)->\w+", line)
  if len(ops) < 2 or ops[1] not in shapes or not lab:
    return 0.0
  rhs = shapes[ops[1]]
  out_features = rhs[lab.group(1).index("o")]
  # The kernel holds window x (input features / groups) x output features.
  return 2.0 * math.prod(out) * math.prod(rhs) / max(out_features, 1)


@dataclasses.dataclass
class _Computation:
  flops: float = 0.0
  calls: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (callee, multiplier)
  unknown_loops: int = 0


def parse_hlo(text: str) -> tuple[dict[str, _Computation], str]:
  """({computation: own matrix-product FLOPs and its calls with multipliers}, entry name)."""
  comps: dict[str, _Computation] = {}
  entry = ""
  current: _Computation | None = None
  for line in text.splitlines():
    stripped = line.strip()
    if not stripped or stripped.startswith("//") or stripped.startswith("HloModule"):
      continue
    if current is None or (not line.startswith(" ") and stripped.endswith("{")):
      header = _COMP_HEADER.match(stripped)
      if header and "=" not in stripped.split("(")[0]:
        name = header.group(2)
        current = comps.setdefault(name, _Computation())
        shapes: dict[str, list[int]] = {}
        if header.group(1):
          entry = name
        continue
    if stripped == "}":
      current = None
      continue
    if current is None:
      continue
    d = _DEF.match(stripped)
    if d:
      shapes[d.group(1)] = _dims(d.group(3))
      out = shapes[d.group(1)]
      if " dot(" in stripped:
        current.flops += _dot_flops(stripped, out, shapes)
      elif " convolution(" in stripped:
        current.flops += _conv_flops(stripped, out, shapes)
    trip = 1
    if " while(" in stripped:
      t = _TRIP.search(stripped)
      if t:
        trip = int(t.group(1))
      else:
        current.unknown_loops += 1
    for kind, callee in _CALLS.findall(stripped):
      if kind == "to_apply" and any(op in stripped for op in _COMBINER_OPS):
        continue  # scalar combiners: no products
      current.calls.append((callee, trip if kind in ("body", "condition") else 1))
    for group in _BRANCHES.findall(stripped):
      for callee in group.split(","):
        current.calls.append((callee.strip().lstrip("%"), 1))
  return comps, entry


def _total(comps: dict[str, _Computation], name: str, use_trips: bool,
           memo: dict[str, float], stack: tuple[str, ...] = ()) -> float:
  if name in memo:
    return memo[name]
  comp = comps.get(name)
  if comp is None or name in stack:
    return 0.0
  total = comp.flops
  for callee, mult in comp.calls:
    total += (mult if use_trips else 1) * _total(comps, callee, use_trips, memo, stack + (name,))
  memo[name] = total
  return total


@dataclasses.dataclass(frozen=True)
class LoopCorrection:
  """Matrix-product FLOPs of one device's program, with and without loop trip counts."""
  product_flops: float             # every dot/convolution times how often it runs
  product_flops_trips_as_one: float  # the same with every while body counted once (XLA's view)
  unknown_trip_loops: int          # while loops without a known_trip_count (counted once)

  @property
  def missing_flops(self) -> float:
    return self.product_flops - self.product_flops_trips_as_one


def loop_correction(hlo_text: str) -> LoopCorrection:
  """Counts matrix-product FLOPs in an optimised HLO module's text (module docstring)."""
  comps, entry = parse_hlo(hlo_text)
  if not entry:
    raise ValueError("no ENTRY computation in the HLO text; pass compiled.as_text() of a "
                     "compiled program")
  return LoopCorrection(
      product_flops=_total(comps, entry, True, {}),
      product_flops_trips_as_one=_total(comps, entry, False, {}),
      unknown_trip_loops=sum(c.unknown_loops for c in comps.values()))


def loop_corrected_flops(compiled: Any) -> tuple[float, LoopCorrection]:
  """(XLA's per-device FLOPs + the FLOPs its while-body-once count misses, the correction)."""
  corr = loop_correction(compiled.as_text())
  return xla_cost(compiled).get("flops", 0.0) + corr.missing_flops, corr


def xla_cost(compiled: Any) -> dict[str, float]:
  """compiled.cost_analysis() as one dict (older jax returns a list with one dict per module)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


# ---------------------------------------------------------------------------------------------
# One compiled program -> a report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CostReport:
  """Per-device figures of one compiled program, and the per-step/-sample totals."""
  num_devices: int
  batch_size: int
  compile_s: float
  flops_per_device_xla: float       # cost_analysis()['flops'] (while bodies counted once)
  flops_per_device: float           # loop-corrected
  product_flops_per_device: float   # dots + convolutions only, loop-corrected
  loop_missing_flops_per_device: float
  unknown_trip_loops: int
  bytes_accessed_per_device: float  # cost_analysis()['bytes accessed'] (while bodies once)
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int

  @property
  def peak_bytes(self) -> int:
    """Peak per-device memory estimate: arguments + outputs - aliased (donated) + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def flops_per_step(self) -> float:
    return self.flops_per_device * self.num_devices

  @property
  def flops_per_sample(self) -> float:
    return self.flops_per_step / self.batch_size

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(peak_bytes=self.peak_bytes, flops_per_step=self.flops_per_step,
             flops_per_sample=self.flops_per_sample,
             peak_gib=self.peak_bytes / 2**30, temp_gib=self.temp_bytes / 2**30,
             argument_gib=self.argument_bytes / 2**30)
    return d


def report_compiled(compiled: Any, *, num_devices: int, batch_size: int,
                    compile_s: float) -> CostReport:
  """Reads XLA's cost and memory analyses of `compiled` (module docstring)."""
  cost = xla_cost(compiled)
  corrected, corr = loop_corrected_flops(compiled)
  mem = compiled.memory_analysis()

  def size(name):
    return int(getattr(mem, name, 0) or 0) if mem is not None else 0
  return CostReport(
      num_devices=num_devices, batch_size=batch_size, compile_s=compile_s,
      flops_per_device_xla=float(cost.get("flops", 0.0)), flops_per_device=corrected,
      product_flops_per_device=corr.product_flops,
      loop_missing_flops_per_device=corr.missing_flops,
      unknown_trip_loops=corr.unknown_trip_loops,
      bytes_accessed_per_device=float(cost.get("bytes accessed", 0.0)),
      argument_bytes=size("argument_size_in_bytes"), output_bytes=size("output_size_in_bytes"),
      alias_bytes=size("alias_size_in_bytes"), temp_bytes=size("temp_size_in_bytes"),
      generated_code_bytes=size("generated_code_size_in_bytes"))


def compile_and_report(jitted: Callable[..., Any], *args: Any, num_devices: int,
                       batch_size: int) -> CostReport:
  """Lowers and compiles `jitted(*args)` (args may be ShapeDtypeStructs) and reports its cost."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  return report_compiled(compiled, num_devices=num_devices, batch_size=batch_size,
                         compile_s=compile_s)


def train_step_cost(config: Any, *, mesh: Any | None = None,
                    batch_template: dict[str, Any] | None = None) -> CostReport:
  """Cost of `mmrl.train.step.make_train_step(config)` at config.train.batch_size, compiled for
  `mesh` (default `config.mesh` over all devices) on an abstract state and batch.

  batch_template: arrays (any leading size) giving the batch's keys, trailing shapes and dtypes
  (default `mmrl.train.state.dummy_batch`, which lacks the keys some objectives read).
  """
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import step as step_lib  # pylint: disable=g-import-not-at-top
  if mesh is None:
    mesh = mesh_lib.make_mesh(config.mesh)
  batch_size = int(config.train.batch_size)
  state, shardings = state_lib.abstract_train_state(config, mesh)
  sharding = mesh_lib.batch_sharding(mesh)
  template = (batch_template if batch_template is not None
              else state_lib.dummy_batch(config, batch_size=2))
  batch = {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=sharding)
           for k, v in template.items()}
  step = step_lib.make_train_step(config, mesh, shardings)
  return compile_and_report(step, state, batch, num_devices=mesh.size, batch_size=batch_size)


def dumps(rows: list[dict[str, Any]]) -> str:
  return json.dumps(rows, indent=1, sort_keys=True, default=str)
