"""The born-again chain: teacher, generations 1..G, ensembles, report.

`run(config, workdir)` is the library entry point (`main.py` only parses
flags). Generation 0 learns from the labels; generation g >= 1 is a freshly
initialised network, with its own seed, that learns from generation g-1's
outputs. Each generation lives in `<workdir>/seed_<s>/gen_<g>/`: its Orbax
checkpoints and, once finished, `result.json`. Rerunning the same command
loads finished generations (never retraining them) and resumes an
unfinished one from its latest checkpoint.

Beside the chain, `config.student_baseline` trains the students' network
from the labels alone (report column "Baseline", Table 5's baseline) in
`seed_<s>/baseline/`; it teaches no one and is in no ensemble. With
`config.seed_scope="students"` only the first seed trains a teacher, and
every seed's students learn from it (`seed_<s>/teacher.json` names it).
"""

import dataclasses
import functools
import json
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import linen as nn

from ban_jax import config_schema
from ban_jax import errors
from ban_jax import models
from ban_jax import progress
from ban_jax import train
from ban_jax import validation
from ban_jax.data import load_dataset
from ban_jax.reporting import paper_results
from ban_jax.reporting import report
from ban_jax.runtime import checkpoints
from ban_jax.runtime import compilation
from ban_jax.runtime import files
from ban_jax.runtime import metrics_writer
from ban_jax.runtime import parallel
from ban_jax.runtime import preemption
from ban_jax.runtime import run_settings
from ban_jax.runtime import workdir_lock

# Report name (folder: lower case) of the labels-only student.
BASELINE = report.BASELINE
# fold_in data of the Baseline's random stream: never a generation's index.
_BASELINE_STREAM = 2**32 - 1


@dataclasses.dataclass
class Generation:
  """A trained generation: what the next one and the ensembles need."""
  index: int
  module: nn.Module
  variables: train.Variables
  test_logits: np.ndarray
  result: dict[str, Any]
  seed: int = 0  # The seed of the chain that trained it.


def build_model(name: str, config, num_classes: int,
                generation: int = 0) -> nn.Module:
  """The named model with the config's dtype, dropout and layer scans.

  Dropout and `model.layers_per_scan` apply to the models that have them
  (Wide-ResNets, DenseNets); another model logs that it ignores them.
  """
  module = models.get_model(name, num_classes, dtype=config.model.dtype)
  dropout = config.model.dropout_rate
  if generation > 0 and config.student_dropout_rate >= 0:
    dropout = config.student_dropout_rate
  fields = {f.name for f in dataclasses.fields(module)}
  if "dropout_rate" in fields:
    module = module.clone(dropout_rate=dropout)
  elif dropout:
    logging.warning("Model %s has no dropout; a dropout rate of %s is "
                    "ignored for it.", name, dropout)
  layers_per_scan = config.model.layers_per_scan
  if "layers_per_scan" in fields:
    module = module.clone(layers_per_scan=layers_per_scan)
  elif layers_per_scan != 1:
    logging.warning("Model %s has no scanned layers (only DenseNets do); "
                    "model.layers_per_scan=%s is ignored for it.", name,
                    layers_per_scan)
  return module


def model_name(config, generation: int) -> str:
  if generation == 0 or not config.student_model:
    return config.model.name
  return config.student_model


def loss_name(config, generation: int) -> str:
  return "ce" if generation == 0 else config.distill.loss


def dkpp_choices(config) -> dict[str, Any]:
  """results.json's `dkpp` when the loss is DKPP: the two choices the paper
  leaves open, where the max goes ('label' or 'argmax') and how often the
  permutations are drawn ('example' or 'step'); {} for other losses."""
  distill = config.distill
  if distill.loss != "dkpp":
    return {}
  return {"dkpp": {
      "anchor": "argmax" if distill.dkpp_keep_argmax else "label",
      "permutation": distill.dkpp_permutation}}


def _is_shared(path: tuple[str, ...]) -> bool:
  return path[0] in ("stem", "classifier")


def copy_stem_classifier(params, teacher_params):
  """Student params with the teacher's `stem` and `classifier` copied in."""
  params = dict(params)
  for name in ("stem", "classifier"):
    # validation._models_take_the_dataset tells the user when the shapes
    # differ; this guards a caller that did not validate its config.
    assert (jax.tree.map(np.shape, params[name])
            == jax.tree.map(np.shape, teacher_params[name])), name
    params[name] = teacher_params[name]
  return params


