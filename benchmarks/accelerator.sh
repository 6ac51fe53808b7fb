#!/usr/bin/env bash
# The accelerator check, on a machine with one NVIDIA GPU: installs the CUDA plugin that
# matches the pinned jax into its own virtual environment, then runs
# `python -m benchmarks.accelerator` (bf16 train steps of base and big with each attention
# implementation and remat setting, beam search, dropout-key implementations) and prints
# the table the README's accelerator section holds. Usage: benchmarks/accelerator.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ACCEL_VENV:-.venv-gpu}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -r requirements.txt "jax[cuda12]==$(grep -oP '^jax==\K.*' requirements.txt)"
    "$VENV/bin/pip" install --quiet --no-deps -e .
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$VENV/bin/python" -c "import jax; print(jax.devices())"
BENCH_OUT=${BENCH_OUT:-accelerator.jsonl}
"$VENV/bin/python" -m benchmarks.accelerator --cases "${1:-}" --out "$BENCH_OUT"
