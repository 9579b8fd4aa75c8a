"""Reports: results.md/json/png, seeds, the paper's numbers, TensorBoard."""

import importlib
import json
import pathlib
import re

from matplotlib import figure
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2

from ban_jax import models
from ban_jax import pipeline
from ban_jax.reporting import paper_results
from ban_jax.reporting import report
from ban_jax.runtime import metrics_writer
from configs import cifar100
from configs import digits
from tests import run_results

ROOT = pathlib.Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------ synthetic


def _chain(seed, errors, ens_errors):
  gens = [{"generation": g, "name": report.generation_label(g),
           "model": "wrn10_1", "test_error": e, "test_accuracy": 100 - e}
          for g, e in enumerate(errors)]
  ens = [{"name": f"Ens*{k}", "members": list(range(1, k + 1)),
          "test_error": e, "test_accuracy": 100 - e}
         for k, e in zip(range(2, 2 + len(ens_errors)), ens_errors)]
  return {"seed": seed, "generations": gens, "ensembles": ens}


def _results(per_seed, paper_row=""):
  results = {"dataset": "cifar100", "loss": "kd", "per_seed": per_seed,
             "generations": per_seed[0]["generations"],
             "ensembles": per_seed[0]["ensembles"],
             "over_seeds": report.over_seeds(per_seed)}
  if paper_row:
    config = digits.get_config()
    config.paper_row = paper_row
    results["paper"] = pipeline.paper_entry(config)
  return results


def test_mean_and_sample_std_over_seeds():
  per_seed = [_chain(0, [20.0, 18.0, 17.0], [16.0]),
              _chain(1, [22.0, 19.0, 17.0], [15.0]),
              _chain(2, [21.0, 20.0, 17.0], [17.0])]
  summary = {c["name"]: c for c in report.over_seeds(per_seed)}
  assert list(summary) == ["Teacher", "BAN-1", "BAN-2", "Ens*2"]
  assert summary["Teacher"]["test_error_mean"] == pytest.approx(21.0)
  assert summary["Teacher"]["test_error_std"] == pytest.approx(1.0)  # ddof=1
  assert summary["BAN-2"]["test_error_std"] == 0.0
  assert summary["Ens*2"]["test_errors"] == [16.0, 15.0, 17.0]
  assert summary["Ens*2"]["seeds"] == [0, 1, 2]

  table = report.markdown_table(_results(per_seed))
  assert "| Model | Teacher | BAN-1 | BAN-2 | Ens*2 |" in table
  assert "| 21.00 ± 1.00 | 19.00 ± 1.00 | 17.00 ± 0.00 | 16.00 ± 1.00 |" in (
      table)
  text = report.markdown(_results(per_seed))
  assert "over 3 seeds (0, 1, 2)" in text
  assert "| 1 | 22.00 | 19.00 | 17.00 | 15.00 |" in text  # Per seed.


def test_paper_numbers_beside_ours():
  results = _results([_chain(0, [18.0, 17.0, 16.5, 16.0], [15.5, 15.2])],
                     paper_row="table2/densenet90_60/ban")
  table = report.markdown_table(results)
  assert ("| Paper, Table 2 (`table2/densenet90_60/ban`) | 17.69 | 16.62 | "
          "16.44 | 16.72 | 15.39 | 15.74 |") in table
  text = report.markdown(results)
  assert "Paper: Table 2, cifar100, densenet90_60, kd." in text
  assert "another seed) reached 16.69, 0.07 points away" in text
  # The digits config is not the paper's setting, and the report says so.
  assert "dataset is 'digits', the paper's is 'cifar100'" in text

  # Columns the paper lacks are left blank.
  results = _results([_chain(0, [18.0, 17.0, 16.5], [15.5])],
                     paper_row="table2/densenet80_120/cwtm")
  assert "| 16.87 | 17.12 | – | – |" in report.markdown_table(results)


