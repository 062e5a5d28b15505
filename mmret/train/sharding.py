"""The one place where logical axis names meet the device mesh.

Models name logical axes only (`batch`, `embed`, `vocab`, ...). The config holds the mesh shape
and the logical->mesh rules; this module turns abstract variables into `NamedSharding`s so that
state is created directly on the devices it lives on (`jit(init, out_shardings=...)`), never as a
full copy on one device.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Mesh axes, named for the kind of parallelism they carry (MaxText/t5x convention).
DATA_AXIS = 'data'
MODEL_AXIS = 'model'


def make_mesh(mesh_shape: Sequence[int], axis_names: Sequence[str] = (DATA_AXIS, MODEL_AXIS),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh; one -1 entry in `mesh_shape` takes all remaining devices.

  Axis types are Auto so that XLA propagates shardings through gathers on sharded tables.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = list(mesh_shape)
  if shape.count(-1) > 1:
    raise ValueError(f'config.mesh.shape={tuple(mesh_shape)}: at most one -1 entry.')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f'config.mesh.shape={tuple(mesh_shape)} does not divide '
                       f'{len(devices)} devices.')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f'config.mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices, '
                     f'{len(devices)} are available.')
  return jax.make_mesh(tuple(shape), tuple(axis_names), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules (lists from ConfigDict) to flax's tuple-of-pairs form."""
  out = []
  for rule in rules:
    name, target = rule
    target = tuple(target) if isinstance(target, (list, tuple)) else target
    out.append((str(name), target))
  return tuple(out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
  """Maps a tree of (possibly `nn.LogicallyPartitioned`) abstract leaves to NamedShardings.

  Leaves without logical annotations (step counters, RNG keys, unboxed optimizer scalars) are
  replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis, everything else replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_device(batch: dict[str, np.ndarray], mesh: Mesh, *, full: bool = False,
              replicated_keys: Sequence[str] = ()) -> dict[str, jax.Array]:
  """Numpy batch -> global jax.Arrays, rows split over the data axis (multi-host safe).

  full=False: `batch` is this process's rows only (data.process_sharding='per_process').
  full=True: every process holds the whole global batch ('global_batch') and each device takes
  its own rows of it, so the global batch does not depend on the number of processes.
  replicated_keys: entries every device holds whole (e.g. the recall step's shared negatives);
  every process must hold them whole.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if key in replicated_keys:
      sharding = replicated(mesh)
    else:
      sharding = batch_sharding(mesh)
    if full or key in replicated_keys:
      out[key] = jax.make_array_from_callback(value.shape, sharding,
                                              lambda idx, v=value: v[idx])
    else:
      out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