def _as_json(config_dict: dict[str, Any]) -> dict[str, Any]:
  # Tuples become lists, as in a saved config.json.
  return json.loads(json.dumps(config_dict))


def _settings(config_dict: dict[str, Any]) -> dict[str, Any]:
  """Dotted field -> JSON value, less the fields a rerun may change.

  A field missing from `config_dict` (a config.json written before the
  field was added to configs/default.py) counts as its default, as a new
  field's default keeps what ran before.
  """
  defaults = config_schema.defaults().to_dict()
  flat = {**config_schema.flat_fields(_as_json(defaults)),
          **config_schema.flat_fields(_as_json(config_dict))}
  return {k: v for k, v in flat.items()
          if k not in config_schema.RERUN_SAFE_FIELDS}


def _has_started(gen_dir: epath.Path) -> bool:
  """Whether a generation has a complete checkpoint or a result."""
  # Orbax names a step's folder by its number once the step is complete.
  return (gen_dir / "result.json").exists() or any(
      step.name.isdigit() for step in gen_dir.glob("checkpoints/*"))


def _has_trained(workdir: epath.Path) -> bool:
  """Whether any generation (or Baseline) in `workdir` has trained."""
  folders = [*workdir.glob("seed_*/gen_*"), *workdir.glob("seed_*/baseline")]
  return any(_has_started(folder) for folder in folders)


def _check_workdir_config(workdir: epath.Path, config) -> None:
  """Refuses to mix generations trained with different settings.

  The settings a workdir holds are those its checkpoints were trained with
  (each carries its run's config) and config.json, which a rerun compares
  first; a difference is refused, naming the fields that differ. A
  config.json that is missing or damaged is rebuilt from the checkpoints;
  where they carry no config (older checkpoints), it is refused instead.
  A workdir binds only once something was trained there: a run that
  stopped before its first checkpoint (missing data, a batch that does not
  fit) leaves nothing to protect, so the corrected rerun replaces it.
  """
  path = workdir / "config.json"
  current = _settings(config.to_dict())
  saved_config, problem = run_settings.read_config(path)
  saved_config = run_settings.bind_to_checkpoints(
      workdir, path, saved_config, problem, _settings)
  if saved_config is not None:
    saved = _settings(saved_config)
    if saved == current:
      return
    changed = run_settings.differences(saved, current)
    if _has_trained(workdir):
      raise errors.ConfigError(
          f"{workdir} holds generations trained with other settings "
          f"({changed}). Use a new --workdir, or rerun with the settings in "
          f"{path}.")
    logging.info("%s trained nothing yet; its config.json is replaced "
                 "(changed: %s).", workdir, changed)
  elif _has_trained(workdir):
    raise errors.ConfigError(
        f"{path} {problem}, so the settings of the generations trained in "
        f"{workdir} cannot be checked. Restore it (results.json keeps a copy "
        "under \"config\" once a run has finished), or use a new --workdir.")
  elif problem != "is missing":
    logging.warning("%s %s; nothing was trained there yet, so it is "
                    "replaced.", path, problem)
  if jax.process_index() == 0:
    files.write_atomically(path, json.dumps(config.to_dict(), indent=2)
                            + "\n")


def _log_epoch(generation: int | str, num_epochs: int):
  def log(record):
    test = (f" | test loss {record['test_loss']:.4f} "
            f"acc {record['test_accuracy']:.2f}%"
            if "test_accuracy" in record else "")
    chain = record.get("chain_seconds_left")
    chain = ("" if chain is None else
             f", {progress.format_seconds(chain)} in the run")
    logging.info(
        "gen %s epoch %d/%d | train loss %.4f acc %.2f%%%s | %.0f img/s | "
        "lr %.4g | %s left in this generation%s", generation,
        record["epoch"], num_epochs, record["train_loss"],
        record["train_accuracy"], test, record["images_per_second"],
        record["learning_rate"],
        progress.format_seconds(record["seconds_left"]), chain)
  return log


