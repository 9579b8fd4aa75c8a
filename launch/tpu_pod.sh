#!/usr/bin/env bash
# A Cloud TPU pod slice (TPU VMs): the same command on every worker
# (--worker=all), one JAX process per host, found through the TPU metadata.
#
#   export TPU_NAME=ban-v4-32 ZONE=us-central2-b [PROJECT=my-project]
#   launch/tpu_pod.sh setup                      # code + packages, all hosts
#   launch/tpu_pod.sh copy cifar-100-python.tar.gz   # -> ~/data/ on all hosts
#   launch/tpu_pod.sh run --config=configs/cifar100.py \
#       --config.data.archive_path=../data --workdir=gs://BUCKET/runs/c100
#   DETACH=1 launch/tpu_pod.sh run ...           # survives a dropped ssh;
#                                                # log in ~/ban_jax.log
#   MODULE=ban_jax.tools.bench launch/tpu_pod.sh run --models=wrn28_10
#
# REMOTE_DIR (default ban_jax) is the checkout's folder in each worker's
# home; PROJECT sets the gcloud project.
# --worker=all needs the key gcloud made in your ssh agent first:
# `ssh-add ~/.ssh/google_compute_engine`.
# The workdir should be a gs:// bucket every host can write (Orbax writes
# the checkpoints from all hosts; process 0 writes the results). `setup`
# copies the tracked files of this checkout (with uncommitted edits).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
REMOTE_DIR=${REMOTE_DIR:-ban_jax}
MODULE=${MODULE:-ban_jax.main}
gcloud_flags=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then gcloud_flags+=(--project="$PROJECT"); fi

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" \
    --worker=all --command="$1"
}

to_all_workers() {  # local file -> remote path, on every worker
  # A relative remote path is in the worker's home directory.
  gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "${gcloud_flags[@]}" \
    --worker=all
}

command=${1:?usage: tpu_pod.sh setup | copy FILE | run ARGS...}
shift
case "$command" in
  setup)
    # This script's checkout, wherever it is run from.
    repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
    jax_version=$(sed -n 's/^jax==//p' "$repo/requirements.txt")
    : "${jax_version:?no jax==VERSION line in $repo/requirements.txt}"
    staging=$(mktemp -d)
    trap 'rm -rf "$staging"' EXIT
    archive=$staging/ban_jax_src.tgz
    # One tar over the whole list (xargs could split it into several tars);
    # tracked files deleted in the working tree are left out (tar would
    # stop at them).
    (cd "$repo" && git ls-files -z | while IFS= read -r -d '' f; do
       if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi
     done | tar czf "$archive" --null -T -)
    to_all_workers "$archive" ban_jax_src.tgz
    on_all_workers "mkdir -p ~/$REMOTE_DIR && tar xzf ~/ban_jax_src.tgz \
      -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && \
      python3 -m pip install -q -r requirements.txt -e . gcsfs && \
      python3 -m pip install -q 'jax[tpu]==$jax_version'"
    ;;
  copy)
    file=${1:?copy needs a file}
    if [[ ! -f $file ]]; then echo "copy: no file $file" >&2; exit 2; fi
    on_all_workers "mkdir -p ~/data"
    to_all_workers "$file" data/
    ;;
  run)
    # No arguments: nothing (printf would still print one quoted '').
    args=""
    if (($#)); then args=$(printf '%q ' "$@"); fi
    # BAN_JAX_DISTRIBUTED=1: jax.distributed.initialize() reads the pod's
    # layout from the TPU metadata server.
    run="cd ~/$REMOTE_DIR && BAN_JAX_DISTRIBUTED=1 python3 -m $MODULE $args"
    if [[ "${DETACH:-0}" != 0 ]]; then
      # %q quotes the whole command for the remote shell, quotes in it too.
      run="nohup bash -c $(printf %q "$run") > ~/ban_jax.log 2>&1 < /dev/null &"
    fi
    on_all_workers "$run"
    ;;
  *)
    echo "unknown command $command: use setup, copy or run" >&2
    exit 2
    ;;
esac
