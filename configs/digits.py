"""Born-again chain on scikit-learn's digits: the built-in, offline job.

A WRN-10-2 teacher and three born-again generations (BAN, T = 1) on the 8x8
digits, with the fixed stratified split of `ban_jax/data/digits.py`. Runs on
a laptop CPU in about a minute:

  python -m ban_jax.main --config=configs/digits.py --workdir=runs/digits

Override any field from the command line, e.g. `--config.num_generations=2`
or `--config.distill.loss=kd+label`.
"""

import ml_collections


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
  if argument:
    raise ValueError(
        f"configs/digits.py takes no argument (got {argument!r}): it is "
        "already a small job. Override fields instead, e.g. "
        "--config.num_epochs=2.")
  config = ml_collections.ConfigDict()

  # Random seed of the chain; generation g uses fold_in(seed, g).
  config.seed = 0
  # Seeds to run the whole chain with, e.g. (0, 1, 2); empty: just `seed`.
  config.seeds = ()
  # chain: each seed trains its teacher; students: the first seed's teaches all.
  config.seed_scope = "chain"
  # Born-again generations after the teacher (generation 0).
  config.num_generations = 3
  # Ens*k sizes to report; empty means every k in 2..num_generations.
  config.ensemble_sizes = ()
  # Paper row to report beside ours, e.g. "table2/densenet90_60/ban"; "": none.
  config.paper_row = ""

  config.data = ml_collections.ConfigDict()
  # Dataset name: digits, cifar10 or cifar100.
  config.data.name = "digits"
  # Random crop of the padded image + horizontal flip (off: 8x8 digits).
  config.data.augment = False
  # Reflect padding before the random crop, in pixels.
  config.data.crop_padding = 4

  config.model = ml_collections.ConfigDict()
  # Generation 0's network (see `python -m ban_jax.models`).
  config.model.name = "wrn10_2"
  # Dropout between the convolutions of a block (Wide-ResNets).
  config.model.dropout_rate = 0.0
  # Compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU.
  config.model.dtype = "auto"
  # Network of generations >= 1; empty means the same as model.name.
  config.student_model = ""
  # Dropout of generations >= 1; negative means model.dropout_rate.
  config.student_dropout_rate = -1.0
  # Copy the teacher's stem conv and classifier into students, frozen.
  config.share_stem_classifier = False
  # Also train the students' network from labels alone ("Baseline" column).
  config.student_baseline = False

  config.distill = ml_collections.ConfigDict()
  # Loss of generations >= 1: ce, kd (BAN), kd+label (BAN+L), cwtm, dkpp.
  config.distill.loss = "kd"
  # Softmax temperature of kd / kd+label; the loss is scaled by T^2.
  config.distill.temperature = 1.0
  # Weight of the label cross-entropy in kd+label.
  config.distill.label_weight = 1.0
  # Weight of the teacher cross-entropy in kd and kd+label.
  config.distill.teacher_weight = 1.0
  # DKPP: keep the max at the teacher's argmax instead of the true label.
  config.distill.dkpp_keep_argmax = False
  # DKPP: example (one permutation per train example for the generation) or
  # step (a new one at every step: on average, only label smoothing).
  config.distill.dkpp_permutation = "example"
  # Feature-level baselines added to the loss: attention transfer and FSP.
  config.distill.attention_weight = 0.0
  config.distill.fsp_weight = 0.0

  config.optim = ml_collections.ConfigDict()
  # Initial learning rate of SGD.
  config.optim.learning_rate = 0.05
  # Momentum (Nesterov when `nesterov`).
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  # Coupled L2 weight decay, as in the Wide-ResNet recipe.
  config.optim.weight_decay = 5e-4
  # Epochs at which the learning rate is multiplied by lr_decay_factor.
  config.optim.lr_decay_epochs = (8, 12)
  config.optim.lr_decay_factor = 0.2

  # Epochs per generation (every generation uses the same schedule).
  config.num_epochs = 15
  # Global batch size, split over all devices.
  config.batch_size = 64
  # Batch size of evaluation; the test set is zero-padded to a multiple.
  config.eval_batch_size = 128
  # Evaluate on the test split every this many epochs (and at the end).
  config.eval_every_epochs = 1
  # Extra checkpoints every this many steps (0: only at epoch ends).
  config.checkpoint_every_steps = 0
  # Train steps scanned in one compiled call (fewer launches for tiny nets).
  config.steps_per_call = 1
  # XLA options of the train step, 'name=value;...' (see train.py).
  config.xla_options = ""
  # JAX's compiled-program cache, so that a rerun skips compiling: inside
  # the workdir when relative, shared when absolute, '' for none.
  config.compilation_cache_dir = "compile_cache"
  return config
