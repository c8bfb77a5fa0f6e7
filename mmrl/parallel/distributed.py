"""Multi-host initialisation from `config.multihost` and process-local -> global batches.

Each process feeds its own slice of the global batch (B_local = B_global / process_count);
`global_batch_from_local` assembles the global `jax.Array`s sharded on the mesh.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
from absl import logging
from jax.sharding import Mesh, NamedSharding

from mmrl.config_errors import ConfigError
from mmrl.parallel.mesh import batch_sharding


def initialize_from_config(multihost_cfg: Any) -> None:
  """Calls `jax.distributed.initialize` when `config.multihost.enabled`; a no-op otherwise.

  With `coordinator_address == ''` the cluster (SLURM, TPU pod, ...) supplies everything and
  `initialize()` is called with no arguments. Must run before any other JAX call.
  """
  if multihost_cfg.enabled:
    address = multihost_cfg.coordinator_address
    if address:
      if int(multihost_cfg.num_processes) <= 0 or int(multihost_cfg.process_id) < 0:
        raise ConfigError(
            f"config.multihost.coordinator_address={address!r} needs "
            f"config.multihost.num_processes > 0 (got {multihost_cfg.num_processes}) and "
            f"config.multihost.process_id >= 0 (got {multihost_cfg.process_id}); set both or "
            f"set coordinator_address='' on a managed cluster")
      jax.distributed.initialize(coordinator_address=address,
                                 num_processes=int(multihost_cfg.num_processes),
                                 process_id=int(multihost_cfg.process_id))
    else:
      jax.distributed.initialize()
  logging.info("JAX process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def global_batch_from_local(local_batch: Mapping[str, Any], mesh: Mesh,
                            sharding: NamedSharding | None = None) -> dict[str, jax.Array]:
  """Global, batch-sharded jax.Arrays from this process's numpy slice of the batch.

  Args:
    local_batch: dict of arrays with leading axis B_local (see data_pipeline/batch_spec.py).
    mesh: the device mesh.
    sharding: the batch sharding (default `batch_sharding(mesh)`).
  """
  sharding = batch_sharding(mesh) if sharding is None else sharding
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def process_rows(batch: Mapping[str, Any]) -> dict[str, Any]:
  """This process's contiguous share of a batch that every process holds whole (evaluation).

  With P processes and B rows, process i keeps rows [i*B/P, (i+1)*B/P), so the global array that
  `global_batch_from_local` assembles is the original batch in its original order.
  """
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return dict(batch)
  out = {}
  for key, value in batch.items():
    rows = value.shape[0]
    if rows % count:
      raise ConfigError(f"an evaluation batch of {rows} rows does not split over {count} "
                        f"processes; choose config.eval.batch_size as a multiple of {count}")
    share = rows // count
    out[key] = value[index * share:(index + 1) * share]
  return out