def _trainer(cache: dict, config, name: str,
             teacher_module: nn.Module | None, share: bool,
             data: train.DeviceData, mesh, *, generation: int | None = None
             ) -> train.GenerationTrainer:
  """One trainer per (student, teacher) pair, so that generations 2..G reuse
  generation 1's compiled steps instead of compiling them again.

  `generation` picks the dropout (`build_model`); by default 1 with a
  teacher, else 0. The Baseline passes 1: a student without a teacher.
  """
  if generation is None:
    generation = int(teacher_module is not None)
  key = (name, teacher_module, share, generation > 0)
  if key not in cache:
    student = build_model(name, config, data.num_classes,
                          generation=generation)
    cache[key] = train.GenerationTrainer(
        config, student, teacher_module, data, mesh,
        frozen=_is_shared if share else None)
  return cache[key]


def _each(*callbacks):
  """One on_epoch callback that calls every given one (None: skipped)."""
  callbacks = [c for c in callbacks if c is not None]

  def call(record):
    for callback in callbacks:
      callback(record)
  return call


def _restore_or_init(trainer: train.GenerationTrainer, what: str,
                     teacher: Generation | None, share: bool, init_rng,
                     ckpt: checkpoints.GenerationCheckpoints,
                     gen_dir: epath.Path, max_step: int | None = None
                     ) -> tuple[train.TrainState, dict[str, Any]]:
  """The latest checkpoint of `what` (e.g. "Generation 2"), at or before
  `max_step` if given, or a fresh student: (state, progress)."""
  restored = ckpt.restore_latest(trainer.abstract_state(), max_step)
  if restored is not None:
    step, state, progress = restored
    if step < trainer.total_steps:
      logging.info("%s: resuming from checkpoint step %d of %d.", what, step,
                   trainer.total_steps)
    else:
      logging.info("%s: finished earlier; loaded from its final checkpoint "
                   "(step %d).", what, step)
    return state, progress
  result_path = gen_dir / "result.json"
  if result_path.exists():
    raise errors.WorkdirError(
        f"{what} is marked finished ({result_path}) but has no readable "
        f"checkpoint in {ckpt.directory}; delete {gen_dir} to retrain it.")
  state = trainer.init_state(init_rng)
  if share:
    state = state.replace(params=copy_stem_classifier(
        state.params, parallel.fetch(teacher.variables["params"])))
  return state, {}


def _record_result(config, index: int, trainer: train.GenerationTrainer,
                   state: train.TrainState, source: Generation | None,
                   data: train.DeviceData, progress: dict[str, Any],
                   gen_dir: epath.Path, labels_only: bool) -> Generation:
  """Evaluates the trained generation (or the Baseline) and writes its
  result.json."""
  name = model_name(config, index)
  teacher_logits = source.test_logits if source else None
  logits = train.test_logits(trainer, trainer.student, state.variables, data)
  metrics = train.evaluate(data, logits, teacher_logits)
  result = {
      # The Baseline is no generation of the chain: null.
      "generation": None if labels_only else index,
      "name": BASELINE if labels_only else report.generation_label(index),
      "model": name, "loss": "ce" if labels_only else loss_name(config, index),
      "test_accuracy": metrics["test_accuracy"],
      "test_error": 100.0 - metrics["test_accuracy"],
      "test_metrics": metrics, "history": progress.get("history", []),
  }
  if jax.process_index() == 0:
    files.write_atomically(gen_dir / "result.json",
                           json.dumps(result, indent=2) + "\n")
  logging.info("%s (%s, %s): test error %.2f%%.",
               BASELINE if labels_only else f"Generation {index}", name,
               result["loss"], result["test_error"])
  return Generation(index, trainer.student, state.variables, logits, result,
                    config.seed)


def _stop_if_requested(what: str) -> None:
  """Stops before training `what` if a stop request arrived after the last
  train steps (the generations before it are finished)."""
  stop = preemption.requested()
  if stop:
    raise preemption.StopRequested(
        f"Stopped by {stop} before training {what[0].lower()}{what[1:]}; "
        "the generations before it are finished. Rerun the same command "
        "to continue.", stop)


def _generation_keys(seed: int, index: int, labels_only: bool
                     ) -> tuple[jax.Array, jax.Array]:
  """(init key, train key) of generation `index` of `seed`, or of its
  Baseline (`labels_only`, a random stream of its own)."""
  gen_rng = jax.random.fold_in(jax.random.key(seed),
                               _BASELINE_STREAM if labels_only else index)
  return tuple(jax.random.split(gen_rng))


