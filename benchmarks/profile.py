"""Where a train step's or a beam search's time goes, by kind of operation; for train steps
also the PyTorch peer's.

Ours: XLA:CPU's runtime records one trace event per executed operation (a fusion, a
matmul, a copy); ``jax.profiler`` captures them and each is classified from the compiled
program, by the operations it fuses and by the names the model gives its parts
(``jax.named_scope``: 'dropout', 'attention_softmax', 'norm', 'loss', 'optimizer').
PyTorch's: its profiler's self time of each ATen operator, classified by operator name
(and by the ``Optimizer.step`` region around it).

Summed operation time can exceed the step's wall time in ours, whose runtime runs
independent operations on both cores at once; PyTorch runs one operator at a time.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

from benchmarks.common import columns, peak_rss_mib

KINDS = ('matmul', 'attention, fused kernel', 'attention softmax', 'normalization', 'dropout',
         'loss (log-softmax)', 'optimizer update', 'copies, transposes, casts',
         'elementwise, other')
COPY_OPCODES = frozenset((
    'copy', 'transpose', 'bitcast', 'reshape', 'concatenate', 'slice', 'dynamic-slice',
    'dynamic-update-slice', 'broadcast', 'pad', 'convert', 'bitcast-convert', 'parameter',
    'constant', 'tuple', 'get-tuple-element', 'iota', 'gather', 'scatter'))
CONTROL_FLOW = frozenset(('while', 'conditional', 'call'))
# Scope names as they appear in op names: 'jit(train_step)/optimizer/mul' or, under
# autodiff, '.../jvp(dropout)/xor' and '.../transpose(jvp(norm))/mul'.
SCOPES = tuple((re.compile(rf'[/(]{scope}[/)]'), kind) for scope, kind in (
    ('optimizer', 'optimizer update'), ('dropout', 'dropout'),
    ('attention_softmax', 'attention softmax'), ('norm', 'normalization'),
    ('loss', 'loss (log-softmax)')))
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\(')


def parse_hlo(text: str) -> tuple[dict, dict]:
    """Compiled HLO text -> ({instruction: (opcode, op_name, called computations)},
    {computation: [its instructions]})."""
    instructions, computations, current = {}, collections.defaultdict(list), ''
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith('{'):
            current = line.split()[1 if line.startswith('ENTRY') else 0].lstrip('%')
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        called = re.findall(r'(?:calls|to_apply|body|condition)=%?([\w.\-]+)', line)
        target = re.search(r'custom_call_target="([^"]*)"', line)
        instructions[name] = (opcode if not target else f'custom-call:{target.group(1)}',
                              op_name.group(1) if op_name else '', called)
        computations[current].append(name)
    return instructions, computations


def classify(name: str, instructions: dict, computations: dict) -> str | None:
    """The kind of the executed operation ``name``; None for control flow (its body's
    operations are traced on their own)."""
    if name not in instructions:
        return None
    opcode, _, called = instructions[name]
    if opcode in CONTROL_FLOW:
        return None
    opcodes, op_names, todo = set(), [], [name]
    while todo:  # the operation and everything its fused computations contain
        inst = todo.pop()
        op, op_name, calls = instructions.get(inst, ('', '', []))
        opcodes.add(op)
        op_names.append(op_name)
        todo.extend(i for c in calls for i in computations.get(c, ()))
    if opcodes & {'dot', 'convolution'} or any('matmul' in o for o in opcodes):
        return 'matmul'
    for scope, kind in SCOPES:
        if any(scope.search(n) for n in op_names):
            return kind
    if opcodes - {'fusion'} <= COPY_OPCODES:
        return 'copies, transposes, casts'
    return 'elementwise, other'


def jax_profile(size: str, dtype: str = 'mixed', *, steps: int = 3) -> dict:
    """Our train step's operation time per step by kind (ms), from a ``jax.profiler`` trace."""
    from benchmarks.common import TRAIN_SIZES
    from benchmarks.jax_cases import compiled_train_step
    from transformer.model import ModelConfig

    variant, vocab, rows, src_len, tgt_len = TRAIN_SIZES[size]
    precision = dict(matmul_dtype='bfloat16') if dtype == 'mixed' else dict(dtype=dtype)
    cfg = ModelConfig.make(variant, vocab, dropout_rate=0.1, **precision)
    compiled, state, data, _ = compiled_train_step(cfg, rows, src_len, tgt_len)
    holder = {'state': state}

    def run():
        holder['state'], sums = compiled(holder['state'], data)
        return sums
    return _profile(run, compiled.as_text(), steps)


