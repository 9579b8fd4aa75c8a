r"""Images/second of the knowledge-distillation train step, as users run it.

One KD step is what `GenerationTrainer.train_steps` compiles for generation
g >= 1: the batch gathered from the device-resident train set (plus random
crop + flip when augmenting), the teacher's inference-mode forward pass, the
student's forward and backward pass with the label + soft-target loss
(`kd+label`, T = 1: the loss of the PyTorch peer benchmark, `peer_torch.py`,
which launch/bench_gpu.sh runs), and the SGD-Nesterov update with weight
decay. The data are random CIFAR-shaped uint8 images with 100 classes, on
the device(s); every device of the mesh takes part (data parallel), so
`batch` is the global batch.

  python -m ban_jax.tools.bench                          # the three peer models
  python -m ban_jax.tools.bench --models=resnet18 --batch_sizes=128,512 \
      --steps_per_call=4
  # On a CPU, tiny:
  python -m ban_jax.tools.bench --models=wrn10_1 --batch_sizes=16 --steps=3 \
      --warmup=1 --image_size=8 --num_examples=64

Modes, for each model and batch size:
* `<dtype>` (`bf16` on GPU/TPU, `fp32` on CPU, or `--dtype`): the bare step
  on a fixed permutation, no augmentation;
* `<dtype>+aug`: the same with the on-device crop + flip;
* `epoch`: one whole epoch with augmentation, run by `train.run_epoch`, the
  code `train.fit` runs (a new permutation, then `steps_per_epoch` steps in
  calls of `--steps_per_call`, then the epoch's metrics fetched to the
  host), no checkpoint or eval.

The classifier (pool + final linear layer) always computes in float32
(ban_jax/models/common.py). `--bf16_classifier` adds, for each model that
can, every mode again with the classifier in the compute dtype, marked
`<mode>, bf16 classifier` (key `classifier` in the JSON): the two rows'
difference is what the float32 classifier costs.

Output: one JSON object a line with the keys of peer_torch.py (`impl`,
`model`, `mode`, `batch`, `img_per_s`) plus `compile_s` (lowering and
compiling the step), `peak_mem_gb` (the device's peak bytes in use so far in
this process, from `memory_stats()`; null where the backend has none, e.g.
CPU; it never goes down, so run one model per call to read each model's
peak), `program_mem_gb` (XLA's own account of the compiled step: arguments
+ outputs + temporaries - donated), `loss`, `devices`, `device_kind`; then a
table. `--compare=peer.jsonl` adds the peer's lines (same model, batch) to
the table. With several processes (see ban_jax/runtime/distributed.py)
only process 0 prints. Side by side with the peer, in one device call:

  python3 .peer/peer_torch.py --models wrn28_10 --modes compile > peer.jsonl
  python3 -m ban_jax.tools.bench --models=wrn28_10 --compare=peer.jsonl

Steps per compiled call default to the config's `steps_per_call` (10 for
CIFAR). `--xla_options` passes XLA options to the step alone (see
`config.xla_options`); `--profile_dir=DIR` writes each compiled step's
optimised HLO and, after each step-mode timing, a `jax.profiler` trace of
`--profile_steps` more steps (`python -m ban_jax.tools.trace_summary DIR` reads
them). Results and the tuning log: docs/performance.md.

`--seeds=S` times S seeds side by side (config.parallel_seeds): S students
and S teachers stacked, every compiled call the vmapped step of all of them
(`train.SeedGroupTrainer`), each seed its own initialisation. `img_per_s` is
then the aggregate of the S seeds, `img_per_s_per_seed` one seed's, and the
mode says `, S seeds`. Its ratio to the `--seeds=1` row is what training S
seeds together gains over S runs one after another:

  python -m ban_jax.bench --models=resnet20 --seeds=4

`--project` prints, after the table, what the whole chain of `--config`
would take at each measured rate: seeds x (num_generations + 1) x
num_epochs x steps per epoch (the dataset's train images // batch) x the
seconds per step of the epoch row (else the `+aug` row, else the bare
step). With it, `--models` and `--batch_sizes` default to the config's
teacher (and student) and batch:

  python -m ban_jax.tools.bench \
      --config=configs/cifar100.py:model=densenet112_33 --project

Excluded: compilation and the evaluation passes (one test-set forward pass
every `eval_every_epochs`, a small fraction of an epoch's training);
the teacher is timed at the KD step, so its share is overestimated.

The epoch row's `compile_s` is that of the programs it runs (the `+aug`
ones, compiled once). Non-model settings (schedule, dtype default) come from
`--config` (configs/cifar100.py), with the peer's recipe set over it.
"""

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ban_jax import config_file
from ban_jax import config_schema
from ban_jax import models
from ban_jax import pipeline
from ban_jax import train
from ban_jax.data import synthetic
from ban_jax.models import common
from ban_jax.runtime import distributed
from ban_jax.runtime import parallel