def _generation_checkpoints(gen_dir: epath.Path, config,
                            run_config: dict[str, Any] | None
                            ) -> checkpoints.GenerationCheckpoints:
  """The checkpoints in `gen_dir`, each carrying `run_config` (default:
  `config`'s), the run's config as config.json has it."""
  return checkpoints.GenerationCheckpoints(
      gen_dir / "checkpoints",
      config=config.to_dict() if run_config is None else run_config)


def run_generation(config, index: int, teacher: Generation | None,
                   data: train.DeviceData, mesh, gen_dir: epath.Path,
                   trainers: dict | None = None,
                   on_epoch: Callable[[dict[str, Any]], None] | None = None,
                   run_config: dict[str, Any] | None = None,
                   chain_clock: Callable[..., float | None] | None = None, *,
                   labels_only: bool = False) -> Generation:
  """Trains (or loads, if finished) generation `index` of the chain.

  `on_epoch`, if given, gets each epoch's record after the progress line is
  logged (the pipeline passes a TensorBoard writer's). Each checkpoint
  carries `run_config` (default: `config`'s), the run's config as
  config.json has it. `chain_clock`: as `train.fit` takes it.

  `labels_only`: instead of generation `index`, the Baseline: the same
  network (and dropout), initialised from a random stream of its own,
  trained with cross-entropy on the labels alone; `teacher` only lends it
  its stem and classifier when config.share_stem_classifier (Table 5).
  """
  share = index > 0 and config.share_stem_classifier
  # Whom the student learns from: the Baseline learns from no one.
  source = None if labels_only else teacher
  what = BASELINE if labels_only else f"Generation {index}"
  trainer = _trainer({} if trainers is None else trainers, config,
                     model_name(config, index),
                     source.module if source else None, share, data, mesh,
                     generation=index)
  init_rng, train_rng = _generation_keys(config.seed, index, labels_only)
  ckpt = _generation_checkpoints(gen_dir, config, run_config)
  state, progress = _restore_or_init(trainer, what, teacher, share, init_rng,
                                     ckpt, gen_dir)
  # How fit's messages and the progress lines name it.
  fit_name = BASELINE.lower() if labels_only else index
  try:
    if int(parallel.fetch(state.step)) < trainer.total_steps:
      _stop_if_requested(what)
      state, progress = train.fit(
          trainer, state, source.variables if source else None, data,
          train_rng, ckpt, progress, generation=fit_name,
          teacher_test_logits=source.test_logits if source else None,
          on_epoch=_each(_log_epoch(fit_name, config.num_epochs), on_epoch),
          chain_clock=chain_clock)
  finally:
    # Whatever stops the run, the checkpoint being written is finished.
    ckpt.close()
  return _record_result(config, index, trainer, state, source, data,
                        progress, gen_dir, labels_only)


def _restore_together(trainer: train.GenerationTrainer, what: str,
                      teachers: list[Generation | None], share: bool,
                      init_rngs, ckpts, gen_dirs: list[epath.Path],
                      seeds: list[int]
                      ) -> tuple[list[train.TrainState], list[dict[str, Any]]]:
  """`_restore_or_init` of each seed, at a step every seed has.

  The seeds save each step one after the other: a kill -9 between two
  seeds' saves leaves some of them a step ahead. Those go back to the
  others' step (their later steps are set aside) and train it again, with
  the same keys, so the rerun goes on as an uninterrupted run would.
  """
  def restore(i, max_step=None):
    return _restore_or_init(trainer, f"{what} of seed {seeds[i]}",
                            teachers[i], share, init_rngs[i], ckpts[i],
                            gen_dirs[i], max_step)

  restored = [restore(i) for i in range(len(seeds))]
  while True:
    steps = [int(parallel.fetch(state.step)) for state, _ in restored]
    if min(steps) == max(steps):
      return [r[0] for r in restored], [r[1] for r in restored]
    restored = [restore(i, min(steps)) if step > min(steps) else restored[i]
                for i, step in enumerate(steps)]


