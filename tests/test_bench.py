"""`python -m ban_jax.tools.bench` on the CPU with tiny settings: its output."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax import config_file
from ban_jax import train
from ban_jax.tools import bench

PEER_KEYS = ("impl", "model", "mode", "batch", "img_per_s")


def test_bench_prints_json_lines_and_a_table(tmp_path, repo_root):
  # Unoptimised XLA code compiles twice as fast; only the output's form
  # is checked here, not the speed.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
             "--xla_backend_optimization_level=0")
  proc = subprocess.run(
      [sys.executable, "-m", "ban_jax.tools.bench", "--models=wrn10_1",
       "--batch_sizes=16", "--steps=2", "--warmup=1", "--image_size=8",
       "--num_examples=48", "--steps_per_call=2",
       f"--profile_dir={tmp_path}", "--profile_steps=1"],
      cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
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


def test_seeds_side_by_side_report_aggregate_and_per_seed_rates(repo_root):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
             "--xla_backend_optimization_level=0")
  proc = subprocess.run(
      [sys.executable, "-m", "ban_jax.bench", "--models=wrn10_1",
       "--batch_sizes=16", "--image_size=8", "--num_examples=48",
       # One step a call: the smallest program of two seeds to compile.
       "--steps_per_call=1", "--modes=epoch", "--seeds=2"],
      cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
  rows = [json.loads(line) for line in proc.stdout.splitlines()
          if line.startswith("{")]
  assert proc.returncode == 0 and len(rows) == 1, proc.stderr[-3000:]
  row = rows[0]
  assert row["mode"] == "epoch, 2 seeds" and row["seeds"] == 2
  # Two seeds' images in the epoch's time: twice one seed's rate. Both are
  # rounded to 0.1, so twice the rounded rate may be off by 0.1 + 0.05.
  assert row["img_per_s"] == pytest.approx(2 * row["img_per_s_per_seed"],
                                           abs=0.15 + 1e-6)
  assert "| ban_jax | wrn10_1 | epoch, 2 seeds | 16 |" in proc.stdout


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
    (["--seeds=0"], "--seeds=0 is too small."),
    (["--dtype=fp8"], "--dtype='fp8': use auto, float32, bfloat16, float16."),
    (["--config=configs/nope.py"],
     "--config='configs/nope.py' cannot be loaded: FileNotFoundError"),
    # Read before the benchmark: a typo here must not cost the table.
    (["--compare=nope.jsonl"], "--compare='nope.jsonl': [Errno 2] No such "
     "file or directory: 'nope.jsonl'. Pass the JSON lines"),
    (["--models=,"], "--models is empty."),
    (["--modes=,"], "--modes=',': use any of step, step+aug, epoch."),
    (["--warmup=-1"], "--warmup=-1 is too small."),
    (["--profile_steps=-1"], "--profile_steps=-1 is too small."),
    (["--layers_per_scan=-1"], "--layers_per_scan=-1 is too small."),
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
  # Without rows of ours, the peer's table alone.
  assert bench.table([], peer).splitlines()[2:] == [
      "| torch | densenet_bc100 | fp32 | 128 | 2,997.0 | - | - |",
      "| torch | resnet18 | fp32 | 128 | 11,649.0 | - | - |"]


def test_zero_means_none_or_the_default_for_these_flags():
  args = bench.parse_args(["--warmup=0", "--profile_steps=0",
                           "--steps_per_call=0", "--devices=0"])
  assert (args.warmup, args.profile_steps, args.steps_per_call,
          args.devices) == (0, 0, 0, 0)


def test_bench_config_is_the_peers_recipe():
  base = config_file.load(bench.DEFAULT_CONFIG)
  config = bench.bench_config(base, "resnet18", 256, "bfloat16", 4,
                              augment=True, xla_options="a=1")
  assert (config.model.name, config.model.dtype,
          config.model.dropout_rate) == ("resnet18", "bfloat16", 0.0)
  assert (config.batch_size, config.eval_batch_size, config.num_epochs,
          config.steps_per_call, config.checkpoint_every_steps,
          config.xla_options) == (256, 256, 1, 4, 0, "a=1")
  assert (config.data.augment, config.data.crop_padding) == (True, 4)
  assert (config.distill.loss, config.distill.temperature,
          config.distill.label_weight,
          config.distill.teacher_weight) == ("kd+label", 1.0, 1.0, 1.0)
  assert (config.optim.learning_rate, config.optim.momentum,
          config.optim.nesterov, config.optim.weight_decay,
          tuple(config.optim.lr_decay_epochs)) == (0.1, 0.9, True, 5e-4, ())
  assert not bench.bench_config(base, "resnet18", 256, "bfloat16", 4,
                                augment=False).data.augment
  assert base.batch_size != 256  # The base config is left as it was.


class _Device:
  """A device whose memory_stats() returns `stats` (or raises it)."""

  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    if isinstance(self.stats, Exception):
      raise self.stats
    return self.stats


def test_peak_memory_is_the_largest_over_the_devices_in_gb(monkeypatch):
  devices = [_Device({"peak_bytes_in_use": 1_500_000_000}),
             _Device({"peak_bytes_in_use": 2_345_678_901}),
             _Device({"bytes_in_use": 9_000_000_000}), _Device(None),
             _Device(RuntimeError("no stats"))]
  monkeypatch.setattr(jax, "local_devices", lambda: devices)
  assert bench.peak_memory_gb() == 2.346  # 10^9 bytes, not 2^30.
  del devices[:2]
  assert bench.peak_memory_gb() is None


class _Clock:
  """bench's `time`: advanced by the fakes below, not by real work."""

  def __init__(self):
    self.now = 100.0

  def perf_counter(self):
    return self.now


