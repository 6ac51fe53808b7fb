"""Run in a subprocess with 8 CPU devices: one sharded train step vs the one-device step.

The sharded state is created already split over the mesh (``steps.init_state`` with
shardings), as training creates it. Prints one JSON line per mesh: the largest differences
of loss and parameters, and the parameters whose sharding is not what the rules say.
"""

import json
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from configs import default  # noqa: E402
from configs.common import ARCH_PRESETS  # noqa: E402
from transformer import sharding, steps  # noqa: E402
from transformer.model import EncoderDecoder, ModelConfig  # noqa: E402

jax.config.update('jax_platforms', 'cpu')
# Pure data parallelism with the paper's block; all three axes at once with today's block
# (every variant switch) in scanned, rematerialized layers (stacked parameters gain a
# leading, unsharded axis).
MODERN = dict(ARCH_PRESETS['modern'], num_kv_heads=2)
CASES = [(dict(data=8, fsdp=1, tensor=1), {}),
         (dict(data=2, fsdp=2, tensor=2), dict(MODERN, scan_layers=True, remat='dots'))]
RULES = default.get_config().mesh.rules.to_dict()
VOCAB, ROWS, LENGTH = 64, 16, 12


def packed_batch(rng):
    """Two examples per row, some padding: segment ids 1, 2, 0."""
    seg = np.zeros((ROWS, LENGTH), np.int32)
    seg[:, :5], seg[:, 5:10] = 1, 2
    pos = np.where(seg == 1, np.arange(LENGTH), np.arange(LENGTH) - 5) * (seg > 0)
    tokens = rng.integers(4, VOCAB, (ROWS, LENGTH)).astype(np.int32) * (seg > 0)
    return {'inputs': tokens, 'targets': np.roll(tokens, 1, 1) * (seg > 0),
            'decoder_inputs': tokens, 'inputs_segment_ids': seg, 'targets_segment_ids': seg,
            'inputs_positions': pos.astype(np.int32), 'targets_positions': pos.astype(np.int32)}


def is_variable(x):
    return isinstance(x, nnx.Variable)


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def misplaced(tree, mesh) -> list[str]:
    """Variables whose array sharding is not what the rules give for their logical axes."""
    wrong = []
    for path, var in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_variable):
        if not is_variable(var):
            continue
        want = sharding.spec_for(var.get_metadata()['logical_axes'], var.shape, mesh, RULES)
        if var.get_value().sharding.spec != want:
            wrong.append(f'{jax.tree_util.keystr(path)}: {var.get_value().sharding.spec} != {want}')
    return wrong


def one_step(optimizer, make_model, graphdef, mesh=None):
    """One train step from the initial state (dropout on, 2 accumulated micro-batches), on
    ``mesh`` or on one device."""
    kw = dict(label_smoothing=0.1, dropout_seed=1, grad_accum_steps=2)
    batch = packed_batch(np.random.default_rng(0))
    if mesh is None:
        return steps.make_train_step(graphdef, optimizer, **kw)(
            steps.init_state(make_model, optimizer), batch)
    _, abstract = steps.abstract_state(make_model, optimizer)
    shardings = sharding.state_shardings(abstract, mesh, RULES)
    batch_sharding = sharding.batch_sharding(mesh)
    step = steps.make_train_step(graphdef, optimizer, state_sharding=shardings,
                                 batch_sharding=batch_sharding, **kw)
    state = steps.init_state(make_model, optimizer, shardings)
    wrong = misplaced(state.params, mesh)
    assert not wrong, f'parameters not born where the rules put them: {wrong}'
    return step(state, sharding.global_batch(batch, batch_sharding))


def model_maker(**overrides):
    cfg = ModelConfig.make('tiny', VOCAB, dropout_rate=0.1, **overrides)
    return lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0))


def main():
    # SGD with momentum: after one step its trace is the gradient itself, and the update is
    # proportional to it, so both gradients and parameters can be compared tightly (Adam's
    # first step is lr * sign(gradient), where rounding can flip a near-zero entry); the
    # trace is sharded like the parameters, so optimizer-state placement is checked too.
    optimizer = optax.sgd(0.5, momentum=0.9)
    references = {}
    for shape, overrides in CASES:
        make_model = model_maker(**overrides)
        graphdef, _ = steps.abstract_state(make_model, optimizer)
        key = json.dumps(overrides)
        if key not in references:
            references[key] = one_step(optimizer, make_model, graphdef)
        ref, ref_sums = references[key]
        mesh = sharding.make_mesh(shape)
        new, sums = one_step(optimizer, make_model, graphdef, mesh)
        print(json.dumps({
            'mesh': shape, 'model': overrides,
            'loss': float(sums['loss']), 'ref_loss': float(ref_sums['loss']),
            'tokens': float(sums['tokens']), 'ref_tokens': float(ref_sums['tokens']),
            'gradient_diff': max_diff(new.opt_state, ref.opt_state),
            'param_diff': max_diff(new.params, ref.params),
            'misplaced': misplaced(new.params, mesh) + misplaced(new.opt_state, mesh),
            'split_params': sum(any(mesh.shape[a] > 1 for a in v.get_value().sharding.spec if a)
                                for v in jax.tree.leaves(new.params, is_leaf=is_variable)),
        }), flush=True)


if __name__ == '__main__':
    main()