def run_generations_together(
    configs: list[Any], index: int, teachers: list[Generation | None],
    data: train.DeviceData, mesh, seed_mesh, gen_dirs: list[epath.Path],
    trainers: dict, on_epoch: list[Callable[[dict[str, Any]], None] | None],
    run_config: dict[str, Any] | None,
    chain_clock: list[Callable[..., float | None] | None], *,
    labels_only: bool = False) -> list[Generation]:
  """`run_generation` of several seeds in one compiled program.

  One config (its seed), teacher, folder, `on_epoch` and `chain_clock` a
  seed. The seeds' states are stacked on `seed_mesh`
  (`train.SeedGroupTrainer`); each seed's keys, checkpoints, result.json
  and epoch records are those of the seed run alone. One teacher object
  for every seed (seed_scope="students") is broadcast, not stacked.
  """
  config = configs[0]
  seeds = [c.seed for c in configs]
  share = index > 0 and config.share_stem_classifier
  sources = [None if labels_only else t for t in teachers]
  shared = sources[0] is not None and all(s is sources[0] for s in sources)
  what = BASELINE if labels_only else f"Generation {index}"
  trainer = _trainer(trainers, config, model_name(config, index),
                     sources[0].module if sources[0] else None, share, data,
                     mesh, generation=index)
  key = (id(trainer), len(seeds), shared)  # The group's compiled steps.
  if key not in trainers:
    trainers[key] = train.SeedGroupTrainer(trainer, seed_mesh, shared)
  group = trainers[key]
  # Each seed's keys and checkpoints are those it has alone.
  init_rngs, train_rngs = zip(*[_generation_keys(seed, index, labels_only)
                                for seed in seeds])
  ckpts = [_generation_checkpoints(gen_dir, config, run_config)
           for gen_dir in gen_dirs]
  fit_name = BASELINE.lower() if labels_only else index
  try:
    states, progresses = _restore_together(
        trainer, what, teachers, share, init_rngs, ckpts, gen_dirs, seeds)
    if int(parallel.fetch(states[0].step)) < trainer.total_steps:
      _stop_if_requested(what)
      teacher_vars = (None if sources[0] is None else
                      sources[0].variables if shared else
                      [s.variables for s in sources])
      stacked = train.fit_together(
          group, group.stack(states), teacher_vars, data, list(train_rngs),
          ckpts, progresses, seeds=seeds, generation=fit_name,
          teacher_test_logits=[s.test_logits if s else None
                               for s in sources],
          on_epoch=[_each(_log_epoch(f"{fit_name} seed {seed}",
                                     config.num_epochs), callback)
                    for seed, callback in zip(seeds, on_epoch)],
          chain_clock=chain_clock)
      states = [group.unstack(stacked, i) for i in range(len(seeds))]
      del stacked
  finally:
    # Whatever stops the run, the checkpoints being written are finished.
    for ckpt in ckpts:
      ckpt.close()
  return [_record_result(c, index, trainer, state, source, data, progress,
                         gen_dir, labels_only)
          for c, state, source, progress, gen_dir in zip(
              configs, states, sources, progresses, gen_dirs)]


def ensembles(config, generations: list[Generation],
              labels: np.ndarray) -> list[dict[str, Any]]:
  """Ens*k: averaged probabilities of generations 1..k, in that order."""
  sizes = config.ensemble_sizes or range(2, config.num_generations + 1)
  students = [g for g in generations if g.index >= 1]
  probs = [jax.nn.softmax(g.test_logits, axis=-1) for g in students]
  out = []
  for k in sizes:
    mean = np.mean(np.stack(probs[:k]), axis=0)
    accuracy = float(np.mean(mean.argmax(-1) == labels) * 100)
    out.append({"name": f"Ens*{k}", "members": list(range(1, k + 1)),
                "test_accuracy": accuracy, "test_error": 100.0 - accuracy})
  return out


def _config_for_seed(config, seed: int):
  config = config.copy_and_resolve_references()
  config.seed = seed
  return config


