#!/usr/bin/env bash
# Two CPU processes on this machine through jax.distributed (coordinator on localhost): the
# smallest multi-process run, for checking a multi-host setup without a cluster. Usage:
#   launch/two_process_cpu.sh --config configs/pretrain.py:tiny --workdir /tmp/mmret_2p
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-$((20000 + RANDOM % 20000))}"
export JAX_PLATFORMS=cpu
pids=()
for id in 0 1; do
  python -m mmret.launch --coordinator_address="localhost:$port" --num_processes=2 \
    --process_id="$id" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