def test_plot_is_a_png():
  per_seed = [_chain(0, [20.0, 18.0, 17.0], [16.0]),
              _chain(1, [22.0, 19.0, 17.5], [15.0])]
  png = report.plot(_results(per_seed, "table2/densenet90_60/ban"))
  assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_over_seeds_of_two_skewed_seeds():
  # Two seeds: the sample std of (a, b) is |a - b| / sqrt(2). Three, with
  # one far off: the mean (12), not the median (11).
  per_seed = [_chain(3, [20.0, 18.0], []), _chain(7, [22.0, 18.5], [])]
  summary = {c["name"]: c for c in report.over_seeds(per_seed)}
  assert summary["Teacher"]["test_error_std"] == pytest.approx(2**0.5)
  assert summary["BAN-1"]["test_error_std"] == pytest.approx(0.5 / 2**0.5)
  assert summary["BAN-1"]["seeds"] == [3, 7]
  per_seed.append(_chain(9, [15.0, 25.0], []))
  summary = {c["name"]: c for c in report.over_seeds(per_seed)}
  assert summary["Teacher"]["test_error_mean"] == pytest.approx(19.0)
  assert summary["BAN-1"]["test_error_mean"] == pytest.approx(20.5)
  assert summary["BAN-1"]["test_errors"] == [18.0, 18.5, 25.0]


def test_single_seed_report_has_plain_cells_and_no_per_seed_section():
  chain = _chain(0, [18.004, 17.5, 16.256], [15.0])
  for gen in chain["generations"][1:]:
    gen["model"] = "densenet90_60"  # A cross-architecture chain.
  results = _results([chain])
  assert report.markdown_table(results) == (
      "| Model | Teacher | BAN-1 | BAN-2 | Ens*2 |\n"
      "|---|---|---|---|---|\n"
      "| wrn10_1 -> densenet90_60 (cifar100, kd) | 18.00 | 17.50 | 16.26 "
      "| 15.00 |")
  assert report.markdown(results) == (
      "# Results: test error (%)\n\n" + report.markdown_table(results)
      + "\n\nTest error per generation: results.png.\n")


def test_two_seeds_get_the_per_seed_section():
  per_seed = [_chain(3, [20.0, 18.0], []), _chain(7, [22.0, 18.5], [])]
  text = report.markdown(_results(per_seed))
  assert ("Mean ± sample standard deviation over 2 seeds (3, 7)."
          in text)
  assert ("## Per seed\n\n| Seed | Teacher | BAN-1 |\n|---|---|---|\n"
          "| 3 | 20.00 | 18.00 |\n| 7 | 22.00 | 18.50 |\n") in text


def _with_baseline(chain, error):
  chain["baseline"] = {"generation": None, "name": "Baseline",
                       "model": "wrn10_1", "loss": "ce", "test_error": error,
                       "test_accuracy": 100 - error}
  return chain


def test_the_baseline_column_sits_beside_the_teacher():
  per_seed = [_with_baseline(_chain(0, [20.0, 18.0], []), 19.5),
              _with_baseline(_chain(1, [22.0, 18.5], []), 20.5)]
  summary = report.over_seeds(per_seed)
  assert [c["name"] for c in summary] == ["Teacher", "Baseline", "BAN-1"]
  assert summary[1]["test_errors"] == [19.5, 20.5]
  results = _results(per_seed, "table5/densenet90_60/densewrn1_1")
  table = report.markdown_table(results)
  assert "| Model | Teacher | Baseline | BAN-1 |" in table
  assert "| 21.00 ± 1.41 | 20.00 ± 0.71 | 18.25 ± 0.35 |" in table
  assert ("| Paper, Table 5 (`table5/densenet90_60/densewrn1_1`) | – | "
          "20.40 | 19.12 |") in table


def test_one_teacher_for_all_seeds_is_one_number():
  # seed_scope="students": every seed's chain holds the one teacher.
  per_seed = [_chain(0, [20.0, 18.0], []), _chain(1, [20.0, 18.5], []),
              _chain(2, [20.0, 19.0], [])]
  teacher, ban_1 = report.over_seeds(per_seed, "students")
  assert (teacher["test_errors"], teacher["seeds"], teacher["test_error_std"]
          ) == ([20.0], [0], 0.0)
  assert ban_1["test_errors"] == [18.0, 18.5, 19.0]
  results = {**_results(per_seed), "seed_scope": "students"}
  text = report.markdown(results)
  assert "| 20.00 (one run) | 18.50 ± 0.50 |" in text
  assert "Seed scope `students`: one teacher, trained once with seed 0" in text
  assert "Seed scope `chain`" in report.markdown(_results(per_seed))