def _check_teacher(seed_dir: epath.Path, teacher_ref: str) -> None:
  """Checks that this seed's students learnt from `teacher_ref` (a folder
  of the workdir: 'seed_<s>/gen_0'), if any trained yet, and records in
  `seed_dir/teacher.json` a teacher that is another seed's.

  A seed whose students learnt from another teacher (its own, or another
  seed's, before config.seeds was reordered) cannot go on with this one.
  """
  path = seed_dir / "teacher.json"
  own = f"{seed_dir.name}/gen_0"
  if path.exists():
    recorded = json.loads(path.read_text())["teacher"]
  else:
    recorded = own if _has_started(seed_dir / "gen_0") else None
  if recorded not in (None, teacher_ref):
    raise errors.WorkdirError(
        f"The students in {seed_dir} learn from the teacher in {recorded}, "
        f"not {teacher_ref}. With config.seed_scope='students' the first "
        "of config.seeds trains the teacher of all: list the seeds in "
        "their first order again, or use a new --workdir.")
  if teacher_ref != own and not path.exists() and jax.process_index() == 0:
    seed_dir.mkdir(parents=True, exist_ok=True)
    files.write_atomically(
        path, json.dumps({"teacher": teacher_ref}, indent=2) + "\n")


def _train_or_load(configs: list[Any], index: int,
                   previous: list[Generation | None], folder: str, data,
                   mesh, seed_mesh, workdir: epath.Path, trainers: dict,
                   run_config: dict[str, Any] | None,
                   clock: progress.ChainClock | None,
                   labels_only: bool = False) -> list[Generation]:
  """Network `folder` of each seed of `configs`: alone (one seed) or side
  by side (`run_generations_together`), with its TensorBoard run and its
  place in the run's clock."""
  seeds = [c.seed for c in configs]
  writers = [metrics_writer.create(
      workdir / "tensorboard" / f"seed_{seed}" / folder) for seed in seeds]
  keys = [(seed, folder) for seed in seeds]
  callbacks = [metrics_writer.epoch_callback(w) for w in writers]
  clocks = [None if clock is None else functools.partial(clock.epoch, key)
            for key in keys]
  gen_dirs = [workdir / f"seed_{seed}" / folder for seed in seeds]
  try:
    if len(configs) == 1:
      return [run_generation(
          configs[0], index, previous[0], data, mesh, gen_dirs[0], trainers,
          on_epoch=callbacks[0], run_config=run_config,
          chain_clock=clocks[0], labels_only=labels_only)]
    return run_generations_together(
        configs, index, previous, data, mesh, seed_mesh, gen_dirs, trainers,
        callbacks, run_config, clocks, labels_only=labels_only)
  finally:
    for writer in writers:
      writer.close()
    if clock is not None:
      for key in keys:
        clock.done(key)


def run_chains(configs: list[Any], data: train.DeviceData, mesh,
               workdir: epath.Path, trainers: dict,
               run_config: dict[str, Any] | None = None,
               teacher: Generation | None = None,
               clock: progress.ChainClock | None = None
               ) -> list[tuple[list[Generation], Generation | None]]:
  """Generations 0..G of each seed of `configs` (one config a seed, its
  `seed` set), trained or loaded, and its Baseline
  (config.student_baseline; else None), trained after generation 0.

  Several seeds advance together, one generation at a time, each
  generation of all of them in one compiled program
  (config.parallel_seeds; `run_generations_together`); one seed trains
  alone, as it always did.

  `teacher`: generation 0 of another seed, trained once for all seeds
  (config.seed_scope="students"); these seeds' students learn from it, and
  it is returned as each seed's generation 0. `run_config`: the run's
  config as config.json has it, saved with every checkpoint. `clock`: the
  run's time left, keyed by (seed, folder) (`chain_plan`).

  TensorBoard scalars of generation g go to
  `<workdir>/tensorboard/seed_<s>/gen_<g>` (process 0 only).
  """
  seed_mesh = (parallel.make_seed_mesh(len(configs), mesh.devices.flat)
               if len(configs) > 1 else None)
  for config in configs:
    teacher_seed = teacher.seed if teacher else config.seed
    _check_teacher(workdir / f"seed_{config.seed}",
                   f"seed_{teacher_seed}/gen_0")
  chains: list[list[Generation]] = [[teacher] if teacher else []
                                    for _ in configs]
  baselines = [None] * len(configs)

  def train_or_load(index, previous, folder, labels_only=False):
    return _train_or_load(configs, index, previous, folder, data, mesh,
                          seed_mesh, workdir, trainers, run_config, clock,
                          labels_only)

  for index in range(len(chains[0]), configs[0].num_generations + 1):
    if index == 1 and configs[0].student_baseline:
      baselines = train_or_load(1, [chain[0] for chain in chains],
                                BASELINE.lower(), labels_only=True)
    trained = train_or_load(index, [chain[-1] if chain else None
                                    for chain in chains], f"gen_{index}")
    for chain, generation in zip(chains, trained):
      chain.append(generation)
  return list(zip(chains, baselines))


