"""The paper's test errors, as data, for the report to put beside ours.

A config names a row with `config.paper_row`, a key of `ROWS`:

  table<N>/<teacher>/<variant>

where <teacher> is our model name of the paper's generation 0 and <variant>
is either the loss of generations >= 1 (`ban`, `ban+l`, `cwtm`, `dkpp`) for
a chain of one architecture, or the student's model name for a
cross-architecture chain (Tables 3 and 5). E.g. `table2/densenet90_60/ban`,
`table2/densenet90_60/cwtm`, `table3/wrn28_10/densenet90_60`,
`table5/densenet90_60/densewrn1_1`. Each row's numbers are keyed by our
report's column names (Teacher, Baseline, BAN-1, BAN-2, ..., Ens*2, ...),
so that a run's column and the paper's number for it line up; Baseline is
Table 5's student trained from labels alone (config.student_baseline).
Numbers are test error (%) from Furlanello et al. (ICML 2018), as
transcribed in PAPER.md. Table 6 (PTB perplexity) has no rows: ban_jax
trains no language models.

The paper's training recipe is data too (`RECIPE`, `recipe`), so that
`mismatches` can list every way a run differs from the row it is shown
beside: its setting, its recipe and the columns it lacks.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One row of one of the paper's tables, in our terms."""
  table: str  # "Table 2"
  dataset: str  # Our dataset name (config.data.name).
  model: str  # Generation 0's network (config.model.name).
  student: str  # Generations >= 1 (config.student_model); "" = same.
  loss: str  # Loss of generations >= 1 (config.distill.loss).
  share_stem_classifier: bool
  test_error: dict[str, float]  # Our column name -> the paper's error (%).
  note: str = ""

  def setting(self) -> str:
    student = f" -> {self.student}" if self.student else ""
    share = ", shared stem/classifier" if self.share_stem_classifier else ""
    return f"{self.dataset}, {self.model}{student}, {self.loss}{share}"


# Our loss names by the paper's column names (and key variants).
VARIANTS = {"ban": "kd", "ban+l": "kd+label", "cwtm": "cwtm", "dkpp": "dkpp"}

_TABLE1 = {  # CIFAR-10, teacher -> BAN.
    "wrn28_1": (6.69, 6.64), "wrn28_2": (5.06, 4.86), "wrn28_5": (4.13, 4.03),
    "wrn28_10": (3.77, 3.86), "densenet112_33": (3.84, 3.61),
    "densenet90_60": (3.81, 3.5), "densenet80_80": (3.48, 3.49),
    "densenet80_120": (3.37, 3.54),
}

# CIFAR-100, DenseNets: Teacher, BAN, BAN+L, CWTM, DKPP, BAN-1, BAN-2,
# BAN-3, Ens*2, Ens*3 (None: not in the paper).
_TABLE2 = {
    "densenet112_33": (18.25, 16.95, 17.68, 17.84, 17.84, 17.61, 17.22,
                       16.59, 15.77, 15.68),
    "densenet90_60": (17.69, 16.69, 16.93, 17.42, 17.43, 16.62, 16.44,
                      16.72, 15.39, 15.74),
    "densenet80_80": (17.16, 16.36, 16.5, 17.16, 16.84, 16.26, 16.30, 15.5,
                      15.46, 15.14),
    "densenet80_120": (16.87, 16.00, 16.41, 17.12, 16.34, 16.13, 16.13, None,
                       15.13, None),
}

# CIFAR-100, Wide-ResNet teachers: Teacher, WRN BAN, DenseNet-90-60 student.
_TABLE3 = {
    "wrn28_1": (30.05, 29.43, 24.93), "wrn28_2": (25.32, 24.38, 18.49),
    "wrn28_5": (20.88, 20.93, 17.52), "wrn28_10": (19.08, 18.25, 16.79),
}

# CIFAR-100, DenseNet-90-60 teacher -> students sharing its stem and
# classifier: (the student trained from labels alone, the BAN student).
# The last two rows are in the published table but not in PAPER.md (which
# transcribes four): its "Match-Wide-ResNet-2-1" and "Wide-ResNet-4-1".
_TABLE5 = {
    "densepreresnet14_0.5": (20.28, 18.8), "densepreresnet14_1": (18.84, 17.39),
    "densewrn1_1": (20.4, 19.12), "densewrn4_0.5": (19.63, 17.13),
    "densewrn2_1": (18.83, 17.42), "densewrn4_1": (18.77, 17.18),
}

_SEED_NOTE = ("BAN-1 is from the paper's BAN-1..3 sequence; its separate BAN "
              "run (the same recipe, another seed) reached {ban:.2f}, "
              "{spread:.2f} points away. Single runs of one recipe differ by "
              "up to 0.66 points in Table 2.")