def _plotted(monkeypatch, results):
  """The figure `report.plot` draws, caught as it is saved."""
  drawn = []
  savefig = figure.Figure.savefig

  def keep(fig, *args, **kwargs):
    drawn.append(fig)
    return savefig(fig, *args, **kwargs)

  monkeypatch.setattr(figure.Figure, "savefig", keep)
  assert report.plot(results).startswith(PNG_SIGNATURE)
  (fig,) = drawn
  (ax,) = fig.axes
  return ax


def test_plot_draws_mean_std_seeds_ensembles_and_the_paper(monkeypatch):
  per_seed = [_chain(0, [20.0, 18.0, 17.0], [16.0]),
              _chain(1, [22.0, 19.0, 17.5], [15.0])]
  ax = _plotted(monkeypatch, _results(per_seed, "table2/densenet90_60/ban"))
  assert ax.get_title() == "wrn10_1 (cifar100, kd)"
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      "Teacher", "BAN-1", "BAN-2"]
  ours, ens = ax.containers  # Error bars: the generations, the ensembles.
  assert ours.get_label() == "ours, mean ± std of 2 seeds"
  std = np.array([2.0, 1.0, 0.5]) / 2**0.5  # ddof=1.
  for container, x, mean, err in ((ours, [0, 1, 2], [21, 18.5, 17.25], std),
                                  (ens, [2.15], [15.5], [1 / 2**0.5])):
    line, _, (bars,) = container.lines
    np.testing.assert_allclose(line.get_xydata(), np.c_[x, mean])
    np.testing.assert_allclose(
        [segment[:, 1] for segment in bars.get_segments()],
        np.c_[np.subtract(mean, err), np.add(mean, err)])
  # Each seed's own curve, faint.
  seeds = [line.get_ydata() for line in ax.get_lines()
           if line.get_alpha() == 0.25]
  np.testing.assert_allclose(seeds, [[20, 18, 17], [22, 19, 17.5]])
  assert [t.get_text() for t in ax.texts] == ["Ens*2"]
  # The paper's numbers, at the columns we have (not BAN-3 nor Ens*3).
  (paper,) = ax.collections[-1:]
  assert paper.get_label() == "paper, Table 2"
  np.testing.assert_allclose(paper.get_offsets(),
                             [[0, 17.69], [1, 16.62], [2, 16.44],
                              [2.15, 15.39]])


def test_plot_puts_the_baseline_left_of_ban_1(monkeypatch):
  per_seed = [_with_baseline(_chain(0, [20.0, 18.0], []), 19.5)]
  ax = _plotted(monkeypatch, _results(per_seed,
                                      "table5/densenet90_60/densewrn1_1"))
  ours, baseline = ax.containers
  assert baseline.get_label() == "Baseline: the student from labels alone"
  np.testing.assert_allclose(baseline.lines[0].get_xydata(), [[0.85, 19.5]])
  (paper,) = ax.collections[-1:]
  np.testing.assert_allclose(paper.get_offsets(), [[0.85, 20.4], [1, 19.12]])


def test_write_puts_three_files_and_nothing_else(tmp_path):
  per_seed = [_chain(0, [20.0, 18.0, 17.0], [16.0])]
  results = _results(per_seed)
  # Arrays (NumPy or JAX) in the results are written as JSON lists.
  results["extra"] = {"array": np.array([1.5, 2.0]),
                      "scalar": np.float32(0.25)}
  report.write(tmp_path, results)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "results.json", "results.md", "results.png"]
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["extra"] == {"array": [1.5, 2.0], "scalar": 0.25}
  assert on_disk["per_seed"] == per_seed
  assert (tmp_path / "results.md").read_text() == report.markdown(results)
  assert (tmp_path / "results.png").read_bytes().startswith(PNG_SIGNATURE)
  with pytest.raises(TypeError, match="not JSON serialisable: object"):
    report.write(tmp_path, {**results, "extra": object()})