def run_chain(config, data: train.DeviceData, mesh, workdir: epath.Path,
              trainers: dict, run_config: dict[str, Any] | None = None,
              teacher: Generation | None = None,
              clock: progress.ChainClock | None = None
              ) -> tuple[list[Generation], Generation | None]:
  """`run_chains` of one seed (config.seed): (generations, Baseline)."""
  return run_chains([config], data, mesh, workdir, trainers, run_config,
                    teacher, clock)[0]


def chain_plan(config, num_train: int, workdir: epath.Path
               ) -> list[tuple[tuple[int, str], int]]:
  """((seed, folder), steps to train) for every network the run trains:
  each seed's gen_<g> folders and, with config.student_baseline, its
  baseline; with seed_scope="students" only the first seed's gen_0.

  A network with a result.json is finished: loading it costs about
  nothing. One resumed from a checkpoint counts whole until its first
  epoch tells the clock what it has left.
  """
  steps = num_train // config.batch_size * config.num_epochs
  seeds = config_schema.seed_list(config)
  plan = []
  for seed in seeds:
    folders = [f"gen_{index}" for index in range(config.num_generations + 1)]
    if config.seed_scope == "students" and seed != seeds[0]:
      folders.remove("gen_0")
    if config.student_baseline:
      # Trained right before generation 1, as run_chain does.
      folders.insert(folders.index("gen_1"), BASELINE.lower())
    plan += [((seed, folder),
              0 if (workdir / f"seed_{seed}" / folder /
                    "result.json").exists() else steps)
             for folder in folders]
  return plan


def train_seconds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
  """results.json's `seconds`: each network's training time (the sum of its
  epochs', over every run that trained it), by folder, and the total. A
  teacher shared by the seeds (seed_scope="students") counts once."""
  networks = {}
  for chain in per_seed:
    for g in chain["generations"]:
      seed = g.get("seed", chain["seed"])  # The shared teacher's own seed.
      networks[f"seed_{seed}/gen_{g['generation']}"] = sum(
          r.get("seconds", 0.0) for r in g["history"])
    if "baseline" in chain:
      networks[f"seed_{chain['seed']}/{BASELINE.lower()}"] = sum(
          r.get("seconds", 0.0) for r in chain["baseline"]["history"])
  return {"generations": networks, "total": sum(networks.values())}


def paper_entry(config) -> dict[str, Any] | None:
  """results.json's `paper`: the named row's numbers, or None.

  None as well for a run on a subset of the data (`data.max_*_examples`):
  its errors are not comparable with the paper's at all.
  """
  if not config.paper_row or paper_results.is_capped(config):
    return None
  row = paper_results.get(config.paper_row)
  return {"row": config.paper_row, "table": row.table,
          "setting": row.setting(), "test_error": dict(row.test_error),
          "note": row.note,
          "mismatches": paper_results.mismatches(row, config)}


def run(config, workdir: str, devices=None) -> dict[str, Any]:
  """Trains and evaluates the chain of every seed; returns results.json.

  The run trains on `devices` (default: every device of every process;
  each process must give the same number), the data split over them.

  `results["per_seed"]` holds each seed's generations, Baseline (with
  config.student_baseline) and ensembles, `results["over_seeds"]` each
  column's mean and std over seeds, and `results["generations"]` /
  `["baseline"]` / `["ensembles"]` the first seed's (what a single-seed run
  reports). `results["seed_scope"]` says what the seeds varied: with
  "students", one teacher (the first seed's, "seed" in each seed's teacher
  entry) taught every seed's students.

  Raises:
    workdir_lock.WorkdirLockedError: another run holds `workdir`.
  """
  devices = list(jax.devices() if devices is None else devices)
  validation.validate(config, len(devices))
  preemption.reset()  # A request that stopped an earlier run in this process.
  workdir = epath.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise _unusable(workdir, e) from None
  # One run at a time writes a workdir: from the settings check to results.
  with workdir_lock.hold(workdir):
    return _run_holding(config, workdir, devices)


