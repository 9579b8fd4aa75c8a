"""Every config field of ban_jax, with its default: the one schema.

The values are the paper's training recipe (../shared/PAPER.md, "Training
settings", the Wide-ResNet recipe) for BAN on CIFAR-100 with a WRN-28-10
teacher: SGD with Nesterov momentum 0.9, lr 0.1 x0.2 at epochs 60, 120 and
160 of 200, batch 128, weight decay 5e-4, dropout 0.3, 4-pixel crop and
flip, three born-again generations trained on the teacher's softmax at
T = 1. The shipped configs start from here and change only what differs:
configs/digits.py (the small offline job) and configs/cifar_base.py (the
paper's rows, chosen by the config argument).

A field that some part of ban_jax reads is added here, and only here, with
its rule in `ban_jax/config_schema.py` (type, range, choices), which
`ban_jax/validation.py` checks before any compute; tests/test_configs.py
fails when one of the two is missing. A field that a rerun of one workdir
may change goes in `RERUN_SAFE_FIELDS` below as well. A new field's default
keeps what ran before it existed: a workdir's config.json written without
it is read with its default.
"""

import ml_collections

# Fields that may change between reruns of one workdir (`pipeline` refuses
# other changes once a generation is checkpointed): they do not change what
# a finished generation computed. The data fields only say where the same
# data is found; the others, how many generations and seeds run, what is
# reported, how often it evaluates and saves, and how it compiles.
RERUN_SAFE_FIELDS = (
    "num_generations", "ensemble_sizes", "eval_every_epochs",
    "checkpoint_every_steps", "steps_per_call", "xla_options",
    "compilation_cache_dir", "seeds", "paper_row", "data.source",
    "data.data_dir", "data.archive_path",
    # The same parameters and function, compiled as loops or unrolled.
    "model.layers_per_scan",
    # The Baseline has its own folder and random stream: adding it to a
    # finished workdir changes no generation.
    "student_baseline",
    # Each seed's numbers are those it has alone (to float rounding) and its
    # checkpoints the same files, so the seeds may go on in other groups.
    "parallel_seeds",
)


def get_config() -> ml_collections.ConfigDict:
  """The defaults of every field (the paper's CIFAR-100 WRN-28-10 BAN)."""
  config = ml_collections.ConfigDict()

  # Random seed of the chain; generation g uses fold_in(seed, g).
  config.seed = 0
  # Seeds to run the whole chain with, e.g. (0, 1, 2); empty: just `seed`.
  config.seeds = ()
  # chain: each seed trains its teacher; students: the first seed's teaches all.
  config.seed_scope = "chain"
  # Seeds trained side by side in one compiled program (1: one at a time).
  config.parallel_seeds = 1
  # Born-again generations after the teacher (generation 0).
  config.num_generations = 3
  # Ens*k sizes to report; empty means every k in 2..num_generations.
  config.ensemble_sizes = ()
  # Paper row to report beside ours, e.g. "table2/densenet90_60/ban"; "": none.
  config.paper_row = ""

  config.data = ml_collections.ConfigDict()
  # Dataset name: digits, cifar10 or cifar100.
  config.data.name = "cifar100"
  # Random crop of the padded image + horizontal flip.
  config.data.augment = True
  # Reflect padding before the random crop, in pixels.
  config.data.crop_padding = 4
  # Where CIFAR comes from: auto, tfds or archive (see README, CIFAR data).
  config.data.source = "auto"
  # TFDS data_dir; "": $TFDS_DATA_DIR, else ~/tensorflow_datasets. (A
  # string, not None: ml_collections cannot override a None field.)
  config.data.data_dir = ""
  # Path to the official cifar-10(0)-python.tar.gz, or a folder with it.
  config.data.archive_path = ""
  # Keep only the first this many training examples (0: all); smoke runs.
  config.data.max_train_examples = 0
  # Keep only the first this many test examples (0: all); smoke runs.
  config.data.max_test_examples = 0

  config.model = ml_collections.ConfigDict()
  # Generation 0's network (see `python -m ban_jax.models`).
  config.model.name = "wrn28_10"
  # Dropout between the convolutions of a block (Wide-ResNets).
  config.model.dropout_rate = 0.3
  # Compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU.
  config.model.dtype = "auto"
  # DenseNets: scan each block's layers in groups of this many (1: unrolled).
  config.model.layers_per_scan = 1
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
  # DKPP: one permutation per train example for the whole generation
  # ("example") or a new one every step ("step": on average label smoothing).
  config.distill.dkpp_permutation = "example"
  # Weight of attention transfer (a feature-level baseline) in the loss.
  config.distill.attention_weight = 0.0
  # Weight of FSP (a feature-level baseline) in the loss.
  config.distill.fsp_weight = 0.0

  config.optim = ml_collections.ConfigDict()
  # Initial learning rate of SGD.
  config.optim.learning_rate = 0.1
  # Momentum (Nesterov when `nesterov`).
  config.optim.momentum = 0.9
  # Nesterov momentum, as in the Wide-ResNet recipe.
  config.optim.nesterov = True
  # Coupled L2 weight decay, as in the Wide-ResNet recipe.
  config.optim.weight_decay = 5e-4
  # Epochs at which the learning rate is multiplied by lr_decay_factor.
  config.optim.lr_decay_epochs = (60, 120, 160)
  # Factor of each learning-rate decay.
  config.optim.lr_decay_factor = 0.2

  # Epochs per generation (every generation uses the same schedule).
  config.num_epochs = 200
  # Global batch size, split over all devices.
  config.batch_size = 128
  # Batch size of evaluation; the test set is zero-padded to a multiple.
  config.eval_batch_size = 1000
  # Evaluate on the test split every this many epochs (and at the end).
  # CIFAR's 10k test images cost a few percent of a training epoch.
  config.eval_every_epochs = 1
  # Extra checkpoints every this many steps (0: only at epoch ends).
  config.checkpoint_every_steps = 0
  # Train steps per compiled call (a scan on GPU/TPU): on an H200, 10 took
  # ResNet-18 from 30k to 39k img/s by removing per-call launch gaps.
  config.steps_per_call = 10
  # XLA options of the train step, 'name=value;...' (see train.py).
  config.xla_options = ""
  # JAX's compiled-program cache, so that a rerun skips compiling: inside
  # the workdir when relative, shared when absolute, '' for none.
  config.compilation_cache_dir = "compile_cache"
  return config