def test_paper_rows_use_our_names():
  columns = {"Teacher", "Baseline", "BAN-1", "BAN-2", "BAN-3", "Ens*2",
             "Ens*3"}
  assert len(paper_results.ROWS) == 8 + 16 + 8 + 6
  for key, row in paper_results.ROWS.items():
    assert re.fullmatch(r"table[1-5]/[\w.]+/[\w.+]+", key), key
    assert set(row.test_error) <= columns, key
    for name in filter(None, (row.model, row.student)):
      models.get_model(name, num_classes=10)  # A registered model.
    assert paper_results.find(row.dataset, row.model, row.student, row.loss,
                              row.share_stem_classifier) == key
  row = paper_results.get("table2/densenet112_33/ban")
  assert row.test_error == {"Teacher": 18.25, "BAN-1": 17.61, "BAN-2": 17.22,
                            "BAN-3": 16.59, "Ens*2": 15.77, "Ens*3": 15.68}
  assert paper_results.get("table2/densenet112_33/ban+l").test_error == {
      "Teacher": 18.25, "BAN-1": 17.68}
  assert paper_results.get("table3/wrn28_10/densenet90_60").test_error == {
      "Teacher": 19.08, "BAN-1": 16.79}
  assert paper_results.get("table5/densenet90_60/densewrn4_0.5").test_error == {
      "Baseline": 19.63, "BAN-1": 17.13}
  assert paper_results.get("table5/densenet90_60/densewrn4_1").test_error == {
      "Baseline": 18.77, "BAN-1": 17.18}
  assert paper_results.get("table1/wrn28_10/ban").dataset == "cifar10"
  assert paper_results.find("digits", "wrn10_2", "", "kd") is None


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_every_command_in_the_config_docstrings_names_its_paper_row(dataset):
  # Each documented command (one per paper row) builds a config whose
  # paper row holds the numbers printed beside it (a row's note has the one
  # it does not report as a column: Table 2's separate BAN run).
  module = importlib.import_module(f"configs.{dataset}")
  commands = re.findall(
      rf"--config=configs/{dataset}\.py:(\S+)\s+\[([\d.]+)(?: -> ([\d.]+))?\]",
      module.__doc__)
  assert len(commands) == {"cifar10": 8, "cifar100": 30}[dataset]
  for argument, first, second in commands:
    config = module.get_config(argument)
    row = paper_results.get(config.paper_row)
    # The command is the paper's recipe: results.md lists no difference.
    assert paper_results.mismatches(row, config) == [], argument
    if not second:  # [BAN-1]
      assert row.test_error["BAN-1"] == float(first), (argument, row)
      continue
    # [teacher -> BAN]; Table 5's "teacher" is the Baseline, the student
    # trained from labels alone; Table 2's BAN the separate run (its note).
    if row.table == "Table 5":
      assert row.test_error["Baseline"] == float(first), (argument, row)
    else:
      assert row.test_error["Teacher"] == float(first), (argument, row)
    if row.table == "Table 2":
      assert f"reached {float(second):.2f}," in row.note, (argument, row)
    else:
      assert row.test_error["BAN-1"] == float(second), (argument, row)


def test_table2_sequences_match_the_cifar100_docstring():
  # "(112-33: 17.61, 17.22, 16.59 / 15.77, 15.68; 90-60: ...)": BAN-1..3
  # and Ens*2, Ens*3 of each DenseNet's BAN run.
  module = importlib.import_module("configs.cifar100")
  text = " ".join(module.__doc__.split())
  sequences = re.findall(r"(\d+)-(\d+): ([\d., ]+) / ([\d., ]+?)[;)]", text)
  assert len(sequences) == 4
  for depth, growth, bans, ensembles in sequences:
    row = paper_results.get(f"table2/densenet{depth}_{growth}/ban")
    bans = [float(x) for x in bans.split(",")]
    ensembles = [float(x) for x in ensembles.split(",")]
    expected = {"Teacher": row.test_error["Teacher"]}
    expected.update({f"BAN-{k}": v for k, v in enumerate(bans, 1)})
    expected.update({f"Ens*{k}": v for k, v in enumerate(ensembles, 2)})
    assert row.test_error == expected, row


def test_paper_row_notes_and_settings():
  row = paper_results.get("table2/densenet112_33/ban")
  assert row.note == (
      "BAN-1 is from the paper's BAN-1..3 sequence; its separate BAN run "
      "(the same recipe, another seed) reached 16.95, 0.66 points away. "
      "Single runs of one recipe differ by up to 0.66 points in Table 2.")
  # No BAN-3: no BAN-3 column, and the paper's Ens*3 is left out.
  row = paper_results.get("table2/densenet80_120/ban")
  assert row.test_error == {"Teacher": 16.87, "BAN-1": 16.13, "BAN-2": 16.13,
                            "Ens*2": 15.13}
  assert row.note.endswith(
      "reached 16.00, 0.13 points away. Single runs of one recipe differ by "
      "up to 0.66 points in Table 2. The paper has no BAN-3 for this model; "
      "its Ens*3 (14.9) averages the teacher, BAN-1 and BAN-2, so it is "
      "left out.")
  assert paper_results.get("table2/densenet80_80/cwtm").setting() == (
      "cifar100, densenet80_80, cwtm")
  assert paper_results.get("table5/densenet90_60/densewrn1_1").setting() == (
      "cifar100, densenet90_60 -> densewrn1_1, kd, shared stem/classifier")


