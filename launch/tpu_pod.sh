#!/usr/bin/env bash
# TPU VM pod slice: the same command on every worker; jax.distributed finds the other hosts from
# the TPU metadata (TPU_WORKER_HOSTNAMES). Usage, from your workstation:
#   launch/tpu_pod.sh TPU_NAME ZONE --config configs/pretrain.py:base --workdir gs://bucket/run1
# The repository must already be cloned and installed at ~/mmret on every worker
# (pip install -e . ; TPU wheels: pip install "jax[tpu]").
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 TPU_NAME ZONE [mmret.launch flags...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; shift 2
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd ~/mmret && python -m mmret.launch $args"