def _rows() -> dict[str, PaperRow]:
  rows = {}
  for model, (teacher, ban) in _TABLE1.items():
    rows[f"table1/{model}/ban"] = PaperRow(
        "Table 1", "cifar10", model, "", "kd", False,
        {"Teacher": teacher, "BAN-1": ban})
  for model, values in _TABLE2.items():
    (teacher, ban, ban_l, cwtm, dkpp, ban1, ban2, ban3, ens2,
     ens3) = values
    sequence = {"Teacher": teacher, "BAN-1": ban1, "BAN-2": ban2,
                "BAN-3": ban3, "Ens*2": ens2, "Ens*3": ens3}
    note = _SEED_NOTE.format(ban=ban, spread=abs(ban - ban1))
    if ban3 is None:
      # The paper's Ens*3 here averages the teacher, BAN-1 and BAN-2; ours
      # averages BAN-1..3, so the two are not comparable.
      note += (" The paper has no BAN-3 for this model; its Ens*3 (14.9) "
               "averages the teacher, BAN-1 and BAN-2, so it is left out.")
    rows[f"table2/{model}/ban"] = PaperRow(
        "Table 2", "cifar100", model, "", "kd", False,
        {k: v for k, v in sequence.items() if v is not None}, note)
    for variant, value in (("ban+l", ban_l), ("cwtm", cwtm), ("dkpp", dkpp)):
      rows[f"table2/{model}/{variant}"] = PaperRow(
          "Table 2", "cifar100", model, "", VARIANTS[variant], False,
          {"Teacher": teacher, "BAN-1": value})
  for model, (teacher, ban, dense) in _TABLE3.items():
    rows[f"table3/{model}/ban"] = PaperRow(
        "Table 3", "cifar100", model, "", "kd", False,
        {"Teacher": teacher, "BAN-1": ban})
    rows[f"table3/{model}/densenet90_60"] = PaperRow(
        "Table 3", "cifar100", model, "densenet90_60", "kd", False,
        {"Teacher": teacher, "BAN-1": dense})
  for student, (baseline, ban) in _TABLE5.items():
    rows[f"table5/densenet90_60/{student}"] = PaperRow(
        "Table 5", "cifar100", "densenet90_60", student, "kd", True,
        {"Baseline": baseline, "BAN-1": ban},
        "Baseline: the student trained from labels alone, with the "
        "teacher's stem and classifier copied in and frozen. Table 5 gives "
        "no teacher error (Table 2 has 17.69 for DenseNet-90-60).")
  return rows


ROWS: dict[str, PaperRow] = _rows()


def get(key: str) -> PaperRow:
  """The row called `key`; a KeyError that lists the valid keys if none."""
  if key not in ROWS:
    raise KeyError(f"Unknown paper row {key!r}. Keys are "
                   "table<N>/<teacher>/<variant>; valid keys: "
                   f"{', '.join(ROWS)}.")
  return ROWS[key]


def find(dataset: str, model: str, student: str, loss: str,
         share_stem_classifier: bool = False) -> str | None:
  """The key of the row with exactly these settings, or None."""
  student = "" if student == model else student
  for key, row in ROWS.items():
    if (row.dataset, row.model, row.student, row.loss,
        row.share_stem_classifier) == (dataset, model, student, loss,
                                       share_stem_classifier):
      return key
  return None


# The paper's training recipe (PAPER.md, "Training settings": the
# Wide-ResNet recipe, for DenseNets too), as config fields that change what
# a run computes. Fields whose recipe depends on the network or the loss are
# in `recipe`. Not listed, because they change how, not what, a run
# computes: seeds, evaluation, checkpoints, steps per call, XLA options.
RECIPE = {
    "num_epochs": 200,
    "batch_size": 128,
    "optim.learning_rate": 0.1,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 5e-4,
    "optim.lr_decay_epochs": (60, 120, 160),
    "optim.lr_decay_factor": 0.2,
    "data.augment": True,
    "data.max_train_examples": 0,  # 0: the whole split.
    "data.max_test_examples": 0,
    "distill.attention_weight": 0.0,  # Logit KD only: no feature terms.
    "distill.fsp_weight": 0.0,
}
# What a recipe value means, where its bare value does not say.
_MEANING = {"data.max_train_examples": " (the whole split)",
            "data.max_test_examples": " (the whole split)"}
# Values of fields that a config may lack, as the code reads them.
_DEFAULTS = {"data.max_train_examples": 0, "data.max_test_examples": 0,
             "distill.dkpp_permutation": "example",
             "student_dropout_rate": -1.0}


def paper_dropout(model: str) -> float:
  """The recipe's dropout: 0.3 inside Wide-ResNet blocks, none elsewhere."""
  return 0.3 if model.startswith("wrn") else 0.0