def test_find_and_mismatches_treat_a_student_like_the_teacher_as_none():
  assert paper_results.find("cifar100", "wrn28_10", "wrn28_10", "kd") == (
      "table3/wrn28_10/ban")
  config = cifar100.get_config("model=wrn28_10")
  config.student_model = "wrn28_10"
  row = paper_results.get("table3/wrn28_10/ban")
  assert paper_results.mismatches(row, config) == []
  config.share_stem_classifier = True
  assert paper_results.mismatches(row, config) == [
      "share_stem_classifier is True, the paper's is False"]
  assert paper_results.mismatches(
      paper_results.get("table5/densenet90_60/densewrn1_1"),
      digits.get_config()) == [
          "dataset is 'digits', the paper's is 'cifar100'",
          "model is 'wrn10_2', the paper's is 'densenet90_60'",
          "student is '', the paper's is 'densewrn1_1'",
          "share_stem_classifier is False, the paper's is True",
          "num_epochs is 15, the paper's is 200",
          "batch_size is 64, the paper's is 128",
          "optim.learning_rate is 0.05, the paper's is 0.1",
          "optim.lr_decay_epochs is (8, 12), the paper's is (60, 120, 160)",
          "data.augment is False, the paper's is True",
          "student_baseline is False: the paper's Baseline has no "
          "counterpart in this run"]


def test_mismatches_list_every_recipe_field_the_run_changes():
  config = cifar100.get_config("model=wrn28_10")
  row = paper_results.get(config.paper_row)
  changes = {
      "num_epochs": 100, "batch_size": 256, "optim.learning_rate": 0.2,
      "optim.momentum": 0.8, "optim.nesterov": False,
      "optim.weight_decay": 1e-4, "optim.lr_decay_epochs": (100, 150),
      "optim.lr_decay_factor": 0.1, "model.dropout_rate": 0.0,
      "student_dropout_rate": 0.5, "data.crop_padding": 2,
      "distill.temperature": 4.0, "distill.teacher_weight": 2.0,
      "distill.attention_weight": 1e3, "distill.fsp_weight": 1.0,
      "model.dtype": "float16",
  }
  for path, value in changes.items():
    node = config
    *parents, name = path.split(".")
    for parent in parents:
      node = node[parent]
    node[name] = value
  assert paper_results.mismatches(row, config) == [
      "num_epochs is 100, the paper's is 200",
      "batch_size is 256, the paper's is 128",
      "optim.learning_rate is 0.2, the paper's is 0.1",
      "optim.momentum is 0.8, the paper's is 0.9",
      "optim.nesterov is False, the paper's is True",
      "optim.weight_decay is 0.0001, the paper's is 0.0005",
      "optim.lr_decay_epochs is (100, 150), the paper's is (60, 120, 160)",
      "optim.lr_decay_factor is 0.1, the paper's is 0.2",
      "distill.attention_weight is 1000.0, the paper's is 0.0",
      "distill.fsp_weight is 1.0, the paper's is 0.0",
      "model.dropout_rate is 0.0, the paper's is 0.3",
      "student_dropout_rate is 0.5, the paper's is 0.3",
      "data.crop_padding is 2, the paper's is 4",
      "distill.temperature is 4.0, the paper's is 1.0",
      "distill.teacher_weight is 2.0, the paper's is 1.0",
      "model.dtype is 'float16', the paper's is float32"]
  # Without augmentation the crop's padding is never read.
  config.data.augment = False
  text = paper_results.mismatches(row, config)
  assert "data.augment is False, the paper's is True" in text
  assert not [m for m in text if "crop_padding" in m]
  # bfloat16 is mixed precision with float32 state, classifier and losses:
  # not listed (see mismatches' docstring).
  config = cifar100.get_config("model=wrn28_10")
  config.model.dtype = "bfloat16"
  assert paper_results.mismatches(row, config) == []
  # The students' dropout follows the teacher's when not set.
  config.model.dropout_rate = 0.1
  config.student_dropout_rate = -1.0
  assert paper_results.mismatches(row, config) == [
      "model.dropout_rate is 0.1, the paper's is 0.3",
      "student_dropout_rate is 0.1, the paper's is 0.3"]


