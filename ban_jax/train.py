"""One generation: train state, optimiser, jitted steps and the epoch loop.

The student's update, `student_update`, is a pure function of
(state, images, labels, teacher logits, rng): the teacher's outputs come in
as an input that carries no gradient, so the same update serves cached
logits. `GenerationTrainer.train_steps` composes it, inside one compiled
program, with everything else a step needs: the batch's indices taken from
the device-resident epoch permutation, the gather from the device-resident
dataset, augmentation from the step's RNG, and the teacher's inference-mode
forward pass (`input_batch` is the input part, which
`python -m ban_jax.tools.bench_input` times alone). Nothing crosses between
host and device inside an epoch: `run_epoch` runs one, for `fit` and for
the benchmark (`python -m ban_jax.tools.bench`) alike.
"""

import copy
import dataclasses
import functools
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ban_jax import feature_losses
from ban_jax import losses
# `progress` is fit's name for a generation's history and partial sums.
from ban_jax import progress as progress_lib
from ban_jax.data import augment
from ban_jax.data import Dataset
from ban_jax.errors import ConfigError
from ban_jax.errors import NonFiniteLossError
from ban_jax.models import common
from ban_jax.runtime import compilation
from ban_jax.runtime import parallel
from ban_jax.runtime import preemption

Variables = dict[str, Any]


class TrainState(flax.struct.PyTreeNode):
  """Everything a generation's training carries from step to step."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> Variables:
    return {"params": self.params, "batch_stats": self.batch_stats}


# ---------------------------------------------------------------- optimiser


def learning_rate_schedule(optim, steps_per_epoch: int) -> optax.Schedule:
  """Step decay: lr * factor at each epoch in `optim.lr_decay_epochs`."""
  boundaries = {int(epoch * steps_per_epoch): optim.lr_decay_factor
                for epoch in optim.lr_decay_epochs}
  return optax.piecewise_constant_schedule(optim.learning_rate, boundaries)


def make_optimizer(optim, steps_per_epoch: int,
                   frozen: Callable[[tuple[str, ...]], bool] | None = None
                   ) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and coupled weight decay, as in WRN.

  Args:
    optim: the config's `optim` block.
    steps_per_epoch: to place the learning-rate drops.
    frozen: given a parameter's path, whether it is frozen. Frozen
      parameters get a zero update (no decay, no momentum): optax masking.
  """
  tx = optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.sgd(learning_rate_schedule(optim, steps_per_epoch),
                momentum=optim.momentum or None, nesterov=optim.nesterov))
  if frozen is None:
    return tx

  def labels(params):
    return flax.traverse_util.path_aware_map(
        lambda path, _: "frozen" if frozen(path) else "trained", params)

  return optax.multi_transform(
      {"trained": tx, "frozen": optax.set_to_zero()}, labels)


# ------------------------------------------------------------------- steps


# fold_in data of the generation's DKPP key (`dkpp_example_rng`): the
# steps' keys fold in the step, which stays below 2^31 (an int32 counter),
# so this one is never a step's.
_DKPP_STREAM = 2**32 - 1


def dkpp_example_rng(base_rng: jax.Array) -> jax.Array:
  """The key of DKPP's per-example permutations for a whole generation.

  `base_rng` is the generation's step key (`fit` passes the same one to
  every call of `train_steps`), so this key does not change with the step:
  each training example keeps its permutation for the whole generation.
  """
  return jax.random.fold_in(base_rng, _DKPP_STREAM)


def dkpp_per_example(distill) -> bool:
  """Whether the config's loss is DKPP with one permutation per example."""
  return (distill.loss == "dkpp"
          and distill.dkpp_permutation == "example")