# Our registry names -> the names peer_torch.py prints, for --compare.
PEER_NAMES = {"wrn28_10": "wrn28_10", "resnet18": "resnet18",
              "densenet100_12": "densenet_bc100",
              "densenet112_33": "densenet_bc112_33"}
# Train images by dataset name, for --project (before data.max_train_*).
TRAIN_EXAMPLES = {"cifar10": 50_000, "cifar100": 50_000, "digits": 1347}
DTYPE_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# What --modes takes: bare steps, steps with augmentation, a whole epoch.
MODES = ("step", "step+aug", "epoch")
_GB = 1e9
# --config's default: a full experiment config (every field the trainer
# reads), which bench_config overrides with the peer's recipe.
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), "configs", "cifar100.py")


def bench_config(base, model: str, batch: int, dtype: str,
                 steps_per_call: int, augment: bool, xla_options: str = ""):
  """The peer's recipe: KD + label loss at T = 1, SGD-Nesterov, wd 5e-4."""
  config = base.copy_and_resolve_references()
  config.xla_options = xla_options
  config.model.name = model
  config.model.dtype = dtype
  config.model.dropout_rate = 0.0
  config.batch_size = batch
  config.eval_batch_size = batch
  config.num_epochs = 1
  config.steps_per_call = steps_per_call
  config.checkpoint_every_steps = 0
  config.data.augment = augment
  config.data.crop_padding = 4
  config.distill.loss = "kd+label"
  config.distill.temperature = 1.0
  config.distill.label_weight = 1.0
  config.distill.teacher_weight = 1.0
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 5e-4
  config.optim.lr_decay_epochs = ()
  return config