def decoding_profile(kind: str, dtype: str = 'bfloat16', *, steps: int = 3) -> dict:
    """The ``decoding`` case's operation time per decoded batch by kind (ms)."""
    from benchmarks.jax_cases import compiled_decoder

    compiled, params, src, _ = compiled_decoder(kind, dtype)
    return _profile(lambda: compiled(params, src), compiled.as_text(), steps)


def _profile(run, hlo: str, steps: int) -> dict:
    """Runs ``run`` (a compiled program; returns arrays) ``steps`` times under
    ``jax.profiler`` after two untraced runs; its operations' time per run by kind."""
    import jax
    from jax.profiler import ProfileData

    for _ in range(2):
        jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                jax.block_until_ready(run())
        step_s = (time.perf_counter() - start) / steps
        trace = ProfileData.from_file(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0])
        events = [(e.name, e.duration_ns) for plane in trace.planes if plane.name == '/host:CPU'
                  for line in plane.lines if line.name != 'python' for e in line.events]
    instructions, computations = parse_hlo(hlo)
    ms = collections.Counter()
    for name, duration_ns in events:
        kind = classify(name, instructions, computations)
        if kind:
            ms[kind] += duration_ns / 1e6 / steps
    return {'step_s': step_s, 'ms_by_kind': dict(ms), 'peak_rss_mib': peak_rss_mib()}


TORCH_KINDS = (
    ('attention, fused kernel', ('scaled_dot_product', 'flash_attention')),
    ('matmul', ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'mkldnn', 'linear')),
    ('attention softmax', ('aten::_softmax', 'aten::softmax')),
    ('normalization', ('layer_norm',)),
    ('dropout', ('dropout', 'bernoulli')),
    ('loss (log-softmax)', ('log_softmax', 'nll_loss', 'cross_entropy')),
    ('copies, transposes, casts', ('copy', '_to_copy', 'aten::to', 'clone', 'contiguous', 'cat',
                                   'transpose', 'aten::t', 'permute', 'view', 'reshape',
                                   'expand', 'slice', 'select', 'unsqueeze', 'split'))
)


def torch_kind(name: str, in_optimizer: bool) -> str:
    if in_optimizer:
        return 'optimizer update'
    for kind, patterns in TORCH_KINDS:
        if any(p in name for p in patterns):
            return kind
    return 'elementwise, other'


def torch_profile(size: str, dtype: str = 'bfloat16', *, steps: int = 3) -> dict:
    """The PyTorch peer's operator self time per step by kind (ms), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.torch_peer import make_train_step

    run = make_train_step(size, dtype, 0.1)
    for _ in range(2):
        run()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    step_s = (time.perf_counter() - start) / steps
    ms = collections.Counter()
    for event in prof.events():
        if not event.name.startswith('aten::'):
            continue
        parent, in_optimizer = event.cpu_parent, False
        while parent is not None and not in_optimizer:
            in_optimizer = parent.name.startswith('Optimizer.')
            parent = parent.cpu_parent
        ms[torch_kind(event.name, in_optimizer)] += event.self_cpu_time_total / 1e3 / steps
    return {'step_s': step_s, 'ms_by_kind': dict(ms), 'peak_rss_mib': peak_rss_mib()}


def table(results: list[dict]) -> str:
    """Columns: each profiled case's ms per step and share, by kind."""
    results = [r for r in results if 'ms_by_kind' in r]
    if not results:
        return ''
    head = ['kind'] + [r['case'] for r in results]
    rows = [head]
    for kind in KINDS:
        if any(kind in r['ms_by_kind'] for r in results):
            rows.append([kind] + [_cell(r, kind) for r in results])
    rows.append(['sum of operation times'] + [f'{sum(r["ms_by_kind"].values()):.0f} ms'
                                               for r in results])
    rows.append(['step (wall, while traced)'] + [f'{1000 * r["step_s"]:.0f} ms' for r in results])
    return columns(rows)


def _cell(result: dict, kind: str) -> str:
    ms, total = result['ms_by_kind'].get(kind, 0.0), sum(result['ms_by_kind'].values())
    return f'{ms:.0f} ms ({100 * ms / total:.0f}%)'