def student_update(state: TrainState, tx: optax.GradientTransformation,
                   student: nn.Module, images: jax.Array, labels: jax.Array,
                   teacher_logits: jax.Array | None, rng: jax.Array,
                   distill, teacher_intermediates=None, *,
                   example_ids: jax.Array | None = None,
                   example_rng: jax.Array | None = None
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step of the student; pure in all its array arguments.

  `teacher_logits` is None for generation 0 (labels only); otherwise the
  config's distillation loss is used and the teacher's logits are treated
  as constants. `teacher_intermediates` (the teacher's sown stage features)
  is needed only when the config adds a feature-level term. DKPP with
  `dkpp_permutation="example"` needs `example_ids`, the batch's indices in
  the train split, and `example_rng`, the generation's key
  (`dkpp_example_rng`); every other loss ignores them.
  """
  dropout_rng, loss_rng = jax.random.split(rng)
  loss_ids = None
  if teacher_logits is not None and dkpp_per_example(distill):
    if example_ids is None or example_rng is None:
      raise ValueError(
          "DKPP with dkpp_permutation='example' needs the batch's example "
          "ids and the generation's key (example_ids, example_rng).")
    loss_rng, loss_ids = example_rng, example_ids
  with_features = (teacher_logits is not None
                   and feature_losses.uses_features(distill))
  if teacher_logits is not None:
    teacher_logits = jax.lax.stop_gradient(teacher_logits)

  def loss_fn(params):
    mutable = ["batch_stats"] + (["intermediates"] if with_features else [])
    logits, new_vars = student.apply(
        {"params": params, "batch_stats": state.batch_stats}, images,
        train=True, mutable=mutable, rngs={"dropout": dropout_rng})
    if teacher_logits is None:
      loss = losses.cross_entropy(logits, labels)
    else:
      loss = losses.distillation_loss(
          distill.loss, logits, teacher_logits, labels, loss_rng,
          temperature=distill.temperature,
          label_weight=distill.label_weight,
          teacher_weight=distill.teacher_weight,
          dkpp_keep_argmax=distill.dkpp_keep_argmax, example_ids=loss_ids)
    if with_features:
      loss += feature_losses.weighted_feature_loss(
          distill, new_vars["intermediates"],
          jax.lax.stop_gradient(teacher_intermediates))
    return loss, (logits, new_vars.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats, opt_state=opt_state)
  metrics = {"loss": loss,
             "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
  if teacher_logits is not None:
    # Student against teacher at T = 1, whatever the loss (see losses.py).
    metrics["kd_t1_dark_knowledge_share"] = losses.dark_knowledge_share(
        logits, teacher_logits, labels)
    if distill.loss in losses.DARK_KNOWLEDGE_LOSSES:
      # The Eq. 7 split of the gradient of the loss that trains the student.
      metrics["loss_dark_knowledge_share"] = losses.loss_dark_knowledge_share(
          distill.loss, logits, teacher_logits, labels,
          temperature=distill.temperature,
          label_weight=distill.label_weight,
          teacher_weight=distill.teacher_weight)
  return new_state, metrics


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """The dataset on the devices (replicated), with its static facts."""
  train_images: jax.Array  # uint8 (N, H, W, C)
  train_labels: jax.Array  # int32 (N,)
  test_images: jax.Array  # uint8, padded to a multiple of the eval batch
  test_labels: np.ndarray  # int32, host, unpadded
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_classes: int

  @property
  def num_train(self) -> int:
    return self.train_images.shape[0]

  @property
  def num_test(self) -> int:
    return self.test_labels.shape[0]


def put_dataset(dataset: Dataset, mesh: Mesh, eval_batch_size: int
                ) -> DeviceData:
  """Copies the dataset to the devices once, for the whole chain."""
  # validation checks config.eval_batch_size against the devices, with the
  # user's message; this guards callers that build their own mesh.
  assert eval_batch_size % mesh.devices.size == 0, (eval_batch_size,
                                                     mesh.devices.size)
  pad = -len(dataset.test_images) % eval_batch_size
  test_images = np.concatenate(
      [dataset.test_images,
       np.zeros((pad,) + dataset.test_images.shape[1:], np.uint8)])
  # Several hosts: each keeps only its block of the train split (see
  # ban_jax/runtime/parallel.py); the test split is whole on every host.
  train_images, train_labels = parallel.put_train_split(
      (dataset.train_images, dataset.train_labels.astype(np.int32)), mesh)
  test_images = parallel.put_replicated(test_images, mesh)
  return DeviceData(train_images, train_labels, test_images,
                    dataset.test_labels.astype(np.int32),
                    dataset.mean, dataset.std, dataset.num_classes)


# ------------------------------------------------------------------- input


@functools.partial(jax.jit, static_argnums=1)
def epoch_permutation(rng: jax.Array, num_examples: int) -> jax.Array:
  """One epoch's order of the examples: a permutation of range(N), int32.

  Step s of the epoch trains on the s-th block of `batch_size` indices
  (`batch_indices`); the last `N % batch_size` indices, a different few
  each epoch, are left out. int32 whatever jax_enable_x64 says, as
  `dynamic_slice` and the gathers take them.
  """
  return jax.random.permutation(rng, num_examples).astype(jnp.int32)


def batch_indices(perm: jax.Array, step_in_epoch, batch_size: int
                  ) -> jax.Array:
  """The (batch_size,) indices of step `step_in_epoch` of the epoch `perm`.

  `step_in_epoch` may be traced. Under jit a step past the epoch's last full
  batch is not an error: `dynamic_slice` clamps it onto the last indices.
  """
  start = jnp.asarray(step_in_epoch, jnp.int32) * batch_size
  return jax.lax.dynamic_slice(perm, (start,), (batch_size,))


def input_batch(train_images: jax.Array, train_labels: jax.Array,
                idx: jax.Array, rng: jax.Array, mesh: Mesh, *,
                crop_flip: bool, crop_padding: int, mean, std
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The train step's input: rows `idx` of the device-resident train split.

  Gathered batch-sharded (`parallel.take_batch`), randomly cropped and
  flipped if `crop_flip`, normalised; to be called inside `jit`. `rng` is
  the step's key: half of it draws the crops and flips, the other half is
  returned for the step's other random choices (dropout, DKPP).

  Returns:
    (float32 images, int32 labels, the rest of `rng`).
  """
  # The gather from the replicated dataset on one host; from the host
  # that holds each row on several.
  images, labels = parallel.take_batch((train_images, train_labels), idx,
                                       mesh)
  aug_rng, rest_rng = jax.random.split(rng)
  if crop_flip:
    images = augment.random_crop_flip(aug_rng, images, crop_padding)
  images = augment.normalize(images, mean, std)
  return images, labels, rest_rng


def steps_program(one_step: Callable[..., Any], num_steps: int
                  ) -> Callable[..., Any]:
  """`num_steps` calls of `one_step(state, *args) -> (state, metrics)` as
  one function (to jit) returning the last state and the summed metrics."""

  def run(state, *args):
    def body(state, _):
      return one_step(state, *args)

    if num_steps == 1:
      # Straight-line code: a one-trip loop only adds copies of the
      # carried state (docs/performance.md).
      return body(state, None)
    if jax.default_backend() != "cpu":
      state, metrics = jax.lax.scan(body, state, None, length=num_steps)
      return state, jax.tree.map(lambda m: jnp.sum(m, 0), metrics)
    # XLA:CPU runs convolutions inside a while loop (any scan, even an
    # unrolled one) 10-20x slower than straight-line code, measured on
    # the digits WRN; so on CPU the steps are unrolled in Python.
    sums = None
    for _ in range(num_steps):
      state, metrics = body(state, None)
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums,
                                                       metrics)
    return state, sums

  return run


class GenerationTrainer:
  """The compiled functions of one generation (a student, maybe a teacher)."""

  def __init__(self, config, student: nn.Module, teacher: nn.Module | None,
               data: DeviceData, mesh: Mesh,
               frozen: Callable[[tuple[str, ...]], bool] | None = None):
    self.config = config
    self.student = student
    self.teacher = teacher
    self.mesh = mesh
    self.batch_size = config.batch_size
    self.steps_per_epoch = data.num_train // self.batch_size
    # validation checks both against the devices and the loaded split, with
    # the user's messages; these guard callers that skipped it.
    assert self.batch_size % parallel.data_shards(mesh) == 0, (
        self.batch_size, parallel.data_shards(mesh))
    assert self.steps_per_epoch >= 1, (self.batch_size, data.num_train)
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.tx = make_optimizer(config.optim, self.steps_per_epoch, frozen)
    self.lr_schedule = learning_rate_schedule(config.optim,
                                              self.steps_per_epoch)
    self.mean, self.std = data.mean, data.std
    self.image_shape = tuple(data.train_images.shape[1:])
    self.eval_batch_size = config.eval_batch_size
    self._replicated = parallel.replicated(mesh)
    self._batch = parallel.batch_sharded(mesh)
    self._train_steps = {}

  def with_mesh(self, mesh: Mesh) -> "GenerationTrainer":
    """The same generation's functions on another mesh of the same devices.

    The seeds' mesh (`parallel.make_seed_mesh`): `SeedGroupTrainer` vmaps
    this copy's `_one_step`, whose batch sharding then names that mesh.
    """
    other = copy.copy(self)
    other.mesh = mesh
    other._replicated = parallel.replicated(mesh)
    other._batch = parallel.batch_sharded(mesh)
    other._train_steps = {}
    other.__dict__.pop("_jitted_init", None)
    other.__dict__.pop("_abstract_state", None)
    return other

  # -- initialisation ------------------------------------------------------

  def _init(self, rng: jax.Array) -> TrainState:
    dummy = jnp.zeros((1,) + self.image_shape, jnp.float32)
    variables = self.student.init({"params": rng, "dropout": rng}, dummy,
                                  train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=self.tx.init(params))

  @functools.cached_property
  def _jitted_init(self):
    # One compiled init per trainer: generations sharing a trainer reuse it.
    return jax.jit(self._init, out_shardings=self._replicated)

  def init_state(self, rng: jax.Array) -> TrainState:
    """A freshly initialised student, replicated over the mesh."""
    return self._jitted_init(rng)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, for Orbax restores."""
    return self._abstract_state

  @functools.cached_property
  def _abstract_state(self) -> TrainState:
    # Traced once per trainer: every generation that shares the trainer
    # restores into the same shapes.
    shapes = jax.eval_shape(self._init, jax.random.key(0))
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                       sharding=self._replicated), shapes)

  def prepare_teacher(self, variables: Variables | None) -> Variables | None:
    """The teacher's variables as the train step reads them.

    Convolutions cast their kernels to the compute dtype on every use; a
    teacher's kernels never change, so they are cast once here instead of
    in every step (bit-identical outputs: the cast in the step becomes a
    no-op). Batch-norm parameters and statistics stay float32, and so does
    the classifier's kernel when the classifier computes in float32 (the
    default; see common.global_pool_logits). The casts matter at one step
    per call; a scan of several steps already hoists them out of its loop
    (docs/performance.md).
    """
    if variables is None or self.teacher is None:
      return variables
    dtype = jnp.dtype(common.resolve_dtype(getattr(self.teacher, "dtype",
                                                   None)))
    if dtype == jnp.float32:
      return variables
    keep_classifier = getattr(self.teacher, "float32_classifier", True)

    def cast(path, leaf):
      keys = [getattr(k, "key", None) for k in path]
      is_kernel = keys[-1] == "kernel"
      if keep_classifier and "classifier" in keys:
        return leaf  # A bfloat16 copy would round the float32 classifier.
      return leaf.astype(dtype) if is_kernel else leaf

    return jax.jit(lambda v: jax.tree_util.tree_map_with_path(cast, v),
                   out_shardings=self._replicated)(variables)

  # -- training --------------------------------------------------------------

  def _batch_indices(self, state, perm):
    """This step's batch: (batch,) global indices into the train split.

    `perm` is replicated and indexes the global train array (on several
    hosts, the concatenation of their blocks; see parallel.py), so an
    example's index is the same whichever host holds its row.
    """
    return batch_indices(perm, state.step % self.steps_per_epoch,
                         self.batch_size)

  def _batch_from_device(self, state, data_images, data_labels, perm, rng):
    """Indices of this step's batch -> augmented, normalised images."""
    idx = self._batch_indices(state, perm)
    return input_batch(data_images, data_labels, idx, rng, self.mesh,
                       crop_flip=self.config.data.augment,
                       crop_padding=self.config.data.crop_padding,
                       mean=self.mean, std=self.std)

  def _one_step(self, state, teacher_vars, data_images, data_labels, perm,
                base_rng):
    rng = jax.random.fold_in(base_rng, state.step)
    images, labels, rng = self._batch_from_device(
        state, data_images, data_labels, perm, rng)
    teacher_logits = teacher_intermediates = None
    with_features = feature_losses.uses_features(self.config.distill)
    if self.teacher is not None and with_features:
      teacher_logits, sown = self.teacher.apply(
          teacher_vars, images, train=False, mutable=["intermediates"])
      teacher_intermediates = sown["intermediates"]
    elif self.teacher is not None:
      teacher_logits = self.teacher.apply(teacher_vars, images, train=False)
    return student_update(state, self.tx, self.student, images, labels,
                          teacher_logits, rng, self.config.distill,
                          teacher_intermediates,
                          example_ids=self._batch_indices(state, perm),
                          example_rng=dkpp_example_rng(base_rng))

  @staticmethod
  def epoch_order(perm_rng: jax.Array, epoch: int, num_examples: int
                  ) -> jax.Array:
    """The epoch's permutation of the train split (`run_epoch`'s)."""
    return epoch_permutation(jax.random.fold_in(perm_rng, epoch),
                             num_examples)

  def train_steps(self, num_steps: int):
    """A compiled function running `num_steps` steps in one call.

    Signature: (state, teacher_vars, train_images, train_labels, perm, rng)
    -> (state, summed metrics). Scanning several steps per call removes the
    per-step launch overhead that dominates tiny models; the state is
    donated so its buffers are updated in place.
    """
    if num_steps not in self._train_steps:
      self._train_steps[num_steps] = jax.jit(
          steps_program(self._one_step, num_steps), donate_argnums=(0,),
          out_shardings=self._replicated,
          compiler_options=compilation.xla_compiler_options(
              self.config.xla_options) or None)
    return self._train_steps[num_steps]

  # -- evaluation ------------------------------------------------------------

  def predict(self, module: nn.Module, variables: Variables,
              images: jax.Array) -> jax.Array:
    """Inference-mode logits for padded uint8 images, in one compiled call."""
    return _predict(module, self.eval_batch_size, self.mean, self.std,
                    self._batch, variables, images)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _predict(module, eval_batch_size, mean, std, batch_sharding, variables,
             images):
  chunks = images.reshape((-1, eval_batch_size) + images.shape[1:])

  def logits_of(chunk):
    chunk = jax.lax.with_sharding_constraint(chunk, batch_sharding)
    return module.apply(variables, augment.normalize(chunk, mean, std),
                        train=False)

  logits = jax.lax.map(logits_of, chunks)
  return logits.reshape((-1, logits.shape[-1]))


