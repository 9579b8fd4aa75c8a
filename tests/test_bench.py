"""`python -m ban_jax.bench` on the CPU with tiny settings: its output."""

import json
import os
import subprocess
import sys

import pytest

from ban_jax import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_KEYS = ("impl", "model", "mode", "batch", "img_per_s")


def test_bench_prints_json_lines_and_a_table(tmp_path):
  # Unoptimised XLA code compiles twice as fast; only the output's form
  # is checked here, not the speed.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
             "--xla_backend_optimization_level=0")
  proc = subprocess.run(
      [sys.executable, "-m", "ban_jax.bench", "--models=wrn10_1",
       "--batch_sizes=16", "--steps=2", "--warmup=1", "--image_size=8",
       "--num_examples=48", "--steps_per_call=2",
       f"--profile_dir={tmp_path}", "--profile_steps=1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  rows = [json.loads(line) for line in lines]
  good = [r for r in rows if r["model"] == "wrn10_1"]
  assert [r["mode"] for r in good] == ["fp32", "fp32+aug", "epoch"], (
      proc.stdout + proc.stderr[-3000:])
  assert len(good) == len(rows) and proc.returncode == 0
  for row in good:
    assert "error" not in row, row
    for key in PEER_KEYS + ("compile_s", "peak_mem_gb", "loss"):
      assert key in row, (key, row)
    assert row["impl"] == "ban_jax" and row["batch"] == 16
    assert row["img_per_s"] > 0 and row["devices"] == 2
    assert row["peak_mem_gb"] is None  # CPU devices keep no memory stats.
  assert good[-1]["steps"] == 48 // 16
  assert "| ban_jax | wrn10_1 | epoch | 16 |" in proc.stdout
  # --profile_dir: each compiled step's HLO, and a trace per step mode.
  for name in ("wrn10_1_b16_bare_x2", "wrn10_1_b16_aug_x2"):
    assert "ENTRY" in (tmp_path / f"{name}.hlo.txt").read_text()
    assert list((tmp_path / name).glob("plugins/profile/*/*.trace.json.gz"))


@pytest.mark.parametrize("flags, message", [
    (["--models=wrn10_1,nope"], "--models: Unknown model 'nope'"),
    (["--modes=step,bogus"],
     "--modes='step,bogus': use any of step, step+aug, epoch."),
    (["--batch_sizes=128,big"], "--batch_sizes='128,big': use integers"),
    (["--steps=0"], "--steps=0 is too small."),
    (["--batch_sizes=128,0"],
     "--batch_sizes='128,0': use positive integers, e.g. 128,256."),
    (["--steps_per_call=-1"], "--steps_per_call=-1 is too small."),
    (["--devices=-1"], "--devices=-1 is too small."),
    (["--dtype=fp8"], "--dtype='fp8': use auto, float32, bfloat16, float16."),
    (["--config=configs/nope.py"],
     "--config='configs/nope.py' cannot be loaded: FileNotFoundError"),
    # Read before the benchmark: a typo here must not cost the table.
    (["--compare=nope.jsonl"], "--compare='nope.jsonl': [Errno 2] No such "
     "file or directory: 'nope.jsonl'. Pass the JSON lines"),
])
def test_bad_flags_stop_before_any_compute(capsys, flags, message):
  with pytest.raises(SystemExit) as stop:
    bench.parse_args(flags)
  assert stop.value.code == 2
  assert message in capsys.readouterr().err


def test_an_error_row_is_one_table_cell():
  rows = [{"impl": "ban_jax", "model": "wrn28_10", "mode": "bf16",
           "batch": 4096, "error": "XlaRuntimeError: RESOURCE_EXHAUSTED:\n"
                                   "  Out of memory | allocating 9 GiB"}]
  assert bench.table(rows).splitlines()[-1] == (
      "| ban_jax | wrn28_10 | bf16 | 4096 | error: XlaRuntimeError: "
      "RESOURCE_EXHAUSTED: Out of memory / allocating 9 GiB |")


def test_table_adds_matching_peer_rows():
  ours = [{"impl": "ban_jax", "model": "densenet100_12", "mode": "bf16",
           "batch": 128, "img_per_s": 7000.0, "compile_s": 30.0,
           "peak_mem_gb": 3.5}]
  peer = [{"impl": "torch", "model": "densenet_bc100", "mode": "fp32",
           "batch": 128, "img_per_s": 2997.0},
          {"impl": "torch", "model": "resnet18", "mode": "fp32",
           "batch": 128, "img_per_s": 11649.0}]
  text = bench.table(ours, peer)
  assert "| ban_jax | densenet100_12 | bf16 | 128 | 7,000.0 | 30.0 | 3.50 |" in text
  assert "| torch | densenet_bc100 | fp32 | 128 | 2,997.0 | - | - |" in text
  assert "resnet18" not in text