def test_mismatches_compare_the_weights_and_options_each_loss_reads():
  # Label weight: kd+label only; temperature and teacher weight: kd and
  # kd+label; the DKPP options: dkpp only; CWTM reads none of them.
  odd = {"temperature": 2.0, "label_weight": 0.5, "teacher_weight": 3.0,
         "dkpp_keep_argmax": True, "dkpp_permutation": "step"}
  expected = {
      "kd+label": ["distill.temperature is 2.0, the paper's is 1.0",
                   "distill.teacher_weight is 3.0, the paper's is 1.0",
                   "distill.label_weight is 0.5, the paper's is 1.0"],
      "cwtm": [],
      "dkpp": ["distill.dkpp_keep_argmax is True, the paper's is False",
               "distill.dkpp_permutation is 'step', the paper's is "
               "'example'"],
  }
  for loss, want in expected.items():
    config = cifar100.get_config(f"model=densenet90_60,loss={loss}")
    config.distill.update(odd)
    row = paper_results.get(config.paper_row)
    assert paper_results.mismatches(row, config) == want, loss


def test_a_run_short_of_the_papers_columns_says_which():
  config = cifar100.get_config("model=densenet90_60,generations=1")
  row = paper_results.get(config.paper_row)
  assert list(row.test_error) == ["Teacher", "BAN-1", "BAN-2", "BAN-3",
                                  "Ens*2", "Ens*3"]
  assert paper_results.mismatches(row, config) == [
      "num_generations is 1: the paper's BAN-2, BAN-3, Ens*2, Ens*3 have no "
      "counterpart in this run"]
  config.num_generations = 3
  config.ensemble_sizes = (3,)
  assert paper_results.mismatches(row, config) == [
      "num_generations is 3 and ensemble_sizes (3,): the paper's Ens*2 has "
      "no counterpart in this run"]
  # More generations than the paper shows: nothing is missing.
  config.num_generations, config.ensemble_sizes = 5, ()
  assert paper_results.mismatches(row, config) == []


def test_a_run_on_a_subset_gets_no_paper_numbers_but_its_differences():
  config = cifar100.get_config("model=densenet90_60")
  assert pipeline.paper_entry(config)["row"] == "table2/densenet90_60/ban"
  for field in ("max_train_examples", "max_test_examples"):
    capped = config.copy_and_resolve_references()
    capped.data[field] = 1000
    assert paper_results.is_capped(capped)
    assert pipeline.paper_entry(capped) is None
    assert paper_results.mismatches(
        paper_results.get(capped.paper_row), capped) == [
            f"data.{field} is 1000, the paper's is 0 (the whole split)"]
  # The smoke run, named with a paper row: every difference is listed.
  smoke = cifar100.get_config("model=densenet90_60,smoke")
  smoke.paper_row = "table2/densenet90_60/ban"
  assert pipeline.paper_entry(smoke) is None
  assert paper_results.mismatches(paper_results.get(smoke.paper_row),
                                  smoke) == [
      "num_epochs is 1, the paper's is 200",
      "batch_size is 32, the paper's is 128",
      "optim.lr_decay_epochs is (), the paper's is (60, 120, 160)",
      "data.max_train_examples is 256, the paper's is 0 (the whole split)",
      "data.max_test_examples is 128, the paper's is 0 (the whole split)",
      "num_generations is 2: the paper's BAN-3, Ens*3 have no counterpart "
      "in this run"]


def test_results_md_lists_each_difference_under_the_papers_numbers():
  config = cifar100.get_config("model=densenet90_60,loss=cwtm")
  config.num_epochs = 100
  config.optim.nesterov = False
  results = _results([_chain(0, [18.0, 17.0], [])])
  results["paper"] = pipeline.paper_entry(config)
  text = report.markdown(results)
  assert ("Paper: Table 2, cifar100, densenet90_60, cwtm.\n\n"
          "This run differs from the paper's setting and recipe:\n\n"
          "- num_epochs is 100, the paper's is 200\n"
          "- optim.nesterov is False, the paper's is True\n") in text