def _unusable(workdir: epath.Path, error: OSError) -> errors.ConfigError:
  return errors.ConfigError(
      f"Cannot use --workdir={workdir}: {error}. Name a folder you can write "
      "(it is made if missing).")


def seed_groups(seeds: list[int], parallel_seeds: int) -> list[list[int]]:
  """The seeds in the order they run, `parallel_seeds` at a time (the last
  group may be smaller)."""
  return [seeds[i:i + parallel_seeds]
          for i in range(0, len(seeds), parallel_seeds)]


def _seed_results(config, generations: list[Generation],
                  baseline: Generation | None, data: train.DeviceData
                  ) -> dict[str, Any]:
  """results.json's entry of one seed (`per_seed`)."""
  chain = {"seed": config.seed,
           "generations": [g.result for g in generations]}
  if config.seed_scope == "students":
    # Which seed's chain trained this seed's teacher.
    chain["generations"][0] = {**generations[0].result,
                               "seed": generations[0].seed}
  if baseline is not None:
    chain["baseline"] = baseline.result
  chain["ensembles"] = ensembles(config, generations, data.test_labels)
  return chain


def _run_holding(config, workdir: epath.Path, devices) -> dict[str, Any]:
  """`run`, in a workdir this run holds."""
  try:
    _check_workdir_config(workdir, config)
  except OSError as e:
    raise _unusable(workdir, e) from None
  compilation.enable(config.compilation_cache_dir, workdir)
  dataset = load_dataset(config.data)
  mesh = parallel.make_mesh(devices)
  data = train.put_dataset(dataset, mesh, config.eval_batch_size)
  validation.check_batch_fits(config, data.num_train)
  # Shared by the seeds too: one compilation per (student, teacher) pair.
  trainers = {}
  per_seed = []
  run_seeds = config_schema.seed_list(config)
  seed_scope = config.seed_scope
  shared_teacher = None  # seed_scope="students": the first seed's teacher.
  clock = progress.ChainClock(chain_plan(config, data.num_train, workdir))
  groups = seed_groups(run_seeds, config.parallel_seeds)
  for group in groups:
    if len(groups) > 1:
      logging.info("Seed%s %s (%d of %d).", "s" if len(group) > 1 else "",
                   ", ".join(map(str, group)), run_seeds.index(group[0]) + 1,
                   len(run_seeds))
    group_configs = [_config_for_seed(config, seed) for seed in group]
    if (seed_scope == "students" and shared_teacher is None
        and len(group) > 1):
      # The first seed's teacher trains alone before it teaches its group.
      shared_teacher = _train_or_load(
          group_configs[:1], 0, [None], "gen_0", data, mesh, None, workdir,
          trainers, config.to_dict(), clock)[0]
    chains = run_chains(group_configs, data, mesh, workdir, trainers,
                        run_config=config.to_dict(), teacher=shared_teacher,
                        clock=clock)
    for seed_config, (generations, baseline) in zip(group_configs, chains):
      if seed_scope == "students" and shared_teacher is None:
        shared_teacher = generations[0]
      per_seed.append(_seed_results(seed_config, generations, baseline,
                                    data))
    del chains  # Frees the devices of these seeds' networks.
  results = {
      "dataset": dataset.name,
      "loss": config.distill.loss,
      **dkpp_choices(config),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "seeds": run_seeds,
      "seed_scope": seed_scope,
      "generations": per_seed[0]["generations"],
      **({"baseline": per_seed[0]["baseline"]}
         if "baseline" in per_seed[0] else {}),
      "ensembles": per_seed[0]["ensembles"],
      "per_seed": per_seed,
      "over_seeds": report.over_seeds(per_seed, seed_scope),
      "seconds": train_seconds(per_seed),
  }
  paper = paper_entry(config)
  if paper:
    results["paper"] = paper
  results["config"] = config.to_dict()
  if jax.process_index() == 0:
    report.write(workdir, results)
  logging.info("Results (test error %%):\n%s", report.markdown_table(results))
  return results
