#!/usr/bin/env bash
# One host, all of its GPUs, one process: JAX drives every local GPU from a single process, so
# the data-parallel mesh spans them with no launcher. Usage:
#   launch/local_multi_gpu.sh [--config configs/pretrain.py:base] [--workdir DIR] [--config.KEY=V ...]
# Install first: pip install -e ".[gpu]" (jax[cuda12]).
set -euo pipefail
cd "$(dirname "$0")/.."
# Let XLA take GPU memory as it needs it rather than 75% up front (other jobs may share the host).
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec python -m mmret.launch "$@"
