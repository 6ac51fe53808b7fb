"""Compiling the train step from shapes alone, for this host's devices or a TPU pod.

``train.py --compile_only`` builds the real train step (the config's model, optimizer,
mesh and sharding rules) from abstract arrays, so no data is read, no weight exists and
nothing runs. With ``--topology=v5e:16x16`` (or ``v5p:4x4x4``, ``v4:4x4x4``, ...) the
devices are those of a TPU slice described by the ``libtpu`` compiler (``pip install
libtpu==0.0.42``, the version matching jax 0.10.2): XLA compiles for that pod on any
machine, and its memory figures and cost model tell whether the config fits and how fast
it should run before anyone pays for the pod.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import ml_collections

from transformer import config_lib, flops, layers, platform_settings, sharding, steps, trainer

GiB = 2 ** 30


class TopologyError(ValueError):
    """A topology name libtpu does not know, or no libtpu to ask."""


def topology_devices(name: str) -> list:
    """The devices of the TPU slice ``name`` ('v5e:16x16', 'v5p:4x4x4', 'v4:2x2x1', ...)."""
    if not re.fullmatch(r'v\d+[a-z]*:\d+(x\d+)+', name):
        raise TopologyError(f'--topology={name!r}: expected GENERATION:DIMS, e.g. v5e:16x16, '
                            'v5p:4x4x4 or v4:4x4x4.')
    try:
        import libtpu  # noqa: F401  (the TPU compiler; not needed to run on CPU or GPU)
    except ImportError:
        raise TopologyError('--topology needs the TPU compiler: pip install libtpu==0.0.42 '
                            '(the version matching jax 0.10.2; no TPU is needed).') from None
    from jax.experimental import topologies
    # Compiling touches no TPU, so several such processes may share the machine (libtpu
    # otherwise takes a lock file meant for processes driving a real TPU).
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    # TPU v4 and v5p run their chip's two cores as one device ("megacore"), as JAX does on
    # a real slice; libtpu's default for v4 would describe every core separately.
    kwargs = {'chip_config_name': 'megacore'} if name.split(':')[0] in ('v4', 'v5p') else {}
    try:
        return list(topologies.get_topology_desc(platform='tpu', topology_name=name,
                                                 **kwargs).devices)
    except Exception as error:  # libtpu's own message says what is wrong with the name
        raise TopologyError(f'--topology={name!r}: {error}') from None


def abstract_batch(rows: int, src_len: int, tgt_len: int, pack: bool, batch_sharding=None) -> dict:
    """The shapes of one global training batch of ``rows`` rows (with the packed fields if
    ``pack``), each array placed by ``batch_sharding`` (None: the default device)."""
    fields = {'inputs': src_len, 'targets': tgt_len, 'decoder_inputs': tgt_len}
    if pack:
        fields.update(inputs_segment_ids=src_len, inputs_positions=src_len,
                      targets_segment_ids=tgt_len, targets_positions=tgt_len)
    return {k: jax.ShapeDtypeStruct((rows, n), jnp.int32, sharding=batch_sharding)
            for k, n in fields.items()}


def compile_train_step(config: ml_collections.ConfigDict, devices=None):
    """The train step of ``config`` compiled for ``config.mesh`` over ``devices`` (default:
    this host's; with XLA_FLAGS=--xla_force_host_platform_device_count=N a CPU stands in
    for N). Uses ``config.data.vocab_size`` for the vocabulary."""
    mesh = trainer.checked_mesh(config, devices)
    t = config.train
    _, optimizer, graphdef, abstract, state_sharding = trainer.state_layout(
        config, mesh, config.data.vocab_size)
    batch_sharding = sharding.batch_sharding(mesh)
    step = steps.make_train_step(graphdef, optimizer, label_smoothing=t.label_smoothing,
                                 dropout_seed=0, grad_accum_steps=t.grad_accum_steps,
                                 rdrop_alpha=t.rdrop_alpha, state_sharding=state_sharding,
                                 batch_sharding=batch_sharding)
    d = config.data
    batch = abstract_batch(t.batch_size * t.grad_accum_steps, d.max_source_length,
                           d.max_target_length, d.pack, batch_sharding)
    with jax.set_mesh(mesh):
        return step.jitted.lower(abstract, batch).compile()


def report(config: ml_collections.ConfigDict, topology: str = '', devices=None) -> dict:
    """Compiles the train step and returns what it costs: memory per chip against the
    chip's capacity, model and XLA FLOPs, XLA's estimated step time and the MFU it implies.

    Memory is arguments + temporaries + outputs, less the outputs that reuse donated
    argument buffers. Figures XLA or the chip table cannot give are None.
    """
    devices = devices or (topology_devices(topology) if topology else jax.devices())
    target = devices[0].platform
    platform_settings.configure(target)  # the random bits the target would use
    try:
        with layers.compiling_for(target):
            compiled = compile_train_step(config, devices)
        memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
        cost = (cost[0] if isinstance(cost, list) else cost) or {}
        exhausted = None
    except jax.errors.JaxRuntimeError as error:
        # The TPU compiler itself refuses a program whose buffers exceed the chip's memory,
        # naming what it needed (e.g. "HLO temporaries (29.81G) exceeds available HBM").
        exhausted = re.search(r'\(([\d.]+)G\) exceeds available HBM', str(error))
        if exhausted is None:
            raise
        memory, cost = None, {}
    mesh = sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                               len(devices))
    kind = devices[0].device_kind
    chips = math.prod(int(n) for n in topology.split(':')[1].split('x')) if topology else len(devices)
    per_chip = len(devices) // chips  # devices per chip (TPU v4: one per core)
    chip = flops.chip(kind) if devices[0].platform != 'cpu' else None
    t, d = config.train, config.data
    rows = t.batch_size * t.grad_accum_steps
    model_flops = flops.train_flops(config_lib.model_config(config, d.vocab_size),
                                    d.max_source_length, d.max_target_length, rows)
    used = float(exhausted.group(1)) * per_chip if exhausted else None  # a lower bound
    arguments = temporaries = None
    if memory is not None:
        used = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                + memory.output_size_in_bytes - memory.alias_size_in_bytes) * per_chip / GiB
        arguments = memory.argument_size_in_bytes * per_chip / GiB    # state and batch
        temporaries = memory.temp_size_in_bytes * per_chip / GiB      # activations and more
    # XLA's TPU cost model gives 'optimal_seconds' for some programs (a negative number when
    # it cannot); otherwise the roofline of XLA's own counts: the slower of its FLOPs at the
    # chip's peak and its memory traffic at the chip's bandwidth. Rough either way: both
    # leave out communication between chips, and XLA's byte count ignores on-chip reuse.
    step_s, source = cost.get('optimal_seconds', -1.0), 'xla cost model'
    if step_s <= 0 and chip and 'flops' in cost and 'bytes accessed' in cost:
        step_s = max(cost['flops'] / (chip[0] / per_chip),
                     cost['bytes accessed'] / (chip[2] / per_chip))
        source = 'roofline of xla flops and bytes'
    out = {
        'topology': topology or None, 'device_kind': kind, 'devices': len(devices),
        'chips': chips, 'mesh': dict(zip(sharding.MESH_AXES, mesh)),
        'variant': config.model.variant, 'remat': config.model.remat,
        'scan_layers': config.model.scan_layers, 'tokens_per_step': rows * d.max_target_length,
        'hbm_per_chip_gib': _round(used), 'arguments_gib': _round(arguments),
        'temporaries_gib': _round(temporaries), 'hbm_capacity_gib': chip[1] if chip else None,
        'fits': False if exhausted else (None if used is None or chip is None
                                         else bool(used <= chip[1])),
        'flops_per_step': model_flops,
        'xla_flops_per_step': cost['flops'] * len(devices) if 'flops' in cost else None,
        'estimated_step_s': _round(step_s, 6) if step_s > 0 else None,
        'estimate': source if step_s > 0 else None,
        'peak_flops_per_chip': chip[0] if chip else None,
    }
    out['estimated_mfu'] = (_round(model_flops / (out['estimated_step_s'] * chips * chip[0]), 4)
                            if out['estimated_step_s'] and chip else None)
    return out


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


# What to try, in order, when a config does not fit. Splitting parameters and optimizer
# state over every chip (FSDP) adds no FLOPs, only communication XLA overlaps with compute;
# rematerialization adds up to a third more FLOPs ('full').
ALTERNATIVES = ({'mesh.data': 1, 'mesh.fsdp': -1}, {'model.remat': 'dots'},
                {'model.remat': 'full'}, {'mesh.data': 1, 'mesh.fsdp': -1, 'model.remat': 'full'})


def what_would_fit(config: ml_collections.ConfigDict, topology: str, devices=None) -> dict | None:
    """The first of ``ALTERNATIVES`` that fits, as {'flags': [...], 'report': ...}, or None.

    Each is compiled in turn: parameters and optimizer state split over every device
    (FSDP), then rematerialization, then both.
    """
    devices = devices or (topology_devices(topology) if topology else jax.devices())
    for change in ALTERNATIVES:
        trial = ml_collections.ConfigDict(config.to_dict())
        for key, value in change.items():
            section, field = key.split('.')
            trial[section][field] = value
        if trial.to_dict() == config.to_dict():
            continue
        try:
            result = report(trial, topology, devices)
        except sharding.MeshError:  # e.g. a batch that does not split over every device
            continue
        if result['fits']:
            return {'flags': [f'--config.{k}={v}' for k, v in change.items()], 'report': result}
    return None


def print_report(config: ml_collections.ConfigDict, topology: str = '') -> int:
    """``train.py --compile_only``: compiles, prints a summary (stderr) and one JSON line
    (stdout); returns 1 if the step does not fit, naming the excess and what would fit (the
    JSON line then also holds, under 'fits_with', the flags and report of that setting)."""
    result = report(config, topology)
    mesh = ' x '.join(f'{k}={v}' for k, v in result['mesh'].items())
    print(f'compiled the train step of model.variant={config.model.variant} for mesh {mesh} '
          f'over {result["devices"]} devices ({result["device_kind"]})', file=sys.stderr)
    if result['hbm_per_chip_gib'] is not None:
        capacity = result['hbm_capacity_gib']
        print(f'  memory per chip: {result["hbm_per_chip_gib"]:.2f} GiB'
              + (f' of {capacity} GiB' if capacity else ''), file=sys.stderr)
    if result['fits'] is not False:
        print(json.dumps(result), flush=True)
        return 0
    fix = what_would_fit(config, topology)
    print(json.dumps(dict(result, fits_with=fix)), flush=True)
    over = result['hbm_per_chip_gib'] - result['hbm_capacity_gib']
    advice = (f'it fits with {" ".join(fix["flags"])} ({fix["report"]["hbm_per_chip_gib"]:.2f} '
              'GiB per chip)' if fix else 'no remat or FSDP setting fits; use more chips '
              'or a smaller train.batch_size with train.grad_accum_steps')
    print(f'Error: does not fit: {result["hbm_per_chip_gib"]:.2f} GiB per chip, '
          f'{over:.2f} GiB over the {result["hbm_capacity_gib"]} GiB of '
          f'{result["device_kind"]}; {advice}.', file=sys.stderr)
    return 1