class _Executable:
  """A compiled call of `n` KD steps: 0.5 s and a loss of 1.5 per step."""

  def __init__(self, n, clock, calls):
    self.n, self.clock, self.calls = n, clock, calls

  def __call__(self, state, teacher_vars, images, labels, perm, rng):
    self.calls.append((self.n, np.asarray(perm)))
    self.clock.now += 0.5 * self.n
    return (state.replace(step=state.step + self.n),
            {"loss": jnp.float32(1.5 * self.n)})

  def memory_analysis(self):
    return types.SimpleNamespace(
        argument_size_in_bytes=1_500_000_000, output_size_in_bytes=500_000_000,
        temp_size_in_bytes=2_000_000_000, alias_size_in_bytes=750_000_000)


class _Trainer:
  """`train_steps(n).lower(...).compile()` takes 2 s on the clock."""

  batch_size = 16
  steps_per_epoch = 7
  epoch_order = staticmethod(train.GenerationTrainer.epoch_order)

  def __init__(self, clock, calls, steps_per_call):
    self.clock, self.calls, self.compiled = clock, calls, []
    self.config = types.SimpleNamespace(steps_per_call=steps_per_call,
                                        checkpoint_every_steps=0)

  def train_steps(self, n):
    def compile_():
      self.compiled.append(n)
      self.clock.now += 2.0
      return _Executable(n, self.clock, self.calls)
    return types.SimpleNamespace(
        lower=lambda *args: types.SimpleNamespace(compile=compile_))


def _fake_kd_bench(monkeypatch, steps_per_call=2):
  """A KDBench of batch 16 over fake compiled steps and a fake clock."""
  clock, calls = _Clock(), []
  monkeypatch.setattr(bench, "time", clock)
  trainer = _Trainer(clock, calls, steps_per_call)
  data = types.SimpleNamespace(train_images=None, train_labels=None,
                               num_train=7 * 16 + 5)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=None,
                           batch_stats=None, opt_state=None)
  kd = bench.KDBench({False: trainer, True: trainer}, data, state,
                     teacher_vars=None, name="m_b16")
  return kd, trainer, calls


