#!/bin/bash
# The PyTorch peer and ban_jax's KD train step, side by side, on one GPU.
#
# Run from the repository root, with the peer's files in $PEER_DIR
# (default .peer: `mkdir -p .peer && cp ../shared/bench/*.py .peer/`):
#
#   bash launch/bench_gpu.sh            # the table against the peer
#   PART=2 bash launch/bench_gpu.sh     # the scanned DenseNets
#   PART=3 bash launch/bench_gpu.sh     # seeds side by side
#
# Writes $OUT/env.txt, peer.jsonl, ours.jsonl (JSON lines) and table.md;
# OUT is bench_out by default, bench_out_part<N> for PART=N.
# Every stage has a time limit, so one slow stage costs only its own rows;
# the exit code is 1 if any stage failed or ran out of time (named at the
# end), 0 if all went through. Everything runs at batch 128 (the peer's
# default), the DenseNets of ban_jax at 64 as well.
# On an H200 (2026-11-28) the stages took about: peer eager ResNet-18 and
# DenseNet-BC-100 90 s, peer torch.compile WRN-28-10 100 s, ban_jax
# ResNet-18 + WRN-28-10 80 s (three modes; two here), DenseNet-BC-100 at
# least 90 s (a step program compiles in 45-76 s). DenseNet-BC-112-33 is
# UNMEASURED, the peer's and ours: its limits (60 s, 110 s) are guesses.
# The limits add up to 565 s, under 9.5 minutes (a device call has 10);
# PART=2's to 225 s.
# To fit, the DenseNets of ban_jax run the `+aug` step alone (one compile
# per batch; the epoch mode would add one for its last short call at 64).
#
# PART=3, a third call, runs seeds side by side
# (config.parallel_seeds; README, "Seeds side by side"): for each model of
# SEED_MODELS (default resnet20 wrn16_2 wrn28_1 wrn28_10) at batch 128, the
# `+aug` step with SEED_COUNTS seeds in one program (default 1 4 8), one
# process each: 12 stages, whose limits add up to 525 s. UNMEASURED on a
# GPU so far: the limits (35 s a small model, 60-80 s for WRN-28-10) are
# guesses from the compile times above. ours.jsonl then holds rows with
# `seeds`, `img_per_s` (all seeds) and `img_per_s_per_seed`.
# Wheels in .whl/ (ml_collections, where the image lacks it) are installed
# into /tmp/site first. For a dry run on a CPU, shrink everything:
#   MODELS="wrn10_1 resnet20:16,8" PEER_EAGER=resnet18 PEER_COMPILE= \
#   BENCH_ARGS="--image_size=8 --num_examples=64 --steps=2
#   --warmup=1 --steps_per_call=2" OUT=/tmp/b bash launch/bench_gpu.sh
set -u
PART=${PART:-1}
OUT=${OUT:-bench_out$( ((PART == 1)) || echo "_part$PART")}
PEER_DIR=${PEER_DIR:-.peer}
# Each word is one ban_jax.tools.bench process (one time limit each):
# MODELS[:BATCHES[:MODES[:FLAGS]]], comma-separated lists (default 128, all
# modes, no more flags).
# PART=1 (the default) is the table against the peer; PART=2, a second
# call of its own, what has no peer row: the DenseNets with their layers
# scanned in groups of 8 (model.layers_per_scan), to see whether the scan
# buys the compile time it does on the CPU.
case $PART in
  1) DEFAULT_MODELS="resnet18,wrn28_10:128:step+aug,epoch
       densenet100_12:128,64:step+aug densenet112_33:128,64:step+aug"
     DEFAULT_PEER_EAGER="resnet18,densenet_bc100 densenet_bc112_33"
     DEFAULT_PEER_COMPILE=wrn28_10;;
  2) DEFAULT_MODELS="densenet100_12:128:step+aug:--layers_per_scan=8
       densenet112_33:128:step+aug:--layers_per_scan=8"
     DEFAULT_PEER_EAGER='' DEFAULT_PEER_COMPILE='';;
  3) DEFAULT_MODELS='' DEFAULT_PEER_EAGER='' DEFAULT_PEER_COMPILE='';;
  *) echo "PART=$PART: use 1 (the table against the peer), 2 (scanned" \
       "DenseNets) or 3 (seeds side by side)." >&2; exit 2;;
esac
MODELS=${MODELS:-$DEFAULT_MODELS}
# The peer's best mode per model (../shared/bench/README.md): eager fp32
# for ResNet-18 and the DenseNets (bf16 is run beside it), torch.compile
# for WRN. Each word is one peer process.
PEER_EAGER=${PEER_EAGER-$DEFAULT_PEER_EAGER}
PEER_COMPILE=${PEER_COMPILE-$DEFAULT_PEER_COMPILE}
BENCH_ARGS=${BENCH_ARGS:-}
SEED_MODELS=${SEED_MODELS:-resnet20 wrn16_2 wrn28_1 wrn28_10}
SEED_COUNTS=${SEED_COUNTS:-1 4 8}
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

# A stage's time limit, by its kind (peer, compile, ours) and models.
limit() {
  case $1:$2 in
    peer:*densenet_bc112_33*) echo 60;; peer:*densenet_bc100*) echo 100;;
    compile:*) echo 110;;
    ours:*densenet112_33*) echo 110;; ours:*densenet100_12*) echo 115;;
    seeds:wrn28_10:1) echo 60;; seeds:wrn28_10:4) echo 70;;
    seeds:wrn28_10:*) echo 80;; seeds:*) echo 35;;
    *) echo 70;;
  esac
}
: > "$OUT/peer.jsonl"; : > "$OUT/peer.err"
for models in $PEER_EAGER; do
  stage "peer: eager fp32 and bf16: $models"
  timeout "$(limit peer "$models")" python3 "$PEER_DIR/peer_torch.py" \
    --models "$models" --modes fp32,bf16 >> "$OUT/peer.jsonl" \
    2>> "$OUT/peer.err"
  check "peer eager $models"
done
for models in $PEER_COMPILE; do
  stage "peer: torch.compile: $models"
  timeout "$(limit compile "$models")" python3 "$PEER_DIR/peer_torch.py" \
    --models "$models" --modes compile >> "$OUT/peer.jsonl" \
    2>> "$OUT/peer.err"
  check "peer compile $models"
done

: > "$OUT/ours.log"
for word in $MODELS; do
  IFS=: read -r models batches modes flags <<< "$word"
  stage "ban_jax: $models at ${batches:-128}${modes:+ ($modes)}${flags:+" $flags"}"
  args=(--models="$models" --batch_sizes="${batches:-128}")
  if [ -n "$modes" ]; then args+=(--modes="$modes"); fi
  if [ -n "$flags" ]; then
    IFS=, read -r -a more <<< "$flags"
    args+=("${more[@]}")
  fi
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags.
  timeout "$(limit ours "$models")" python3 -m ban_jax.tools.bench \
    "${args[@]}" $BENCH_ARGS >> "$OUT/ours.log" 2>&1
  check "ban_jax $models at ${batches:-128}"
done
if ((PART == 3)); then
  for model in $SEED_MODELS; do
    for seeds in $SEED_COUNTS; do
      stage "ban_jax: $model at 128, $seeds seed(s) side by side"
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags.
      timeout "$(limit seeds "$model:$seeds")" python3 -m ban_jax.tools.bench \
        --models="$model" --batch_sizes=128 --modes=step+aug \
        --seeds="$seeds" $BENCH_ARGS >> "$OUT/ours.log" 2>&1
      check "ban_jax $model with $seeds seed(s)"
    done
  done
fi
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
