#!/usr/bin/env bash
# One process driving every GPU of this machine: the mesh spans all visible
# devices and the global batch (config.batch_size) is split over them.
#
#   launch/single_node.sh --config=configs/cifar100.py --workdir=runs/c100
#   GPUS=0,1,2,3 launch/single_node.sh --config=configs/cifar100.py \
#       --workdir=runs/c100_4gpu
#   MODULE=ban_jax.tools.bench launch/single_node.sh --models=resnet18
#
# Environment: GPUS (default: all) restricts the devices; MODULE (default
# ban_jax.main). Extra arguments go to the module.
set -euo pipefail
if [[ -n "${GPUS:-}" ]]; then
  export CUDA_VISIBLE_DEVICES="$GPUS"
fi
# Not a multi-process job even inside a SLURM allocation.
export BAN_JAX_DISTRIBUTED=0
exec python3 -m "${MODULE:-ban_jax.main}" "$@"
