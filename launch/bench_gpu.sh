#!/bin/bash
# The PyTorch peer and ban_jax's KD train step, side by side, on one GPU.
#
# Run from the repository root, with the peer's files in $PEER_DIR
# (default .peer: `mkdir -p .peer && cp ../shared/bench/*.py .peer/`):
#
#   OUT=bench_out bash launch/bench_gpu.sh
#
# Writes $OUT/env.txt, peer.jsonl, ours.jsonl (JSON lines) and table.md.
# Every stage has a time limit, so one slow stage costs only its own rows;
# the exit code is 1 if any stage failed or ran out of time (named at the
# end), 0 if all went through.
# On an H200 (2026-11-28) the stages took about: peer eager ResNet-18 and
# DenseNet 90 s, peer torch.compile WRN-28-10 100 s, ban_jax ResNet-18 +
# WRN-28-10 80 s, DenseNet-BC-100 at least 90 s (its train step compiles in
# about 76 s): 6-8 minutes; the limits add up to 9 (under a device call's
# 10).
# Wheels in .whl/ (ml_collections, where the image lacks it) are installed
# into /tmp/site first. For a dry run on a CPU, shrink everything:
#   MODELS="wrn10_1 resnet20" PEER_EAGER=resnet18 PEER_COMPILE= \
#   BENCH_ARGS="--image_size=8 --num_examples=64 --batch_sizes=16 --steps=2
#   --warmup=1 --steps_per_call=2" OUT=/tmp/b bash launch/bench_gpu.sh
set -u
OUT=${OUT:-bench_out}
PEER_DIR=${PEER_DIR:-.peer}
# Each word is one ban_jax.tools.bench process (one time limit each).
MODELS=${MODELS:-resnet18,wrn28_10 densenet100_12}
# The peer's best mode per model (../shared/bench/README.md): eager fp32
# for ResNet-18 and DenseNet (bf16 is run beside it), torch.compile for WRN.
PEER_EAGER=${PEER_EAGER-resnet18,densenet_bc100}
PEER_COMPILE=${PEER_COMPILE-wrn28_10}
BENCH_ARGS=${BENCH_ARGS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
stage() { echo "[$(( $(date +%s) - start )) s] $*"; }
failed=()
check() {  # after a stage: its exit code (124: out of time) is remembered
  local rc=$?
  if ((rc != 0)); then failed+=("$1 (exit code $rc)"); fi
}

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit \
    --format=csv,noheader
  python3 -c "import jax, flax, torch; print('jax', jax.__version__, \
'flax', flax.__version__, 'torch', torch.__version__)"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stage "peer: eager fp32 and bf16"
: > "$OUT/peer.jsonl"; : > "$OUT/peer.err"
if [ -n "$PEER_EAGER" ]; then
  timeout 100 python3 "$PEER_DIR/peer_torch.py" --models "$PEER_EAGER" \
    --modes fp32,bf16 >> "$OUT/peer.jsonl" 2>> "$OUT/peer.err"
  check "peer eager $PEER_EAGER"
fi
stage "peer: torch.compile"
if [ -n "$PEER_COMPILE" ]; then
  timeout 130 python3 "$PEER_DIR/peer_torch.py" --models "$PEER_COMPILE" \
    --modes compile >> "$OUT/peer.jsonl" 2>> "$OUT/peer.err"
  check "peer compile $PEER_COMPILE"
fi

: > "$OUT/ours.log"
for models in $MODELS; do
  stage "ban_jax: $models"
  # DenseNet-BC-100's two step programs take about 76 + 45 s to compile.
  case $models in *densenet*) limit=200;; *) limit=120;; esac
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags.
  timeout $limit python3 -m ban_jax.tools.bench --models="$models" $BENCH_ARGS \
    >> "$OUT/ours.log" 2>&1
  check "ban_jax $models"
done
grep '^{' "$OUT/ours.log" > "$OUT/ours.jsonl"

python3 - "$OUT" <<'EOF'
import json, os, sys
from ban_jax.tools import bench
out = sys.argv[1]
def read(name):
  with open(os.path.join(out, name)) as f:
    return [json.loads(l) for l in f if l.startswith("{")]
text = bench.table(read("ours.jsonl"), read("peer.jsonl"))
with open(os.path.join(out, "table.md"), "w") as f:
  f.write(text + "\n")
print(text)
EOF
check table
stage "done"
if ((${#failed[@]})); then
  echo "Failed: ${failed[*]}; see $OUT/peer.err and $OUT/ours.log." >&2
  exit 1
fi