def test_step_timing_of_whole_calls_after_the_warmup(monkeypatch):
  kd, trainer, calls = _fake_kd_bench(monkeypatch)
  result = kd.steps(False, steps=5, warmup=1, steps_per_call=2)
  # 5 steps round up to 3 calls of 2; the 1 warm-up step to a call before.
  assert [n for n, _ in calls] == [2] * 4
  for _, perm in calls:  # The fixed order of the step modes.
    np.testing.assert_array_equal(perm, kd.perm)
  assert result == {"img_per_s": 6 * 16 / 3.0, "steps": 6, "seconds": 3.0,
                    "compile_s": 2.0, "program_mem_gb": 3.25, "loss": 1.5}
  assert int(kd.state.step) == 8
  # The compiled step is kept, with its compile time.
  assert kd.steps(False, steps=2, warmup=0, steps_per_call=2)[
      "compile_s"] == 2.0
  assert trainer.compiled == [2]


def test_epoch_timing_runs_the_remainder_as_a_shorter_call(monkeypatch):
  kd, trainer, calls = _fake_kd_bench(monkeypatch, steps_per_call=3)
  result = kd.epoch()
  # 7 steps: calls of 3, 3 and 1; each size compiled and run once first,
  # on the fixed order, outside the timing. Then the state moves on to the
  # next epoch's first step (4 -> 7), whose new order the epoch runs.
  assert sorted(trainer.compiled) == [1, 3]
  assert [n for n, _ in calls] == [1, 3, 3, 3, 1]
  for _, perm in calls[:2]:
    np.testing.assert_array_equal(perm, kd.perm)
  epoch_1 = train.epoch_permutation(jax.random.fold_in(jax.random.key(4), 1),
                                    117)
  for _, perm in calls[2:]:
    np.testing.assert_array_equal(perm, epoch_1)
  assert int(kd.state.step) == 14
  assert result == {"img_per_s": 7 * 16 / 3.5, "steps": 7, "seconds": 3.5,
                    "compile_s": 4.0, "loss": 1.5}