# ------------------------------------------------------------ epoch loop


def _host_sums(sums) -> dict[str, Any]:
  """Summed metrics on the host: floats, or lists of one float a seed
  (`SeedGroupTrainer`); JSON either way, for the checkpoint's progress."""
  return {k: np.asarray(v).tolist() for k, v in parallel.fetch(sums).items()}


def _check_finite(sums: dict[str, Any], generation: int | str, steps: str,
                  ckpt) -> None:
  """Raises NonFiniteLossError if the summed loss is NaN or infinite.

  Seeds side by side have a loss each, and `ckpt` (`SeedCheckpoints`)
  names their seeds: the message says which seeds failed.
  """
  loss = np.asarray(sums.get("loss", 0.0))
  failed = np.flatnonzero(~np.isfinite(loss.reshape(-1)))
  if not failed.size:
    return
  where = ""
  if loss.ndim:
    seeds = [ckpt.seeds[i] for i in failed]
    where = (f" of seed {seeds[0]}" if len(seeds) == 1 else
             f" of seeds {', '.join(map(str, seeds))}")
  raise NonFiniteLossError(
      f"Non-finite training loss{where} in generation {generation} at steps "
      f"{steps}. {ckpt.last_good_message()}")


def evaluate(data: DeviceData, logits: np.ndarray,
             teacher_logits: np.ndarray | None) -> dict[str, float]:
  """Test metrics from host logits (unpadded)."""
  labels = data.test_labels
  metrics = {
      "test_loss": float(losses.cross_entropy(logits, labels)),
      "test_accuracy": float(np.mean(logits.argmax(-1) == labels) * 100),
  }
  if teacher_logits is not None:
    metrics["teacher_agreement"] = float(
        losses.agreement(teacher_logits, logits) * 100)
    metrics["teacher_student_kl"] = float(
        losses.kl_divergence(teacher_logits, logits))
  return metrics


