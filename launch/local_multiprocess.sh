#!/usr/bin/env bash
# Several JAX processes on this machine, found through a coordinator on
# 127.0.0.1: one process per GPU of a node, or a multi-host rehearsal on CPU.
#
#   NPROC=8 PER_GPU=1 launch/local_multiprocess.sh \
#       --config=configs/cifar100.py --workdir=runs/c100
#   NPROC=2 CPU_DEVICES=2 launch/local_multiprocess.sh \
#       --config=configs/digits.py --workdir=runs/digits_2proc
#
# Environment: NPROC (default 2) processes; PER_GPU=1 gives process i only
# GPU i (JAX_LOCAL_DEVICE_IDS), otherwise each sees every local device;
# CPU_DEVICES=k runs on the CPU with k virtual devices per process; PORT
# (default: a free one); MODULE (default ban_jax.main, or ban_jax.tools.bench);
# LOG_DIR for processes 1.. (process 0 writes to this terminal). If one
# process fails, the others are stopped and the exit code is its own.
set -euo pipefail

NPROC=${NPROC:-2}
if [[ ! $NPROC =~ ^[1-9][0-9]*$ ]]; then
  echo "NPROC=$NPROC: set it to the number of processes (1, 2, ...)." >&2
  exit 2
fi
MODULE=${MODULE:-ban_jax.main}
PORT=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${LOG_DIR:-$(mktemp -d -t ban_jax_procs.XXXXXX)}
mkdir -p "$LOG_DIR"
if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM

for ((i = 0; i < NPROC; i++)); do
  env=(JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}" JAX_NUM_PROCESSES="$NPROC"
       JAX_PROCESS_ID="$i")
  if [[ "${PER_GPU:-0}" != 0 ]]; then env+=(JAX_LOCAL_DEVICE_IDS="$i"); fi
  if ((i == 0)); then
    env "${env[@]}" python3 -m "$MODULE" "$@" &
  else
    env "${env[@]}" python3 -m "$MODULE" "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
echo "Started $NPROC processes (coordinator 127.0.0.1:${PORT}); logs of" \
     "processes 1.. in $LOG_DIR." >&2

# Wait for all; the first failure stops the rest (they would otherwise wait
# for the dead process in their next collective until JAX's timeout).
status=0
for ((left = NPROC; left > 0; left--)); do
  wait -n && continue
  status=$?
  echo "A process failed (exit code $status); stopping the others." \
       "Logs: $LOG_DIR" >&2
  stop_all
  break
done
wait || true
exit "$status"
