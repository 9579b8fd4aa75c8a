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
#   MODULE=ban_jax.bench launch/tpu_pod.sh run --models=wrn28_10
#
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
  gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "${gcloud_flags[@]}" \
    --worker=all
}

command=${1:?usage: tpu_pod.sh setup | copy FILE | run ARGS...}
shift
case "$command" in
  setup)
    repo=$(git rev-parse --show-toplevel)
    staging=$(mktemp -d)
    trap 'rm -rf "$staging"' EXIT
    archive=$staging/ban_jax_src.tgz
    # One tar over the whole list (xargs could split it into several tars).
    (cd "$repo" && git ls-files -z | tar czf "$archive" --null -T -)
    to_all_workers "$archive" "~/ban_jax_src.tgz"
    jax_version=$(grep '^jax==' "$repo/requirements.txt" | cut -d= -f3)
    on_all_workers "mkdir -p ~/$REMOTE_DIR && tar xzf ~/ban_jax_src.tgz \
      -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && \
      python3 -m pip install -q -r requirements.txt -e . gcsfs && \
      python3 -m pip install -q 'jax[tpu]==$jax_version'"
    ;;
  copy)
    on_all_workers "mkdir -p ~/data"
    to_all_workers "${1:?copy needs a file}" "~/data/"
    ;;
  run)
    args=$(printf '%q ' "$@")
    # BAN_JAX_DISTRIBUTED=1: jax.distributed.initialize() reads the pod's
    # layout from the TPU metadata server.
    run="cd ~/$REMOTE_DIR && BAN_JAX_DISTRIBUTED=1 python3 -m $MODULE $args"
    if [[ -n "${DETACH:-}" ]]; then
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