def recipe(row: PaperRow) -> dict[str, object]:
  """Config field -> the paper's value, for `row`'s networks and loss.

  Besides RECIPE: the dropout of the row's teacher and students; the crop
  padding (`mismatches` compares it only when the run augments); the KD
  temperature and weights for the losses that read them (T = 1, weights
  1:1, PAPER.md "The method"); and DKPP's options, by our reading of the
  paper: the max at the true label (Eq. 11; its Table 2 caption says the
  argmax, so that choice is listed too) and one permutation per training
  example for the whole generation (DKPP keeps the moments of each
  sample's teacher distribution, which permutations redrawn every step
  average away; PAPER.md, Eq. 11).
  """
  out = dict(RECIPE)
  out["model.dropout_rate"] = paper_dropout(row.model)
  out["student_dropout_rate"] = paper_dropout(row.student or row.model)
  out["data.crop_padding"] = 4
  if row.loss in ("kd", "kd+label"):
    out["distill.temperature"] = 1.0
    out["distill.teacher_weight"] = 1.0
  if row.loss == "kd+label":
    out["distill.label_weight"] = 1.0
  if row.loss == "dkpp":
    out["distill.dkpp_keep_argmax"] = False
    out["distill.dkpp_permutation"] = "example"
  return out


def _field(config, path: str):
  node = config
  for key in path.split("."):
    if key not in node:
      return _DEFAULTS.get(path)
    node = node[key]
  # JSON and ConfigDicts may hold a sequence as a list: compare as tuples.
  return tuple(node) if isinstance(node, (list, tuple)) else node


def _ours(config, path: str):
  """The config's value of `path` as the run uses it."""
  if path == "student_dropout_rate":
    rate = _field(config, path)
    return rate if rate >= 0 else _field(config, "model.dropout_rate")
  return _field(config, path)


def is_capped(config) -> bool:
  """Whether the run trains or tests on a subset of a split: such a run
  gets no paper numbers beside it (`pipeline.paper_entry`)."""
  return bool(_field(config, "data.max_train_examples")
              or _field(config, "data.max_test_examples"))


def columns_missing(row: PaperRow, config) -> list[str]:
  """The row's columns (Baseline, BAN-k, Ens*k) that the config's run does
  not have."""
  generations = config.num_generations
  sizes = tuple(config.ensemble_sizes) or tuple(
      range(2, generations + 1))
  shown = {"Teacher"} | {f"BAN-{g}" for g in range(1, generations + 1)} | {
      f"Ens*{k}" for k in sizes}
  if config.student_baseline:
    shown.add("Baseline")
  return [name for name in row.test_error if name not in shown]


def mismatches(row: PaperRow, config) -> list[str]:
  """The config's settings that differ from the row's, as readable text.

  The row's setting (dataset, networks, loss, shared layers), then every
  field of the paper's recipe (`recipe`) that the config changes, then the
  row's columns the run does not produce. The compute dtype is compared
  only for float16: bfloat16 (our default on GPU/TPU) is mixed precision
  with float32 parameters, optimiser, batch-norm statistics, classifier
  and losses, the standard recipe that trains CIFAR networks to float32
  accuracy, so listing it would put one difference under every accelerator
  run; float16 has a narrow range and no loss scaling here, so small
  gradients may underflow.
  """
  student = config.student_model
  student = "" if student == config.model.name else student
  ours = {"dataset": config.data.name, "model": config.model.name,
          "student": student, "loss": config.distill.loss,
          "share_stem_classifier": bool(config.share_stem_classifier)}
  theirs = {"dataset": row.dataset, "model": row.model,
            "student": row.student, "loss": row.loss,
            "share_stem_classifier": row.share_stem_classifier}
  out = [f"{k} is {ours[k]!r}, the paper's is {theirs[k]!r}"
         for k in ours if ours[k] != theirs[k]]
  paper = recipe(row)
  if not _ours(config, "data.augment"):
    del paper["data.crop_padding"]  # Read only by the crop.
  for path, value in paper.items():
    mine = _ours(config, path)
    if mine != value:
      out.append(f"{path} is {mine!r}, the paper's is {value!r}"
                 + _MEANING.get(path, ""))
  if _field(config, "model.dtype") == "float16":
    out.append("model.dtype is 'float16', the paper's is float32")
  missing = columns_missing(row, config)
  if "Baseline" in missing:
    missing.remove("Baseline")
    out.append("student_baseline is False: the paper's Baseline has no "
               "counterpart in this run")
  if missing:
    sizes = tuple(config.ensemble_sizes)
    out.append(f"num_generations is {config.num_generations}"
               + (f" and ensemble_sizes {sizes}" if sizes else "")
               + f": the paper's {', '.join(missing)} "
               + ("has" if len(missing) == 1 else "have")
               + " no counterpart in this run")
  return out
