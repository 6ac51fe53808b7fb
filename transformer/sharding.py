"""One program for one CPU or a pod: a device mesh, logical axis names and their rules.

Every parameter carries the logical names of its axes (``logical_axes`` metadata set in
``layers.py`` and ``model.py``: embed, mlp, heads, kv, vocab, length). A rules table in the
config (``config.mesh.rules``) maps each name to a mesh axis or to '' (replicated). The
mesh has three axes:

  data    plain data parallelism: the batch is split, parameters are replicated.
  fsdp    the batch is split *and* parameters (and optimizer moments) are split along the
          axes mapped to it (ZeRO-3 / fully sharded data parallelism).
  tensor  Megatron-style tensor parallelism: heads and feed-forward units are split.

The default (data=-1, fsdp=1, tensor=1) is pure data parallelism over all devices. The
same jitted step runs on any mesh: XLA inserts the collectives the shardings imply.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger('transformer')

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch's leading (row) axis is split over both

# Logical axis names used on parameters, and the default place of each on the mesh.
DEFAULT_RULES = {
    'embed': 'fsdp',     # d_model: the axis every matrix has, split by FSDP
    'mlp': 'tensor',     # d_ff
    'heads': 'tensor',   # attention heads
    'kv': '',            # d_head: kept whole (a head is never split)
    'vocab': 'tensor',   # the embedding table's rows
    'length': '',        # learned position table rows
}


class MeshError(ValueError):
    """A mesh that does not fit the devices or the batch; the message says what would."""


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves one -1 entry to the devices left over; checks the product.

    >>> mesh_shape(-1, 1, 2, 8)
    (4, 1, 2)
    """
    shape = [data, fsdp, tensor]
    text = f'data={data} x fsdp={fsdp} x tensor={tensor}'
    if shape.count(-1) > 1 or any(n == 0 or n < -1 for n in shape):
        raise MeshError(f'config.mesh {text}: each axis must be a positive size, and at most '
                        'one may be -1 (it takes the devices left over).')
    if -1 in shape:
        rest = math.prod(n for n in shape if n != -1)
        if num_devices % rest:
            raise MeshError(f'config.mesh {text}: {num_devices} devices do not divide by the '
                            f'fixed axes ({rest}); choose sizes whose product divides {num_devices}.')
        shape[shape.index(-1)] = num_devices // rest
    if math.prod(shape) != num_devices:
        raise MeshError(f'config.mesh {text} needs {math.prod(shape)} devices, but '
                        f'{num_devices} are visible ({jax.default_backend()}). Make the product '
                        f'{num_devices}, or set one axis to -1 (e.g. --config.mesh.data=-1).')
    return tuple(shape)


def make_mesh(mesh_config: Mapping, devices=None) -> Mesh:
    """The ('data', 'fsdp', 'tensor') mesh of ``mesh_config`` over ``devices`` (default all)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config['data'], mesh_config['fsdp'], mesh_config['tensor'],
                       len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


def batch_rows_multiple(mesh: Mesh) -> int:
    """The batch's row count must be a multiple of this (the devices it is split over)."""
    return mesh.shape['data'] * mesh.shape['fsdp']


def check_batch(mesh: Mesh, batch_size: int, key: str = 'train.batch_size') -> None:
    n = batch_rows_multiple(mesh)
    if batch_size % n:
        valid = ', '.join(str(n * k) for k in range(1, 4))
        raise MeshError(f'config.{key}={batch_size} rows cannot be split evenly over '
                        f'data x fsdp = {n} devices; use a multiple of {n} ({valid}, ...).')


def spec_for(logical_axes, shape, mesh: Mesh, rules: Mapping[str, str]) -> PartitionSpec:
    """PartitionSpec of one parameter: each logical axis through ``rules``.

    An axis whose size the mesh axis does not divide stays whole (replicated) rather than
    failing: e.g. a 37,003-piece vocabulary on tensor=2.
    """
    if logical_axes is None:
        return PartitionSpec()
    spec, used = [], set()
    for name, size in zip(logical_axes, shape):
        if name is not None and name not in rules:
            raise MeshError(f'No sharding rule for logical axis {name!r}; config.mesh.rules has '
                            f'{sorted(rules)}. Add one (\'\' = replicated).')
        axis = (rules.get(name) or None) if name is not None else None
        if axis is not None and (axis in used or size % mesh.shape[axis]):
            axis = None  # a mesh axis may split only one dimension, and only evenly
        used.add(axis)
        spec.append(axis)
    return PartitionSpec(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(abstract_state, mesh: Mesh, rules: Mapping[str, str]):
    """NamedShardings for a tree of parameters / train state, same structure.

    nnx Variables (parameters, and the optimizer moments, which inherit the parameters'
    metadata) are placed by their ``logical_axes``; everything else (step counters) is
    replicated.
    """
    def place(x):
        if _is_variable(x):
            names = x.get_metadata().get('logical_axes')
            return x.replace(NamedSharding(mesh, spec_for(names, x.shape, mesh, rules)))
        return NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(place, abstract_state, is_leaf=_is_variable)


def place(tree, shardings):
    """Puts host (or single-device) arrays onto their shardings, in any number of processes.

    Every process holds the same full values (the same seed made them); each contributes
    the slices its own devices hold.
    """
    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(put, tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[rows, ...] arrays: rows split over data and fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
    """One global batch from each process's rows (process 0's rows first)."""
    return {key: jax.make_array_from_process_local_data(sharding, value)
            for key, value in local_batch.items()}


def replicated_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
    """One global batch from a batch every process holds in full (validation)."""
    return place(dict(batch), {key: sharding for key in batch})


def barrier(name: str) -> None:
    """Waits until every process reaches this point (nothing to do in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def allgather_json(obj) -> list:
    """Every process's JSON-able ``obj``, in process order (``[obj]`` in one process)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils
    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes.ravel())]


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pins an activation [b, ...] to rows over (data, fsdp), the rest whole.

    Used at block boundaries so that XLA's sharding propagation keeps activations split
    by batch instead of gathering them after a tensor-parallel matmul. A no-op outside a
    mesh context (single-device use, tests, notebooks).
    """
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(BATCH_AXES))


def initialize_distributed(cfg: Mapping) -> None:
    """Joins a multi-process job when the config or environment asks for one.

    ``cfg`` is ``config.distributed``. With ``coordinator_address`` set (or the
    JAX_COORDINATOR_ADDRESS environment variable, or ``enabled`` on a TPU pod or SLURM
    where JAX finds the coordinator itself) this calls ``jax.distributed.initialize``;
    CPU processes then use gloo collectives. Must run before anything touches a device.
    """
    address = cfg['coordinator_address'] or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
    if not (cfg['enabled'] or address):
        return
    # Collectives between CPU processes (tests, CPU clusters); accelerators have their own.
    jax.config.update('jax_cpu_collectives_implementation', cfg['cpu_collectives'])
    kwargs = dict(coordinator_address=address or None,
                  num_processes=cfg['num_processes'] or None,
                  process_id=cfg['process_id'] if cfg['process_id'] >= 0 else None,
                  initialization_timeout=cfg['timeout_s'])
    log.info('Joining a multi-process job: %s', json.dumps(kwargs))
    jax.distributed.initialize(**kwargs)
    log.info('Process %d of %d; %d local / %d global devices', jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