def peak_memory_gb() -> float | None:
  """Largest peak bytes in use over the local devices, or None."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return round(max(peaks) / _GB, 3) if peaks else None


def _program_memory_gb(compiled) -> float | None:
  try:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes
             + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None
  return round(total / _GB, 3)


class KDBench:
  """A teacher + student of one model and batch size, ready to time.

  One trainer per augmentation setting (`trainers[augment]`), one
  initialisation for both, and one compiled step per (augmentation, steps
  per call), reused across modes: the epoch runs the very program that
  `<dtype>+aug` timed. `build` makes one from the peer's recipe.
  """

  def __init__(self, trainers: dict[bool, train.GenerationTrainer],
               data: train.DeviceData, state: train.TrainState,
               teacher_vars: train.Variables, name: str,
               profile_dir: str = "", profile_steps: int = 0,
               seeds: int = 1):
    """`seeds` > 1: `trainers` are `train.SeedGroupTrainer`s, and `state`,
    `teacher_vars` and `data` theirs (stacked, on the seeds' mesh)."""
    self.trainers, self.data = trainers, data
    self.state, self.teacher_vars = state, teacher_vars
    self.seeds = seeds
    self.batch = trainers[False].batch_size
    self.name = name
    self.profile_dir, self.profile_steps = profile_dir, profile_steps
    self.rng = self._keys(2)
    # The step modes' fixed order; the epoch draws its own, as fit does.
    self.perm = (train.epoch_permutation(jax.random.key(3), data.num_train)
                 if seeds == 1 else trainers[False].epoch_order(
                     self._keys(3), 0, data.num_train))
    self._compiled = {}

  def _keys(self, number: int) -> jax.Array:
    """A key, or with several seeds one a seed (stacked)."""
    key = jax.random.key(number)
    if self.seeds == 1:
      return key
    return self.trainers[False].stack(
        [jax.random.fold_in(key, seed) for seed in range(self.seeds)])

  @classmethod
  def build(cls, base_config, model: str, batch: int, dtype: str,
            steps_per_call: int, data: train.DeviceData, mesh,
            xla_options: str = "", profile_dir: str = "",
            profile_steps: int = 0,
            float32_classifier: bool = True, seeds: int = 1) -> "KDBench":
    """The peer's recipe (`bench_config`) for `model` at global `batch`;
    `float32_classifier=False` computes the classifier in the compute dtype,
    to measure what the float32 classifier costs; `seeds` side by side."""
    trainers = {}
    for augment in (False, True):
      config = bench_config(base_config, model, batch, dtype, steps_per_call,
                            augment, xla_options)
      student = pipeline.build_model(model, config, data.num_classes)
      if not float32_classifier:
        student = student.clone(float32_classifier=False)
      # The teacher has the student's architecture, as in born-again chains.
      trainers[augment] = train.GenerationTrainer(
          config, student, student, data, mesh)
    alone = trainers[False]
    # One compiled init for both networks (init_state jits afresh per call).
    init = jax.jit(alone.init_state)
    name = f"{model}_b{batch}" + ("" if float32_classifier else "_lowcls")
    if seeds == 1:
      teacher_vars = alone.prepare_teacher(init(jax.random.key(1)).variables)
      return cls(trainers, data, init(jax.random.key(0)), teacher_vars,
                 name, profile_dir, profile_steps)
    seed_mesh = parallel.make_seed_mesh(seeds, mesh.devices.flat)
    trainers = {augment: train.SeedGroupTrainer(trainer, seed_mesh)
                for augment, trainer in trainers.items()}
    group = trainers[False]
    # Each seed's own student and teacher, as seeds side by side train.
    state = group.stack([init(jax.random.fold_in(jax.random.key(0), seed))
                         for seed in range(seeds)])
    teacher_vars = group.prepare_teacher(
        [init(jax.random.fold_in(jax.random.key(1), seed)).variables
         for seed in range(seeds)])
    return cls(trainers, group.put_data(data), state, teacher_vars,
               f"{name}_s{seeds}", profile_dir, profile_steps, seeds)

  def _call(self, compiled, perm):
    """One call; the state is donated and replaced by the new one."""
    self.state, sums = compiled(self.state, self.teacher_vars,
                                self.data.train_images,
                                self.data.train_labels, perm, self.rng)
    return sums

  def _name(self, augment: bool, num_steps: int) -> str:
    """Names a compiled step's files under --profile_dir."""
    return f"{self.name}_{'aug' if augment else 'bare'}_x{num_steps}"

  def compiled(self, augment: bool, num_steps: int):
    """(executable of `num_steps` steps, seconds to lower and compile it)."""
    key = (augment, num_steps)
    if key not in self._compiled:
      start = time.perf_counter()
      executable = self.trainers[augment].train_steps(num_steps).lower(
          self.state, self.teacher_vars, self.data.train_images,
          self.data.train_labels, self.perm, self.rng).compile()
      self._compiled[key] = executable, time.perf_counter() - start
      if self.profile_dir:
        # The optimised HLO names the fusions that a trace's kernels run.
        os.makedirs(self.profile_dir, exist_ok=True)
        with open(os.path.join(self.profile_dir,
                               self._name(augment, num_steps) + ".hlo.txt"),
                  "w") as f:
          f.write(executable.as_text())
    return self._compiled[key]

  def steps(self, augment: bool, steps: int, warmup: int,
            steps_per_call: int) -> dict[str, Any]:
    """Times `steps` steps (rounded up to whole calls) after `warmup`."""
    compiled, compile_s = self.compiled(augment, steps_per_call)
    calls = max(1, -(-steps // steps_per_call))
    for _ in range(max(0, -(-warmup // steps_per_call))):
      self._call(compiled, self.perm)
    jax.block_until_ready(self.state)
    start = time.perf_counter()
    for _ in range(calls):
      sums = self._call(compiled, self.perm)
    jax.block_until_ready((self.state, sums))
    seconds = time.perf_counter() - start
    num_steps = calls * steps_per_call
    loss = float(np.mean(parallel.fetch(sums["loss"]))) / steps_per_call
    return {**self._rates(num_steps, seconds), "steps": num_steps,
            "seconds": seconds, "compile_s": compile_s,
            "program_mem_gb": _program_memory_gb(compiled), "loss": loss}

  def _rates(self, num_steps: int, seconds: float) -> dict[str, float]:
    """img/s of all seeds together and, with several, of one seed."""
    per_seed = num_steps * self.batch / seconds
    if self.seeds == 1:
      return {"img_per_s": per_seed}
    return {"img_per_s": per_seed * self.seeds,
            "img_per_s_per_seed": per_seed}

  def profile(self, augment: bool, steps_per_call: int) -> None:
    """Traces `profile_steps` more steps into `profile_dir`/<model, mode>,
    apart from the timed calls (tracing slows them down)."""
    compiled, _ = self.compiled(augment, steps_per_call)
    with jax.profiler.trace(os.path.join(
        self.profile_dir, self._name(augment, steps_per_call))):
      for _ in range(max(1, -(-self.profile_steps // steps_per_call))):
        sums = self._call(compiled, self.perm)
      jax.block_until_ready((self.state, sums))

  def epoch(self) -> dict[str, Any]:
    """One augmented epoch, timed: `train.run_epoch`, the code `train.fit`
    runs, from the start of an epoch, on the compiled steps that the step
    modes time (in calls of the config's `steps_per_call`, and one shorter
    call for the rest)."""
    trainer = self.trainers[True]
    spe = trainer.steps_per_epoch
    compile_s = 0.0
    # Compiling is not part of an epoch's time.
    for n in sorted(set(train.epoch_calls(
        0, spe, trainer.config.steps_per_call,
        trainer.config.checkpoint_every_steps))):
      compiled, seconds = self.compiled(True, n)
      compile_s += seconds
      warm = self._call(compiled, self.perm)
    # Nor is compiling the add that sums the metrics, which fit pays once
    # per process (docs/performance.md: without this, the epoch row trailed
    # the bare step by a fixed time).
    parallel.fetch(jax.tree.map(jnp.add, warm, warm))
    step = self._to_epoch_start(spe)
    start = time.perf_counter()
    self.state, sums = train.run_epoch(
        trainer, self.state, self.teacher_vars, self.data, self._keys(4),
        self.rng, step, train_steps=lambda n: self.compiled(True, n)[0])
    seconds = time.perf_counter() - start
    return {**self._rates(spe, seconds), "steps": spe, "seconds": seconds,
            "compile_s": compile_s,
            "loss": float(np.mean(sums["loss"])) / spe}

  def _to_epoch_start(self, steps_per_epoch: int) -> int:
    """Moves the state's step on to the next epoch's first, as an epoch of
    training starts there; returns it. The step modes leave it anywhere."""
    # Every seed's step is the same.
    step = int(np.max(parallel.fetch(self.state.step)))
    step = -(-step // steps_per_epoch) * steps_per_epoch
    self.state = self.state.replace(step=jax.device_put(
        np.full(self.state.step.shape, step, self.state.step.dtype),
        self.state.step.sharding))
    jax.block_until_ready(self.state)
    return step


def _rows(args):
  """Yields one result dict per (model, batch size, classifier, mode)."""
  devices = jax.devices()
  if args.devices:
    devices = devices[:args.devices]
  mesh = parallel.make_mesh(devices)
  if not args.steps_per_call:
    args.steps_per_call = args.base_config.steps_per_call
  dtype_label = DTYPE_LABELS[jnp.dtype(common.resolve_dtype(args.dtype)).name]
  labels = {"step": dtype_label, "step+aug": f"{dtype_label}+aug",
            "epoch": "epoch"}
  classifiers = (True, False) if args.bf16_classifier else (True,)
  for model in _names(args.models):
    for batch, float32_classifier in itertools.product(
        [int(b) for b in _names(args.batch_sizes)], classifiers):
      if not float32_classifier and not _has_low_classifier(model):
        print(f"{model} has no bfloat16-classifier option: no "
              "--bf16_classifier rows for it.", file=sys.stderr)
        continue
      row = {"impl": "ban_jax", "model": model, "batch": batch,
             "dtype": dtype_label, "devices": len(devices),
             "device_kind": devices[0].device_kind,
             "steps_per_call": args.steps_per_call,
             "image_size": args.image_size,
             "classifier": "fp32" if float32_classifier else dtype_label}
      if args.seeds > 1:
        row["seeds"] = args.seeds
      if args.xla_options:
        row["xla_options"] = args.xla_options
      if _scans_layers(model) and args.base_config.model.layers_per_scan > 1:
        row["layers_per_scan"] = args.base_config.model.layers_per_scan
      bench, error = _build(args, model, batch, mesh, float32_classifier)
      for mode in _names(args.modes):
        result = dict(row, mode=labels[mode] + (
            "" if float32_classifier else f", {dtype_label} classifier")
                      + (f", {args.seeds} seeds" if args.seeds > 1 else ""))
        result.update(_measure(bench, mode, args) if bench is not None
                      else {"error": error})
        yield result
        if (bench is not None and args.profile_dir and args.profile_steps
            and mode != "epoch" and "error" not in result):
          # After the row is out: a slow or failing trace loses no timing.
          _profile(bench, model, mode, args.steps_per_call)
      del bench


def _build(args, model: str, batch: int, mesh, float32_classifier: bool
           ) -> tuple[KDBench | None, str | None]:
  """(the benchmark of `model` at `batch`, None), or (None, the error)."""
  try:
    dataset = synthetic.load(args.num_examples, args.image_size,
                                args.num_classes, num_test=batch)
    data = train.put_dataset(dataset, mesh, batch)
    return KDBench.build(args.base_config, model, batch, args.dtype,
                         args.steps_per_call, data, mesh, args.xla_options,
                         args.profile_dir, args.profile_steps,
                         float32_classifier,
                         **({"seeds": args.seeds} if args.seeds > 1 else {})
                         ), None
  except Exception as e:  # pylint: disable=broad-except
    # One model's failure (out of memory at a big batch, a failed compile)
    # must not lose the others' numbers. Bad names were refused by
    # parse_args.
    return None, f"{type(e).__name__}: {e}"[:500]


def _measure(bench: KDBench, mode: str, args) -> dict[str, Any]:
  """One row's measurements (rounded), or its error."""
  try:
    if mode == "epoch":
      measured = bench.epoch()
      measured["num_examples"] = bench.data.num_train
    else:
      measured = bench.steps(mode == "step+aug", args.steps, args.warmup,
                             args.steps_per_call)
    measured["peak_mem_gb"] = peak_memory_gb()
  except Exception as e:  # pylint: disable=broad-except
    return {"error": f"{type(e).__name__}: {e}"[:500]}
  return {k: (round(v, 1 if k.startswith("img_per_s") else 3)
              if isinstance(v, float) else v)
          for k, v in measured.items()}


def _profile(bench: KDBench, model: str, mode: str,
             steps_per_call: int) -> None:
  try:
    bench.profile(mode == "step+aug", steps_per_call)
  except Exception as e:  # pylint: disable=broad-except
    print(f"Profiling {model} {mode} failed: {type(e).__name__}: {e}",
          file=sys.stderr)


def _has_low_classifier(model: str) -> bool:
  """Whether `model` takes float32_classifier=False (DenseNet does not)."""
  try:
    models.get_model(model, 10, float32_classifier=False)
  except (TypeError, ValueError):
    return False
  return True


def _scans_layers(model: str) -> bool:
  """Whether `model` takes layers_per_scan (DenseNets do)."""
  return any(f.name == "layers_per_scan"
             for f in dataclasses.fields(models.get_model(model, 10)))


def _names(text: str) -> list[str]:
  return [name.strip() for name in text.split(",") if name.strip()]


def _one_line(text: str) -> str:
  """Text for one markdown table cell."""
  return " ".join(text.split()).replace("|", "/")


def _read_peer(path: str) -> list[dict[str, Any]]:
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line.startswith("{"):
        rows.append(json.loads(line))
  return rows


def table(rows, peer_rows=()) -> str:
  """A markdown table of the results (and the peer's, same model/batch)."""
  lines = ["| impl | model | mode | batch | img/s | compile s | "
           "peak mem GB |", "|---|---|---|---|---|---|---|"]

  def fmt(value, spec):
    return "-" if value is None else format(value, spec)

  for row in rows:
    lines.append(
        f"| {row['impl']} | {row['model']}"
        + (f" (scan {row['layers_per_scan']})" if "layers_per_scan" in row
           else "") + f" | {row['mode']} | {row.get('batch', '-')} | "
        + ("error: " + _one_line(row["error"])[:80] if "error" in row else
           f"{fmt(row.get('img_per_s'), ',.1f')} | "
           f"{fmt(row.get('compile_s'), '.1f')} | "
           f"{fmt(row.get('peak_mem_gb'), '.2f')}") + " |")
  ours = {(PEER_NAMES.get(r["model"], r["model"]), r.get("batch"))
          for r in rows}
  for row in peer_rows:
    if (row.get("model"), row.get("batch")) in ours or not rows:
      lines.append(f"| {row.get('impl')} | {row.get('model')} | "
                   f"{row.get('mode')} | {row.get('batch', '-')} | "
                   f"{fmt(row.get('img_per_s'), ',.1f')} | - | - |")
  return "\n".join(lines)


def projection(config, batch: int, seconds_per_step: float
               ) -> dict[str, Any]:
  """The whole run of `config` at `batch`, at `seconds_per_step`."""
  num_train = TRAIN_EXAMPLES[config.data.name]
  if config.data.max_train_examples:
    num_train = min(num_train, config.data.max_train_examples)
  steps_per_epoch = num_train // batch
  seeds = len(config_schema.seed_list(config))
  steps = (seeds * (config.num_generations + 1) * config.num_epochs
           * steps_per_epoch)
  return {"seeds": seeds, "generations": config.num_generations + 1,
          "epochs": config.num_epochs, "steps_per_epoch": steps_per_epoch,
          "steps": steps, "seconds_per_step": seconds_per_step,
          "hours": steps * seconds_per_step / 3600}


def _rate_row(rows, model: str, batch: int) -> dict[str, Any] | None:
  """The row whose rate --project uses: the epoch's, else the +aug's, else
  the bare step's (float32 classifier, no error)."""
  found = {r["mode"].split(",")[0]: r for r in rows
           if (r["model"], r["batch"]) == (model, batch)
           and r.get("classifier") == "fp32" and "error" not in r}
  for mode in ("epoch", *(m for m in found if m.endswith("+aug")),
               *found):
    if mode in found:
      return found[mode]
  return None


def projections(config, rows) -> list[str]:
  """--project's lines: each measured (model, batch)'s whole run."""
  lines = []
  for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
    row = _rate_row(rows, model, batch)
    if row is None:
      lines.append(f"{model} at batch {batch}: no rate measured, no "
                   "projection.")
      continue
    p = projection(config, batch, row["seconds"] / row["steps"])
    lines.append(
        f"{model} at batch {batch} ({row['mode']} rate): {p['seeds']} "
        f"seed(s) x {p['generations']} generations x {p['epochs']} epochs x "
        f"{p['steps_per_epoch']} steps x {p['seconds_per_step']:.4f} s = "
        f"{p['hours']:.2f} h for the whole chain of {config.data.name} "
        "(evaluation and compilation excluded).")
  return lines


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
  """The docstring as written, and every flag's default."""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m ban_jax.tools.bench", description=__doc__.split("\n")[0],
      formatter_class=_HelpFormatter)
  add = parser.add_argument
  add("--models", default=None,
      help="comma-separated model names (python -m ban_jax.models); "
      "default wrn28_10,resnet18,densenet100_12, or with --project the "
      "config's")
  add("--batch_sizes", default=None,
      help="comma-separated global batches; default 128, or with --project "
      "the config's")
  add("--modes", default="step,step+aug,epoch",
      help="any of step, step+aug, epoch")
  add("--steps", type=int, default=50,
      help="timed steps per step mode, rounded up to whole calls of "
      "--steps_per_call")
  add("--warmup", type=int, default=5,
      help="untimed steps after compiling, before timing")
  add("--steps_per_call", type=int, default=0,
      help="train steps scanned in one compiled call (default: the "
      "config's steps_per_call)")
  add("--dtype", default="auto",
      help="compute dtype: auto (bf16 on GPU/TPU, fp32 on CPU), float32, "
      "bfloat16, float16")
  add("--bf16_classifier", action="store_true",
      help="also run every mode with the classifier in the compute dtype "
      "instead of float32, to show what the float32 classifier costs")
  add("--layers_per_scan", type=int, default=0,
      help="DenseNets: scan each block's layers in groups of this many "
      "(1: unrolled; default: the config's model.layers_per_scan)")
  add("--image_size", type=int, default=32, help="square image side")
  add("--num_classes", type=int, default=100)
  add("--num_examples", type=int, default=50_000,
      help="train-set size on the device (CIFAR's by default)")
  add("--seeds", type=int, default=1,
      help="seeds trained side by side in one program (config."
      "parallel_seeds); img_per_s is then all seeds', img_per_s_per_seed "
      "one seed's")
  add("--devices", type=int, default=0,
      help="use only the first N devices (default: all)")
  add("--config", default=DEFAULT_CONFIG,
      help="config file giving every field the trainer reads, as "
      "PATH[:ARGUMENT] (python -m ban_jax.main takes it so)")
  add("--project", action="store_true",
      help="after the table, print the hours of --config's whole chain at "
      "each measured rate")
  add("--compare", default="",
      help="JSON lines of peer_torch.py to add to the table")
  add("--xla_options", default="",
      help="XLA options of the train step, 'name=value;...' (e.g. "
      "xla_gpu_enable_command_buffer=); see config.xla_options")
  add("--profile_dir", default="",
      help="write here each compiled step's optimised HLO and a "
      "jax.profiler trace of --profile_steps more steps after each timing")
  add("--profile_steps", type=int, default=3,
      help="steps traced per timed mode when --profile_dir is set")
  add("--coordinator_address", default=None,
      help="multi-process: process 0's host:port (or $JAX_COORDINATOR_"
      "ADDRESS); see ban_jax/runtime/distributed.py")
  add("--num_processes", type=int, default=None)
  add("--process_id", type=int, default=None)
  args = parser.parse_args(argv)
  _check_args(parser, args)
  return args


def _check_args(parser: argparse.ArgumentParser, args) -> None:
  """Names a bad flag value before anything is compiled."""
  try:
    # Kept for the benchmark, which reads it after every flag is checked.
    path, _, argument = args.config.partition(":")
    args.base_config = config_file.load(path, argument)
  except Exception as e:  # pylint: disable=broad-except
    parser.error(f"--config={args.config!r} cannot be loaded: "
                 f"{type(e).__name__}: {e}. Pass a configs/*.py file.")
  _fill_defaults(args)
  bad_modes = [m for m in _names(args.modes) if m not in MODES]
  if bad_modes or not _names(args.modes):
    parser.error(f"--modes={args.modes!r}: use any of {', '.join(MODES)}.")
  if not _names(args.models):
    parser.error("--models is empty.")
  for name in _names(args.models):
    try:
      models.get_model(name, args.num_classes)
    except ValueError as e:
      parser.error(f"--models: {e}")
  try:
    batches = [int(b) for b in _names(args.batch_sizes)]
  except ValueError:
    parser.error(f"--batch_sizes={args.batch_sizes!r}: use integers, e.g. "
                 "128,256.")
  if not batches or min(batches) < 1:
    parser.error(f"--batch_sizes={args.batch_sizes!r}: use positive "
                 "integers, e.g. 128,256.")
  at_least_0 = ("warmup", "steps_per_call", "devices", "profile_steps",
                "layers_per_scan")
  for flag in ("steps", "num_examples", "image_size", "num_classes", "seeds",
               *at_least_0):
    if getattr(args, flag) < (0 if flag in at_least_0 else 1):
      parser.error(f"--{flag}={getattr(args, flag)} is too small.")
  if args.dtype not in ("auto", *DTYPE_LABELS):
    parser.error(f"--dtype={args.dtype!r}: use auto, "
                 f"{', '.join(DTYPE_LABELS)}.")
  if args.project and args.base_config.data.name not in TRAIN_EXAMPLES:
    parser.error(f"--project: no train-set size known for dataset "
                 f"{args.base_config.data.name!r}.")
  if args.compare:
    # Read now, not after the benchmark: a typo must not cost the table.
    try:
      _read_peer(args.compare)
    except (OSError, ValueError) as e:
      parser.error(f"--compare={args.compare!r}: {e}. Pass the JSON lines "
                   "that peer_torch.py printed.")


def _fill_defaults(args) -> None:
  """--models and --batch_sizes left unset: the peer's three models at 128,
  or with --project the config's models and batch."""
  config = args.base_config
  if args.models is None:
    args.models = ("wrn28_10,resnet18,densenet100_12" if not args.project
                   else ",".join(dict.fromkeys(
                       n for n in (config.model.name, config.student_model)
                       if n)))
  if args.batch_sizes is None:
    args.batch_sizes = str(config.batch_size) if args.project else "128"
  if args.layers_per_scan:
    config.model.layers_per_scan = args.layers_per_scan


def main(argv=None) -> None:
  args = parse_args(argv)
  try:
    distributed.initialize(args.coordinator_address, args.num_processes,
                           args.process_id)
  except ValueError as e:  # A partial or malformed multi-process setting.
    sys.exit(f"ERROR: {e}")
  speak = jax.process_index() == 0
  rows = []
  for row in _rows(args):
    rows.append(row)
    if speak:
      print(json.dumps(row), flush=True)
  if speak:
    peer = _read_peer(args.compare) if args.compare else []
    print("\n" + table(rows, peer), flush=True)
    if args.project:
      print("\n" + "\n".join(projections(args.base_config, rows)),
            flush=True)
  if any("error" in row for row in rows):
    sys.exit(1)


if __name__ == "__main__":
  main()
