"""The real entry point on CIFAR-100 shapes, through TFDS's mock data."""

import pytest
import tensorflow_datasets as tfds

from configs import cifar10
from configs import cifar100
from configs import cifar_base
from tests import run_results

# Its networks train a few steps on CIFAR's shapes, which no other module
# compiles: compiling is the cost (conftest.py).
pytestmark = pytest.mark.few_steps


def test_smoke_chain_on_mock_cifar100(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  config = cifar100.get_config("smoke")
  assert config.data.augment and config.num_generations == 2
  with tfds.testing.mock_data(num_examples=256,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    results = run_results.run_chain(config, tmp_path / "run")
  assert results["dataset"] == "cifar100"
  assert [g["name"] for g in results["generations"]] == [
      "Teacher", "BAN-1", "BAN-2"]
  assert [e["name"] for e in results["ensembles"]] == ["Ens*2"]
  # Evaluated on the (capped) test split: accuracy in whole 1/128 steps.
  for g in results["generations"]:
    assert (g["test_accuracy"] * 128 / 100) == pytest.approx(
        round(g["test_accuracy"] * 128 / 100), abs=1e-6)
  assert (tmp_path / "run" / "seed_0" / "gen_2" / "result.json").exists()


def test_paper_settings_by_default():
  config = cifar100.get_config(None)
  assert (config.model.name, config.num_epochs, config.batch_size) == (
      "wrn28_10", 200, 128)
  assert tuple(config.optim.lr_decay_epochs) == (60, 120, 160)
  assert config.optim.lr_decay_factor == 0.2
  assert config.optim.nesterov and config.optim.momentum == 0.9
  assert config.optim.weight_decay == 5e-4
  assert config.model.dropout_rate == 0.3
  assert config.data.augment and config.distill.loss == "kd"
  assert cifar10.get_config(None).data.name == "cifar10"


def test_config_argument():
  config = cifar100.get_config(
      "model=densenet90_60,student=densewrn1_1,loss=cwtm,generations=2,share")
  assert config.model.name == "densenet90_60"
  assert config.model.dropout_rate == 0.0  # No dropout in DenseNets.
  assert config.student_model == "densewrn1_1"
  assert config.distill.loss == "cwtm"
  assert config.num_generations == 2
  assert config.share_stem_classifier
  assert config.paper_row == ""  # Table 5 students are never CWTM.
  assert cifar100.get_config("model=densenet90_60").paper_row == (
      "table2/densenet90_60/ban")
  with pytest.raises(ValueError, match=r"Unknown config argument 'modle=x'"
                     r".*model=\.\.\..*smoke"):
    cifar_base.parse_argument("modle=x")