def test_main_rows_table_and_exit_status(monkeypatch, tmp_path, capsys):
  made, profiled, initialized = [], [], []

  class FakeKDBench:
    """Fixed numbers; batch 32 fails to build, the +aug mode to run."""

    def __init__(self, data):
      self.data = data

    @classmethod
    def build(cls, base, model, batch, dtype, steps_per_call, data, mesh,
              xla_options, profile_dir, profile_steps,
              float32_classifier):
      del base, mesh
      assert float32_classifier
      made.append((model, batch, dtype, steps_per_call, data.num_classes,
                   data.train_images.shape, data.test_images.shape[0],
                   xla_options, profile_dir, profile_steps))
      if batch == 32:
        raise ValueError("too big")
      return cls(data)

    def steps(self, augment, steps, warmup, steps_per_call):
      assert (steps, warmup, steps_per_call) == (5, 1, 10)
      if augment:
        raise RuntimeError("x" * 600)
      return {"img_per_s": 1234.5678, "steps": 12, "seconds": 0.15561,
              "compile_s": 2.34567, "program_mem_gb": 0.0123456,
              "loss": 4.56789}

    def epoch(self):
      return {"img_per_s": 999.96, "steps": 3, "seconds": 0.05,
              "compile_s": 0.0, "loss": 2.0}

    def profile(self, augment, steps_per_call):
      profiled.append((augment, steps_per_call))

  monkeypatch.setattr(bench, "KDBench", FakeKDBench)
  monkeypatch.setattr(bench, "peak_memory_gb", lambda: 1.25)
  monkeypatch.setattr(bench.distributed, "initialize",
                      lambda *args: initialized.append(args))
  peer = tmp_path / "peer.jsonl"
  peer.write_text(
      "peer_torch on cuda\n"
      '{"impl": "torch", "model": "wrn10_1", "mode": "fp32", "batch": 16, '
      '"img_per_s": 500.0}\n'
      '{"impl": "torch", "model": "wrn10_1", "mode": "fp32", "batch": 64, '
      '"img_per_s": 900.0}\n')
  with pytest.raises(SystemExit) as stop:
    bench.main(["--models=wrn10_1", "--batch_sizes=16,32", "--steps=5",
                "--warmup=1", "--image_size=8", "--num_examples=48",
                "--num_classes=10", "--devices=2", "--profile_steps=1",
                f"--profile_dir={tmp_path}", f"--compare={peer}"])
  assert stop.value.code == 1  # Some rows are errors.
  assert initialized == [(None, None, None)]
  # The config's steps_per_call (10) by default.
  # One batch of test images: the benchmark evaluates nothing.
  assert made == [("wrn10_1", batch, "auto", 10, 10, (48, 8, 8, 3), batch,
                   "", str(tmp_path), 1) for batch in (16, 32)]
  assert profiled == [(False, 10)]  # Step modes that ran, after their row.
  out = capsys.readouterr().out
  rows = [json.loads(line) for line in out.splitlines()
          if line.startswith("{")]

  def row(batch, mode, **measured):
    return {"impl": "ban_jax", "model": "wrn10_1", "batch": batch,
            "dtype": "fp32", "devices": 2,
            "device_kind": jax.devices()[0].device_kind,
            "steps_per_call": 10, "image_size": 8, "classifier": "fp32",
            "mode": mode, **measured}

  assert rows == [
      row(16, "fp32", img_per_s=1234.6, steps=12, seconds=0.156,
          compile_s=2.346, program_mem_gb=0.012, loss=4.568,
          peak_mem_gb=1.25),
      row(16, "fp32+aug", error="RuntimeError: " + "x" * 486),
      row(16, "epoch", img_per_s=1000.0, steps=3, seconds=0.05,
          compile_s=0.0, loss=2.0, num_examples=48, peak_mem_gb=1.25),
      row(32, "fp32", error="ValueError: too big"),
      row(32, "fp32+aug", error="ValueError: too big"),
      row(32, "epoch", error="ValueError: too big")]
  assert out.split("\n\n")[1].splitlines()[2:] == [
      "| ban_jax | wrn10_1 | fp32 | 16 | 1,234.6 | 2.3 | 1.25 |",
      "| ban_jax | wrn10_1 | fp32+aug | 16 | error: RuntimeError: "
      + "x" * 66 + " |",
      "| ban_jax | wrn10_1 | epoch | 16 | 1,000.0 | 0.0 | 1.25 |",
      "| ban_jax | wrn10_1 | fp32 | 32 | error: ValueError: too big |",
      "| ban_jax | wrn10_1 | fp32+aug | 32 | error: ValueError: too big |",
      "| ban_jax | wrn10_1 | epoch | 32 | error: ValueError: too big |",
      "| torch | wrn10_1 | fp32 | 16 | 500.0 | - | - |"]


def _kd_bench_noting(note):
  """A KDBench class that calls note(base, model, dtype, float32_classifier) for
  each benchmark built and times every step mode at 100 img/s."""

  class FakeKDBench:

    def __init__(self, data):
      self.data = data

    @classmethod
    def build(cls, base, model, batch, dtype, steps_per_call, data, mesh,
              *args, float32_classifier=True, **kwargs):
      del batch, steps_per_call, mesh, kwargs
      if args:  # float32_classifier is build's last positional argument.
        float32_classifier = args[-1]
      note(base, model, dtype, float32_classifier)
      return cls(data)

    def steps(self, augment, steps, warmup, steps_per_call):
      del augment, steps, warmup, steps_per_call
      return {"img_per_s": 100.0}

  return FakeKDBench