def test_dkpp_choices_are_named_in_results_and_the_table():
  config = cifar100.get_config("model=densenet90_60,loss=dkpp")
  assert pipeline.dkpp_choices(config) == {
      "dkpp": {"anchor": "label", "permutation": "example"}}
  config.distill.dkpp_keep_argmax = True
  config.distill.dkpp_permutation = "step"
  choices = pipeline.dkpp_choices(config)
  assert choices == {"dkpp": {"anchor": "argmax", "permutation": "step"}}
  assert pipeline.dkpp_choices(cifar100.get_config("model=densenet90_60")) == {}

  results = _results([_chain(0, [18.0, 17.0], [])])
  assert report.loss_label(results) == "kd"
  results.update(loss="dkpp", dkpp={"anchor": "label",
                                    "permutation": "example"})
  assert ("| wrn10_1 (cifar100, dkpp: max at the label, one permutation per "
          "example) | 18.00 | 17.00 |") in report.markdown_table(results)
  results.update(choices)
  assert report.loss_label(results) == (
      "dkpp: max at the teacher's argmax, new permutations every step")


# ------------------------------------------------------------ tensorboard


def _scalars(logdir):
  accumulator = event_accumulator.EventAccumulator(str(logdir))
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def test_epoch_records_become_tagged_scalars(tmp_path):
  record = {"epoch": 2, "step": 42, "learning_rate": 0.01,
            "train_loss": 0.5, "train_accuracy": 90.0,
            "train_kd_t1_dark_knowledge_share": 0.25,
            "train_loss_dark_knowledge_share": 0.5, "images_per_second": 1e3,
            "test_loss": 0.25, "test_accuracy": 95.0,
            "teacher_agreement": 97.0, "teacher_student_kl": 0.125,
            "seconds_left": 3.0, "chain_seconds_left": 30.0, "seconds": 2.0,
            "train_examples": 640}
  assert metrics_writer.epoch_scalars(record) == {
      "learning_rate": 0.01, "train/loss": 0.5, "train/accuracy": 90.0,
      "train/examples": 640,
      "train/kd_t1_dark_knowledge_share": 0.25,
      "train/loss_dark_knowledge_share": 0.5, "images_per_second": 1e3,
      "test/loss": 0.25, "test/accuracy": 95.0,
      "test/teacher_agreement": 97.0, "test/teacher_student_kl": 0.125}

  # A run killed after logging epoch 2 but before its checkpoint: the rerun
  # logs epoch 2 again, and TensorBoard keeps only the new copy.
  writer = metrics_writer.create(tmp_path)
  log = metrics_writer.epoch_callback(writer)
  log({"epoch": 1, "step": 21, "train_loss": 1.0})
  log({"epoch": 2, "step": 42, "train_loss": 0.7})
  writer.close()
  writer = metrics_writer.create(tmp_path)
  log = metrics_writer.epoch_callback(writer)
  log({"epoch": 2, "step": 42, "train_loss": 0.5})
  writer.close()
  assert _scalars(tmp_path) == {"train/loss": [(21, 1.0), (42, 0.5)]}


def test_writer_makes_its_folder_at_the_first_write_and_flushes_each_epoch(
    tmp_path):
  logdir = tmp_path / "tensorboard" / "seed_0" / "gen_1"
  writer = metrics_writer.create(logdir)
  writer.flush()
  writer.close()
  assert not (tmp_path / "tensorboard").exists()  # Loaded, never trained.

  writer = metrics_writer.create(logdir)
  log = metrics_writer.epoch_callback(writer)
  log({"epoch": 1, "step": 21, "train_loss": 1.0})
  log({"epoch": 2, "step": 42, "train_loss": 0.75})
  # On disk at once, while the run goes on (the writer is still open).
  assert _scalars(logdir) == {"train/loss": [(21, 1.0), (42, 0.75)]}
  writer.close()
  (path,) = logdir.iterdir()
  events = list(event_file_loader.EventFileLoader(str(path)).Load())
  # One restart mark, at the first epoch this run logs.
  assert [e.step for e in events if e.HasField("session_log")
          and e.session_log.status == event_pb2.SessionLog.START] == [21]


# ------------------------------------------------------- a real tiny run


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
  """Teacher + 2 generations, for seeds 0 and 1, with a paper row."""
  config = digits.get_config()
  config.model.name = "wrn10_1"
  config.num_generations = 2
  config.num_epochs = 1
  # The whole split (21 steps an epoch): a run on a subset gets no paper
  # numbers, and this one is to show them.
  config.seeds = (0, 1)
  config.paper_row = "table2/densenet90_60/ban"
  workdir = tmp_path_factory.mktemp("two_seeds")
  return config, workdir, run_results.run_chain(config, workdir)


