"""The only module that knows about devices: mesh, sharding, data-parallel steps.

Data parallelism is the pmap pattern (each device runs the step on its slice of the
batch, gradients and metrics are reduced over axis 'batch'), written with jax.jit +
jax.shard_map over a 1-D mesh of all devices.
"""

from typing import Any, Callable

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "batch"


def maybe_initialize_distributed(config) -> None:
  """Joins a multi-host job when `config.distributed` is set (once per process).

  With `config.coordinator_address` ('host:port' of process 0) the process count and
  this process's index come from the config; without it JAX detects all three (SLURM
  or Open MPI on GPU clusters, the TPU pod slice's metadata).
  """
  if not config.distributed or jax.distributed.is_initialized():
    return
  if config.coordinator_address:
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes,
                               process_id=config.process_id)
  else:
    jax.distributed.initialize()
  logging.info("Process %d of %d, %d local devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count())


def is_main_process() -> bool:
  """Whether this process writes what is shared: checkpoint records, logs, summaries."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (each must call it in step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  return jax.sharding.Mesh(np.array(devices), (AXIS,))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """`tree` on every device of `mesh`; each process must pass the same values."""
  if jax.process_count() > 1:
    # An array committed to one local device (as orbax restores one) would need a
    # cross-host transfer; from host memory each process places its own copies.
    tree = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array)
                        and x.is_fully_addressable else x, tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
  """Places a global host batch split over 'batch'; each process gives its own rows."""
  sharding = NamedSharding(mesh, P(AXIS))
  count, index = jax.process_count(), jax.process_index()

  def put(x):
    rows = x.shape[0] // count
    return jax.make_array_from_process_local_data(sharding, x[index * rows:(index + 1) * rows],
                                                  x.shape)
  return {k: put(v) for k, v in batch.items()}


def psum(tree: Any) -> Any:
  return jax.lax.psum(tree, AXIS)


def data_parallel_train_step(step_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """Compiles `step_fn(state, batch, rng, teacher, reduce) -> (state, metrics)`.

  Each device folds its index into `rng`; `reduce` sums over devices; `teacher` (a
  replicated pytree or None) is passed through. The state is donated.
  """
  def per_device(state, batch, rng, teacher):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
    return step_fn(state, batch, rng, teacher, psum)

  # check_vma=False keeps pmap semantics: gradients stay per-device until `reduce`.
  # With it on, shard_map would already sum gradients of the replicated params and
  # the explicit reduction would count them once per device.
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(), P()),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


def data_parallel_eval_step(eval_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """Compiles `eval_fn(params, batch) -> per-example outputs` over the mesh."""
  sharded = jax.shard_map(eval_fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
  return jax.jit(sharded)


def global_batch_size(per_device: int, mesh: jax.sharding.Mesh) -> int:
  return per_device * mesh.devices.size


def to_host(tree: Any) -> Any:
  """Fetches arrays as numpy; across hosts, a sharded array is gathered whole.

  Every process must call it with the same tree (the gathers are collectives).
  """
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:  # this process's copy is the value
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)