def test_bf16_classifier_adds_the_same_modes_with_the_low_classifier(
    monkeypatch, capsys):
  made = []
  monkeypatch.setattr(bench, "KDBench", _kd_bench_noting(
      lambda base, model, dtype, float32_classifier: made.append(
          (model, dtype, float32_classifier))))
  bench.main(["--models=wrn10_1,densenet16_4", "--batch_sizes=16",
              "--modes=step", "--dtype=bfloat16", "--bf16_classifier",
              "--image_size=8", "--num_examples=48", "--num_classes=10",
              "--devices=2", "--steps_per_call=1"])
  # DenseNet has no bfloat16 classifier: its comparison row is left out.
  assert made == [("wrn10_1", "bfloat16", True),
                  ("wrn10_1", "bfloat16", False),
                  ("densenet16_4", "bfloat16", True)]
  captured = capsys.readouterr()
  rows = [json.loads(line) for line in captured.out.splitlines()
          if line.startswith("{")]
  assert [(r["model"], r["mode"], r["classifier"]) for r in rows] == [
      ("wrn10_1", "bf16", "fp32"),
      ("wrn10_1", "bf16, bf16 classifier", "bf16"),
      ("densenet16_4", "bf16", "fp32")]
  assert "densenet16_4 has no bfloat16-classifier option" in captured.err


def test_project_defaults_to_the_configs_models_and_batch():
  config = "configs/cifar100.py:model=wrn28_1,student=densenet90_60"
  args = bench.parse_args([f"--config={config}", "--project"])
  assert (args.models, args.batch_sizes) == (
      "wrn28_1,densenet90_60", str(args.base_config.batch_size))
  # Without --project, the peer's models at 128, as before.
  args = bench.parse_args([f"--config={config}"])
  assert (args.models, args.batch_sizes) == (
      "wrn28_10,resnet18,densenet100_12", "128")


def test_project_prints_the_whole_chains_hours(monkeypatch, capsys):

  class FakeKDBench:
    """A tiny model's epoch: 5 steps in 0.5 s, 0.1 s a step."""

    def __init__(self, data):
      self.data = data

    @classmethod
    def build(cls, base, model, batch, dtype, steps_per_call, data, *args):
      del base, model, batch, dtype, steps_per_call, args
      return cls(data)

    def epoch(self):
      return {"img_per_s": 160.0, "steps": 5, "seconds": 0.5,
              "compile_s": 0.0, "loss": 2.0}

  monkeypatch.setattr(bench, "KDBench", FakeKDBench)
  monkeypatch.setattr(bench.distributed, "initialize", lambda *args: None)
  bench.main(["--config=configs/cifar100.py:model=densenet112_33,"
              "seeds=0/1", "--project", "--models=wrn10_1",
              "--batch_sizes=64", "--modes=epoch", "--image_size=8",
              "--num_examples=64", "--num_classes=10"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  # 2 seeds x 4 generations x 200 epochs x (50,000 // 64 = 781) steps
  # x 0.1 s = 124,960 s = 34.71 h.
  assert last == (
      "wrn10_1 at batch 64 (epoch rate): 2 seed(s) x 4 generations x 200 "
      "epochs x 781 steps x 0.1000 s = 34.71 h for the whole chain of "
      "cifar100 (evaluation and compilation excluded).")
  config = config_file.load("configs/cifar100.py", "model=densenet112_33")
  assert bench.projection(config, 64, 0.1)["hours"] == pytest.approx(
      4 * 200 * 781 * 0.1 / 3600)


def test_layers_per_scan_reaches_the_densenets_and_names_their_rows(
    monkeypatch, capsys):
  made = []
  monkeypatch.setattr(bench, "KDBench", _kd_bench_noting(
      lambda base, model, dtype, float32_classifier: made.append(
          (model, base.model.layers_per_scan))))
  bench.main(["--models=densenet16_4,wrn10_1", "--batch_sizes=16",
              "--modes=step", "--layers_per_scan=4", "--image_size=8",
              "--num_examples=48", "--num_classes=10", "--devices=2",
              "--steps_per_call=1"])
  assert made == [("densenet16_4", 4), ("wrn10_1", 4)]
  out = capsys.readouterr().out
  rows = [json.loads(line) for line in out.splitlines()
          if line.startswith("{")]
  # Only the DenseNet's row says it scanned: the WRN has nothing to scan.
  assert [r.get("layers_per_scan") for r in rows] == [4, None]
  assert "| ban_jax | densenet16_4 (scan 4) | fp32 | 16 |" in out
  assert "| ban_jax | wrn10_1 | fp32 | 16 |" in out