def test_results_of_every_seed(two_seeds):
  _, workdir, results = two_seeds
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["seeds"] == [0, 1]
  assert [c["seed"] for c in on_disk["per_seed"]] == [0, 1]
  assert on_disk["generations"] == on_disk["per_seed"][0]["generations"]
  assert on_disk["ensembles"] == on_disk["per_seed"][0]["ensembles"]
  for column in on_disk["over_seeds"]:
    errors = [report.columns(c)[column["name"]] for c in on_disk["per_seed"]]
    assert column["test_errors"] == errors
    assert column["test_error_mean"] == pytest.approx(np.mean(errors))
    assert column["test_error_std"] == pytest.approx(np.std(errors, ddof=1))
  # Each seed is its own chain, with its own initialisation.
  first, second = (c["generations"][0]["history"][0]["train_loss"]
                   for c in on_disk["per_seed"])
  assert first != second
  assert (workdir / "seed_1" / "gen_2" / "result.json").exists()
  assert on_disk["paper"]["test_error"]["BAN-1"] == 16.62
  assert results["over_seeds"] == on_disk["over_seeds"]

  text = (workdir / "results.md").read_text()
  assert "| Model | Teacher | BAN-1 | BAN-2 | Ens*2 |" in text
  teacher = on_disk["over_seeds"][0]
  assert (f"| {teacher['test_error_mean']:.2f} ± "
          f"{teacher['test_error_std']:.2f} |") in text
  assert "| Paper, Table 2 (`table2/densenet90_60/ban`) | 17.69 |" in text
  # Every difference from the paper's recipe, one per line.
  assert "\n- num_epochs is 1, the paper's is 200\n" in text
  assert ("\n- num_generations is 2: the paper's BAN-3, Ens*3 have no "
          "counterpart in this run\n") in text
  assert (workdir / "results.png").read_bytes().startswith(PNG_SIGNATURE)


def test_tensorboard_scalars_of_every_generation(two_seeds):
  _, workdir, results = two_seeds
  for chain in results["per_seed"]:
    for gen in chain["generations"]:
      logdir = (workdir / "tensorboard" / f"seed_{chain['seed']}"
                / f"gen_{gen['generation']}")
      scalars = _scalars(logdir)
      expected = {"train/loss", "train/accuracy", "test/loss",
                  "test/accuracy", "learning_rate", "images_per_second"}
      if gen["generation"] > 0:
        # kd: both dark-knowledge shares.
        expected |= {"train/kd_t1_dark_knowledge_share",
                     "train/loss_dark_knowledge_share",
                     "test/teacher_agreement", "test/teacher_student_kl"}
      assert set(scalars) == expected
      record = gen["history"][-1]
      assert scalars["test/accuracy"] == [
          (record["step"], pytest.approx(record["test_accuracy"]))]
      assert scalars["train/loss"] == [
          (record["step"], pytest.approx(record["train_loss"]))]


def test_rerun_adds_no_duplicate_scalars(two_seeds):
  config, workdir, results = two_seeds
  again = run_results.run_chain(config, workdir)  # Everything is loaded.
  assert again["over_seeds"] == results["over_seeds"]
  logdir = workdir / "tensorboard" / "seed_0" / "gen_1"
  assert len(list(logdir.iterdir())) == 1  # No new, empty event files.


def _doc_code() -> list[str]:
  text = (ROOT / "docs" / "checkpoints.md").read_text()
  return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_checkpoint_docs_load_generations_and_the_ensemble(two_seeds):
  _, workdir, results = two_seeds
  definitions, usage = _doc_code()
  assert 'workdir = "runs/digits"' in usage
  usage = usage.replace('"runs/digits"', repr(str(workdir)))
  namespace = {}
  # pylint: disable=exec-used
  exec(definitions, namespace)
  exec(usage, namespace)
  # pylint: enable=exec-used
  ban_2 = results["generations"][2]["test_accuracy"]
  ens_2 = results["ensembles"][0]
  assert ens_2["name"] == "Ens*2"
  assert namespace["accuracy"] == pytest.approx(ban_2, abs=1e-9)
  assert namespace["ensemble_accuracy"] == pytest.approx(
      ens_2["test_accuracy"], abs=1e-9)
