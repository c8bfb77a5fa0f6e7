"""Device mesh from `config.mesh` (axes 'data' and 'fsdp') and the batch sharding on it.

The batch is split over *all* devices (both axes); parameters are split along 'fsdp' by the
rules in `mmrl.parallel.sharding`. Nothing else in the library builds a mesh.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmrl.config_errors import ConfigError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def _axis_sizes(mesh_cfg: Any, num_devices: int) -> tuple[int, int]:
  """Resolves config.mesh.{data,fsdp} (one may be -1) against the device count."""
  sizes = {name: int(mesh_cfg[name]) for name in MESH_AXES}
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise ConfigError(f"config.mesh.{name}={size} is not a valid axis size; use a positive "
                        f"divisor of the {num_devices} devices or -1 to fill in")
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ConfigError(f"config.mesh.data=-1 and config.mesh.fsdp=-1: only one axis may be -1; "
                      f"set the other to a divisor of the {num_devices} devices")
  if fill:
    (name,) = fill
    (other,) = [n for n in MESH_AXES if n != name]
    if num_devices % sizes[other]:
      raise ConfigError(f"config.mesh.{other}={sizes[other]} does not divide the {num_devices} "
                        f"devices; choose a divisor of {num_devices}")
    sizes[name] = num_devices // sizes[other]
  if sizes["data"] * sizes["fsdp"] != num_devices:
    raise ConfigError(
        f"config.mesh.data={sizes['data']} x config.mesh.fsdp={sizes['fsdp']} = "
        f"{sizes['data'] * sizes['fsdp']} does not match the {num_devices} devices; make the "
        f"product {num_devices} or set one axis to -1")
  return sizes["data"], sizes["fsdp"]


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp') mesh.

  Args:
    mesh_cfg: `config.mesh` with integer `data` and `fsdp`; one of them may be -1 (fill in).
    devices: the devices to use (default: all of `jax.devices()`).

  Returns:
    A `jax.sharding.Mesh` with Auto axis types.

  Raises:
    ConfigError: when the axis sizes do not multiply to the device count.
  """
  if devices is None:
    devices = jax.devices()
  devices = list(devices)
  data, fsdp = _axis_sizes(mesh_cfg, len(devices))
  if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
    # Topology-aware device order on real accelerators.
    try:
      return jax.make_mesh((data, fsdp), MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
      pass  # a topology mesh_utils cannot lay out: fall back to the plain device order
  return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), MESH_AXES)


def batch_spec() -> P:
  """PartitionSpec of every batch array: leading axis over all devices."""
  return P(BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """NamedSharding of every batch array: the leading (batch) axis split over the whole mesh."""
  return NamedSharding(mesh, batch_spec())


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated NamedSharding on `mesh` (scalars, metrics, rng)."""
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "train.batch_size") -> None:
  """Raises ConfigError unless `batch_size` splits evenly over the mesh (and the processes)."""
  size = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if batch_size % size:
    raise ConfigError(
        f"config.{key}={batch_size} is not divisible by the mesh size {size} "
        f"(config.mesh.data={mesh.shape['data']} x config.mesh.fsdp={mesh.shape['fsdp']}); "
        f"choose a batch size that is a multiple of {size} or change config.mesh")
  if batch_size % jax.process_count():
    raise ConfigError(f"config.{key}={batch_size} is not divisible by the "
                      f"{jax.process_count()} processes; choose a multiple of "
                      f"{jax.process_count()}")