def test_logits(trainer: GenerationTrainer, module: nn.Module,
                variables: Variables, data: DeviceData) -> np.ndarray:
  logits = trainer.predict(module, variables, data.test_images)
  return parallel.fetch(logits)[:data.num_test]


def epoch_calls(step: int, steps_per_epoch: int, steps_per_call: int,
                checkpoint_every: int = 0) -> list[int]:
  """The steps of each compiled call from `step` to the end of its epoch.

  Calls of `steps_per_call` steps (at least 1), cut short at the epoch's
  end and at each multiple of `checkpoint_every` (0: none), the steps after
  which a checkpoint can be saved.
  """
  epoch_end = (step // steps_per_epoch + 1) * steps_per_epoch
  sizes = []
  while step < epoch_end:
    n = min(max(1, steps_per_call), epoch_end - step)
    if checkpoint_every:
      n = min(n, checkpoint_every - step % checkpoint_every)
    sizes.append(n)
    step += n
  return sizes


def run_epoch(trainer: GenerationTrainer, state: TrainState,
              teacher_vars: Variables | None, data: DeviceData,
              perm_rng: jax.Array, step_rng: jax.Array, step: int, *,
              sums: dict[str, jax.Array] | None = None,
              after_call: Callable[..., None] | None = None,
              train_steps: Callable[[int], Callable[..., Any]] | None = None
              ) -> tuple[TrainState, dict[str, float]]:
  """Trains from `step` to the end of its epoch, as `fit` and the benchmark do.

  The epoch's order is `epoch_permutation(fold_in(perm_rng, epoch))`; the
  steps run in the compiled calls `epoch_calls` gives for the config; the
  metrics are summed on the devices and fetched to the host once, at the
  end, so nothing waits for the host inside the epoch.

  Args:
    trainer: the generation's trainer.
    state: the state at `step`.
    teacher_vars: as `trainer.prepare_teacher` returns them (None: labels
      only).
    data: the dataset on the devices.
    perm_rng: the generation's key of epoch orders.
    step_rng: the generation's key of steps (each step folds in its number).
    step: `state.step`, known on the host (reading it would wait for the
      devices).
    sums: the summed metrics of the epoch's steps before `step` (a resumed
      epoch), or None.
    after_call: called as `after_call(step, num_steps, state, sums)` after
      each call, with the step reached; `fit` checkpoints there.
    train_steps: num_steps -> the compiled call (default
      `trainer.train_steps`); the benchmark passes the same programs,
      compiled ahead of time to time the compiles.

  Returns:
    (the state at the epoch's end, the epoch's summed metrics on the host).
  """
  config = trainer.config
  train_steps = train_steps or trainer.train_steps
  perm = trainer.epoch_order(perm_rng, step // trainer.steps_per_epoch,
                             data.num_train)
  for n in epoch_calls(step, trainer.steps_per_epoch, config.steps_per_call,
                       config.checkpoint_every_steps):
    state, metrics = train_steps(n)(
        state, teacher_vars, data.train_images, data.train_labels, perm,
        step_rng)
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    step += n
    if after_call is not None:
      after_call(step, n, state, sums)
  return state, _host_sums(sums)


class _MidEpochSaves:
  """`fit`'s `after_call`: the checkpoints inside one epoch.

  After every call it asks `preemption.reached`. A stop request, or a step
  at a multiple of `checkpoint_every_steps`, saves the step reached with
  the epoch's partial sums; a stop then raises `StopRequested` once the
  save is on disk. The epoch's last step is left to `fit`, which saves it
  with the epoch's record; a stop that arrives with it waits in `stop`.
  """

  def __init__(self, trainer: GenerationTrainer, ckpt,
               progress: dict[str, Any], generation: int, first_step: int):
    self.ckpt, self.progress, self.generation = ckpt, progress, generation
    self.first_step = first_step
    self.every = trainer.config.checkpoint_every_steps
    spe = trainer.steps_per_epoch
    self.epoch_end = (first_step // spe + 1) * spe
    self.stop = None

  def __call__(self, step: int, num_steps: int, state: TrainState,
               sums) -> None:
    self.stop = preemption.reached(step - num_steps + 1, step)
    if step < self.epoch_end and (
        self.stop or (self.every and step % self.every == 0)):
      self.progress["epoch_sums"] = _host_sums(sums)
      _check_finite(self.progress["epoch_sums"], self.generation,
                    f"{self.first_step}-{step}", self.ckpt)
      self.ckpt.save(step, state, self.progress)
      if self.stop:
        _stop(self.stop, self.generation, step, self.ckpt)


def _partial_sums(progress: dict[str, Any]) -> dict[str, jax.Array] | None:
  """The summed metrics of a resumed epoch's earlier steps, or None."""
  partial = progress.get("epoch_sums") or None
  return (None if partial is None else
          {k: jnp.asarray(v, jnp.float32) for k, v in partial.items()})


def _epoch_record(trainer: GenerationTrainer, state: TrainState,
                  data: DeviceData, sums: dict[str, float], first_step: int,
                  step: int, seconds: float,
                  teacher_test_logits: np.ndarray | None) -> dict[str, Any]:
  """The history's entry of the epoch that ended at `step`."""
  spe, total = trainer.steps_per_epoch, trainer.total_steps
  epoch = step // spe
  record = {"epoch": epoch, "step": step,
            "learning_rate": float(trainer.lr_schedule(step - 1))}
  record.update({f"train_{k}": v / spe for k, v in sums.items()})
  record["train_accuracy"] *= 100
  record["images_per_second"] = (step - first_step) * trainer.batch_size / max(
      seconds, 1e-9)
  if epoch % trainer.config.eval_every_epochs == 0 or step == total:
    logits = test_logits(trainer, trainer.student, state.variables, data)
    record.update(evaluate(data, logits, teacher_test_logits))
  record["seconds_left"] = seconds / max(step - first_step, 1) * (
      total - step)
  # The epoch's training time (its evaluation aside): results.json sums
  # them into each generation's time.
  record["seconds"] = seconds
  return record


def _with_bar(after_call: Callable[..., None], generation: int,
              steps_per_epoch: int, step: int) -> Callable[..., None]:
  """`after_call`, advancing a progress bar over the epoch from `step`
  (drawn on an interactive terminal only: `progress.epoch_bar`)."""
  epoch_start = step // steps_per_epoch * steps_per_epoch
  bar = progress_lib.epoch_bar(
      steps_per_epoch, f"gen {generation} epoch "
      f"{step // steps_per_epoch + 1}", initial=step - epoch_start,
      enabled=jax.process_index() == 0)

  def call(reached: int, num_steps: int, state, sums) -> None:
    bar.update(num_steps)
    if reached - epoch_start >= steps_per_epoch:
      bar.close()  # Before fit logs the epoch's line.
    try:
      after_call(reached, num_steps, state, sums)
    except BaseException:
      bar.close()  # A stop request: the message, not a half bar, ends.
      raise
  return call


def fit(trainer: GenerationTrainer, state: TrainState,
        teacher_vars: Variables | None, data: DeviceData, rng: jax.Array,
        ckpt, progress: dict[str, Any], *, generation: int,
        teacher_test_logits: np.ndarray | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        chain_clock: Callable[..., float | None] | None = None
        ) -> tuple[TrainState, dict[str, Any]]:
  """Trains from `state` to the end of the generation, checkpointing.

  Every random choice is a function of (rng, step) or (rng, epoch), so a run
  resumed from a checkpoint takes exactly the steps an uninterrupted run
  takes. `progress` (history and the current epoch's partial sums) travels
  in the checkpoint for the same reason. A stop request (SIGTERM, Ctrl-C:
  `ban_jax.runtime.preemption`) checkpoints the step reached, mid-epoch or
  not, and raises `preemption.StopRequested`.

  `chain_clock(steps, seconds, steps_left, compiled)`, if given, gets each
  epoch's timing and returns the whole run's seconds left, which the
  epoch's record keeps as `chain_seconds_left` (`progress.ChainClock`).
  """
  perm_rng, step_rng = jax.random.split(rng)
  total = trainer.total_steps
  step = int(parallel.fetch(state.step))
  teacher_vars = trainer.prepare_teacher(teacher_vars)
  history = progress.setdefault("history", [])
  fit_start = step
  while step < total:
    first_step = step
    state, sums, step, seconds, stop = _one_epoch(
        trainer, state, teacher_vars, data, perm_rng, step_rng, step, ckpt,
        progress, generation)
    record = _epoch_record(trainer, state, data, sums, first_step, step,
                           seconds, teacher_test_logits)
    if chain_clock is not None:
      record["chain_seconds_left"] = chain_clock(
          step - first_step, seconds, total - step,
          # This call's first epoch compiled its steps (or loaded them).
          compiled=first_step == fit_start)
    history.append(record)
    progress["epoch_sums"] = {}
    ckpt.save(step, state, progress)
    if on_epoch is not None:
      on_epoch(record)
    if stop and step < total:
      _stop(stop, generation, step, ckpt)
  ckpt.wait()
  return state, progress


def _one_epoch(trainer, state: TrainState, teacher_vars, data: DeviceData,
               perm_rng: jax.Array, step_rng: jax.Array, step: int, ckpt,
               progress: dict[str, Any], generation: int | str
               ) -> tuple[TrainState, dict[str, Any], int, float, str | None]:
  """`fit`'s epoch from `step` (`fit_together`'s too): `run_epoch` with the
  mid-epoch saves and a progress bar, then the loss checked.

  Returns:
    (the state at the epoch's end, its host sums, its end step, its
    seconds, the stop request that arrived during it or None).
  """
  first_step, start = step, time.perf_counter()
  spe = trainer.steps_per_epoch
  saves = _MidEpochSaves(trainer, ckpt, progress, generation, first_step)
  state, sums = run_epoch(trainer, state, teacher_vars, data, perm_rng,
                          step_rng, step, sums=_partial_sums(progress),
                          after_call=_with_bar(saves, generation, spe, step))
  seconds = time.perf_counter() - start
  step = (step // spe + 1) * spe
  _check_finite(sums, generation, f"{first_step}-{step}", ckpt)
  return state, sums, step, seconds, saves.stop


def _stop(reason: str, generation: int, step: int, ckpt) -> None:
  ckpt.wait()  # The checkpoint of `step` is on disk before anyone exits.
  raise preemption.StopRequested(
      f"Stopped by {reason} in generation {generation} at step {step}, "
      f"checkpointed in {ckpt.directory}/{step}. Rerun the same command to "
      "continue from there.", reason)


# ------------------------------------------------------- seeds side by side


class SeedGroupTrainer:
  """One generation of several seeds, trained in one compiled program.

  The seeds' train states are stacked on a leading axis and sharded over
  the `seed` axis of the seeds' mesh (`parallel.make_seed_mesh`). A
  compiled call is `steps_program` over `jax.vmap` of the one-seed step
  (`GenerationTrainer._one_step`, unchanged), so each seed gets its own
  batch order, crops, dropout and batch-norm statistics from the keys it
  has alone. `alone` is that one-seed trainer on the run's plain mesh: the
  seeds are initialised, evaluated and checkpointed with it, one at a time,
  so each seed's checkpoints are those of the seed run alone.

  `shared_teacher`: one teacher for every seed (seed_scope="students"),
  passed unstacked and broadcast by the vmap; else one a seed, stacked.
  """

  def __init__(self, alone: GenerationTrainer, seed_mesh: Mesh,
               shared_teacher: bool = False):
    self.alone = alone
    self.config = alone.config
    self.mesh = seed_mesh
    self.batch_size = alone.batch_size
    self.steps_per_epoch = alone.steps_per_epoch
    self.total_steps = alone.total_steps
    self.shared_teacher = shared_teacher
    self._per_seed = alone.with_mesh(seed_mesh)
    self._stacked = parallel.seed_sharded(seed_mesh)
    self._one_copy = parallel.replicated(alone.mesh)
    self._train_steps = {}
    self._unstack = {}

  def stack(self, trees: list[Any]) -> Any:
    """One tree a seed (states, variables, keys) -> stacked, seed-sharded."""
    return jax.tree.map(lambda *xs: self._put_stacked(xs), *trees)

  def _put_stacked(self, xs: tuple[jax.Array, ...]) -> jax.Array:
    if jax.process_count() > 1 and xs[0].is_fully_addressable:
      # Values made on this host alone (the seeds' keys), the same on every
      # host: they reach the other hosts' devices through host memory
      # (device_put checks that every process passes the same).
      if jax.dtypes.issubdtype(xs[0].dtype, jax.dtypes.prng_key):
        data = np.stack([np.asarray(jax.random.key_data(x)) for x in xs])
        return jax.random.wrap_key_data(
            jax.device_put(data, self._stacked),
            impl=jax.random.key_impl(xs[0]))
      return jax.device_put(np.stack([np.asarray(x) for x in xs]),
                            self._stacked)
    return jax.device_put(jnp.stack(xs), self._stacked)

  def unstack(self, tree: Any, index: int) -> Any:
    """Seed `index`'s part of a stacked tree, placed as `alone` places it.

    One compiled call for the whole tree: leaf by leaf, every slice and
    copy was a dispatch of its own, and a state has hundreds of leaves.
    """
    if index not in self._unstack:
      self._unstack[index] = jax.jit(
          lambda tree: jax.tree.map(lambda x: x[index], tree),
          out_shardings=self._one_copy)
    return self._unstack[index](tree)

  def put_data(self, data: DeviceData) -> DeviceData:
    """The train split on the seeds' mesh (replicated, as on the plain one:
    the same device buffers where JAX can share them)."""
    replicated = parallel.replicated(self.mesh)
    return dataclasses.replace(
        data, train_images=jax.device_put(data.train_images, replicated),
        train_labels=jax.device_put(data.train_labels, replicated))

  def prepare_teacher(self, variables) -> Variables | None:
    """`alone.prepare_teacher` of the shared teacher (on the seeds' mesh),
    or of each seed's (a list), stacked; None: labels only."""
    if variables is None or self.alone.teacher is None:
      return None
    if self.shared_teacher:
      return jax.device_put(self.alone.prepare_teacher(variables),
                            parallel.replicated(self.mesh))
    return self.stack([self.alone.prepare_teacher(v) for v in variables])

  def epoch_order(self, perm_rng: jax.Array, epoch: int, num_examples: int
                  ) -> jax.Array:
    """Each seed's permutation of the epoch (`perm_rng`: one key a seed)."""
    perms = jax.vmap(lambda rng: GenerationTrainer.epoch_order(
        rng, epoch, num_examples))(perm_rng)
    return jax.device_put(perms, self._stacked)

  def train_steps(self, num_steps: int):
    """`GenerationTrainer.train_steps` of every seed at once: the same
    signature, with a stacked state, teacher (unless shared), permutation
    and key, and summed metrics of one value a seed."""
    if num_steps not in self._train_steps:
      one_step = jax.vmap(
          self._per_seed._one_step,  # pylint: disable=protected-access
          in_axes=(0, None if self.shared_teacher else 0, None, None, 0, 0))
      # Manual over the seed axis: each device vmaps over the seeds it
      # holds, and XLA partitions only the data axes. Left to XLA's
      # partitioner, the seed axis of vmap's grouped convolutions is split
      # wrongly unless every convolution's channels divide by the number of
      # seed shards (a DenseNet's do not; tests/test_seeds_parallel.py).
      seed, everywhere = P(parallel.SEED_AXIS), P()
      program = jax.shard_map(
          steps_program(one_step, num_steps), mesh=self.mesh,
          in_specs=(seed, everywhere if self.shared_teacher else seed,
                    everywhere, everywhere, seed, seed),
          out_specs=seed, axis_names={parallel.SEED_AXIS})
      self._train_steps[num_steps] = jax.jit(
          program, donate_argnums=(0,), out_shardings=self._stacked,
          compiler_options=compilation.xla_compiler_options(
              self.config.xla_options) or None)
    return self._train_steps[num_steps]

  def check_fits(self, state: TrainState, teacher_vars, data: DeviceData,
                 perm: jax.Array, rng: jax.Array, num_steps: int) -> None:
    """Refuses seeds side by side that would not fit in a device's memory.

    XLA's account of the compiled call (arguments, outputs and
    temporaries, less the donated state) against the device's memory
    limit; all of it but the train split grows with the seeds a device
    holds, which gives the most seeds that fit. Skipped where the backend
    has no memory limit (CPU). The compiled program is the one training
    then runs (JAX keeps it).

    Raises:
      ConfigError: it does not fit; the message names the most that do.
    """
    limit = parallel.device_memory_limit(self.mesh)
    if not limit:
      return
    analysis = self.train_steps(num_steps).lower(
        state, teacher_vars, data.train_images, data.train_labels, perm,
        rng).compile().memory_analysis()
    if analysis is None:
      return
    need = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    if need <= limit:
      return
    num_seeds = state.step.shape[0]
    seed_shards = self.mesh.shape[parallel.SEED_AXIS]
    fixed = data.train_images.nbytes + data.train_labels.nbytes
    per_seed = max(need - fixed, 1) / (num_seeds // seed_shards)
    fits = max(int((limit - fixed) // per_seed), 0) * seed_shards
    gib = 2**30
    advice = (f"use config.parallel_seeds={fits} or fewer" if fits > 1 else
              "train the seeds one at a time (config.parallel_seeds=1)")
    raise ConfigError(
        f"{num_seeds} seeds side by side need about {need / gib:.1f} GiB on "
        f"each device, more than its {limit / gib:.1f} GiB: {advice}.")


class SeedCheckpoints:
  """The checkpoints of seeds side by side, as `fit` uses one generation's.

  `save` unstacks the state and saves each seed's part in that seed's own
  checkpoints with that seed's progress (its share of the epoch's partial
  sums), as the seed run alone saves them. `directory` names them all in
  messages, with brace notation: `.../seed_{0,1,2}/gen_1/checkpoints`.
  """

  def __init__(self, group: SeedGroupTrainer, ckpts: list[Any],
               progresses: list[dict[str, Any]], seeds: list[int]):
    self.group, self.ckpts, self.progresses = group, ckpts, progresses
    self.seeds = list(seeds)
    first = ckpts[0].directory
    seed_dir = first.parent.parent
    self.directory = (f"{seed_dir.parent}/seed_{{"
                      f"{','.join(map(str, self.seeds))}}}/"
                      f"{first.relative_to(seed_dir)}")

  def save(self, step: int, state: TrainState,
           progress: dict[str, Any]) -> None:
    sums = progress.get("epoch_sums") or {}
    for i, (ckpt, own) in enumerate(zip(self.ckpts, self.progresses)):
      own["epoch_sums"] = {k: v[i] for k, v in sums.items()}
      ckpt.save(step, self.group.unstack(state, i), own)

  def last_good_message(self) -> str:
    # The seeds save the same steps: the first seed's message, naming all.
    return self.ckpts[0].last_good_message().replace(
        str(self.ckpts[0].directory), self.directory)

  def wait(self) -> None:
    for ckpt in self.ckpts:
      ckpt.wait()


def fit_together(group: SeedGroupTrainer, state: TrainState, teacher_vars,
                 data: DeviceData, rngs: list[jax.Array], ckpts: list[Any],
                 progresses: list[dict[str, Any]], *, seeds: list[int],
                 generation: int | str,
                 teacher_test_logits: list[np.ndarray | None],
                 on_epoch: list[Callable[[dict[str, Any]], None] | None],
                 chain_clock: list[Callable[..., float | None] | None]
                 ) -> TrainState:
  """`fit` for seeds side by side: trains the stacked `state` to the end.

  Everything `fit` takes for one seed comes as one a seed (`rngs`, `ckpts`,
  `progresses`, updated in place, `teacher_test_logits`, `on_epoch`,
  `chain_clock`), except `teacher_vars`: None, one teacher's variables
  (`group.shared_teacher`) or a list of one a seed. Each seed's epoch
  records are those the seed alone writes, evaluated one seed at a time;
  `seconds` is the seed's share of the program's time (results.json's
  totals then add up to the run's), `images_per_second` one seed's rate.
  A non-finite loss names its seeds; a stop request checkpoints every
  seed at the step reached.
  """
  keys = jax.vmap(jax.random.split)(group.stack(rngs))
  perm_rng, step_rng = keys[:, 0], keys[:, 1]
  total = group.total_steps
  share = 1 / len(seeds)
  step = int(parallel.fetch(state.step)[0])  # Every seed's.
  teacher_vars = group.prepare_teacher(teacher_vars)
  seed_data = group.put_data(data)
  if step < total:
    config = group.config
    first_call = epoch_calls(step, group.steps_per_epoch,
                             config.steps_per_call,
                             config.checkpoint_every_steps)[0]
    group.check_fits(state, teacher_vars, seed_data,
                     group.epoch_order(perm_rng, 0, data.num_train),
                     step_rng, first_call)
  saved = SeedCheckpoints(group, ckpts, progresses, seeds)
  partial = [p.get("epoch_sums") or {} for p in progresses]
  # fit's progress for the stacked run: the epoch's partial sums, a list a
  # metric (SeedCheckpoints.save hands each seed its own).
  together = {"epoch_sums": {k: [p[k] for p in partial] for k in partial[0]}}
  fit_start = step
  while step < total:
    first_step = step
    state, sums, step, seconds, stop = _one_epoch(
        group, state, teacher_vars, seed_data, perm_rng, step_rng, step,
        saved, together, generation)
    for i, progress in enumerate(progresses):
      seed_state = group.unstack(state, i)
      record = _epoch_record(group.alone, seed_state, data,
                             {k: v[i] for k, v in sums.items()}, first_step,
                             step, seconds, teacher_test_logits[i])
      record["seconds"] = seconds * share
      if chain_clock[i] is not None:
        record["chain_seconds_left"] = chain_clock[i](
            step - first_step, seconds * share, total - step,
            compiled=first_step == fit_start)
      progress.setdefault("history", []).append(record)
      progress["epoch_sums"] = {}
      ckpts[i].save(step, seed_state, progress)
      if on_epoch[i] is not None:
        on_epoch[i](record)
    together["epoch_sums"] = {}
    if stop and step < total:
      _stop(stop, generation, step, saved)
  saved.wait()
  return state
