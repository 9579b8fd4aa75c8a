"""runtime/checkpoints.py: saves, restores, non-finite and corrupt steps, several hosts."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ban_jax.runtime import checkpoints
from ban_jax.runtime import parallel


def _tiny_state(value=0.0):
  return {"step": jnp.array(3, jnp.int32),
          "params": {"w": jnp.full((64,), value, jnp.float32)}}


def _two_steps(directory, **options) -> checkpoints.GenerationCheckpoints:
  """Checkpoints of steps 1 and 2 (w all 1.0, then 2.0), on disk."""
  ckpt = checkpoints.GenerationCheckpoints(directory, **options)
  ckpt.save(1, _tiny_state(1.0), {"history": [1]})
  ckpt.save(2, _tiny_state(2.0), {"history": [1, 2]})
  ckpt.wait()
  return ckpt


def test_a_non_finite_state_is_never_saved(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  ckpt.save(1, _tiny_state(1.0), {"history": []})
  ckpt.wait()
  with pytest.raises(checkpoints.NonFiniteStateError,
                     match=r"step 2 has NaN .* last good checkpoint is "
                     r".*gen_0/1; it is left intact"):
    ckpt.save(2, _tiny_state(np.nan), {"history": []})
  ckpt.close()
  assert ckpt.all_steps() == [1]


def test_progress_is_saved_as_it_was_when_save_was_called(tmp_path):
  # Orbax writes the JSON in a background thread; train.fit goes on
  # updating the same dict (epoch sums, history) right after save returns.
  # A race, so several saves: each one lost it about half the time.
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0", max_to_keep=5)
  progress = {"history": [], "epoch_sums": [0.0]}
  for step in range(1, 6):
    ckpt.save(step, _tiny_state(1.0), progress)
    progress["history"].append({"epoch": step})
    progress["epoch_sums"] = [float(step)]
  ckpt.close()
  assert ckpt.all_steps() == [1, 2, 3, 4, 5]
  for step in range(1, 6):
    saved = json.loads(
        (tmp_path / "gen_0" / str(step) / "progress" / "metadata").read_text())
    assert saved == {"history": [{"epoch": e} for e in range(1, step)],
                     "epoch_sums": [float(step - 1)]}, step
  _, _, latest = checkpoints.GenerationCheckpoints(
      tmp_path / "gen_0").restore_latest(jax.eval_shape(_tiny_state))
  assert latest == saved


@pytest.mark.parametrize("failure", [
    ValueError('RESOURCE_EXHAUSTED: Error writing "step/0": No space left '
               "on device [os_error_code='28']"),
    OSError(122, "Disk quota exceeded")])
def test_a_failed_write_says_where_the_generation_resumes(
    tmp_path, monkeypatch, failure):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory)

  def fail(*args, **kwargs):
    del args, kwargs
    raise failure
  monkeypatch.setattr(ckpt._manager, "save", fail)  # pylint: disable=protected-access
  with pytest.raises(checkpoints.CheckpointWriteError) as error:
    ckpt.save(3, _tiny_state(3.0), {"history": [1, 2, 3]})
  assert str(error.value) == (
      f"Could not write a checkpoint in {directory}: {failure}. Nothing "
      "already saved is lost: finished generations are kept and this "
      "generation will resume from step 2. Free some space (or fix the "
      "folder's permissions or quota) and rerun the same command.")
  assert error.value.__cause__ is failure
  # Surfacing at wait() (saves are asynchronous), before any step is kept.
  empty = checkpoints.GenerationCheckpoints(tmp_path / "empty")
  monkeypatch.setattr(empty._manager, "wait_until_finished", fail)  # pylint: disable=protected-access
  with pytest.raises(checkpoints.CheckpointWriteError,
                     match="this generation has no complete checkpoint yet "
                     "and will start again"):
    empty.wait()


def test_other_errors_of_a_save_are_not_taken_for_write_failures(
    tmp_path, monkeypatch):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "checkpoints")
  bug = ValueError("Expected a PyTree of arrays, got <object>")

  def fail(*args, **kwargs):
    del args, kwargs
    raise bug
  monkeypatch.setattr(ckpt._manager, "save", fail)  # pylint: disable=protected-access
  with pytest.raises(ValueError) as error:
    ckpt.save(1, _tiny_state(1.0), {})
  assert error.value is bug


# ----------------------------------------------------- corrupt checkpoints


def test_a_non_finite_checkpoint_on_disk_is_set_aside(tmp_path):
  # Written behind save's guard (say, by an older version): restore checks.
  directory = tmp_path / "checkpoints"
  ckpt = checkpoints.GenerationCheckpoints(directory)
  ckpt.save(1, _tiny_state(1.0), {"history": [1]})
  ckpt.wait()
  ckpt._manager.save(  # pylint: disable=protected-access
      2, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_tiny_state(np.inf)),
          progress=ocp.args.JsonSave({"history": [1, 2]})))
  ckpt.close()
  step, state, progress = checkpoints.GenerationCheckpoints(
      directory).restore_latest(jax.eval_shape(_tiny_state))
  assert step == 1 and progress == {"history": [1]}
  np.testing.assert_array_equal(state["params"]["w"], np.ones(64))
  assert (directory / "2.unreadable").exists()


def _garble(step_dir: pathlib.Path) -> None:
  """Truncates every data file of a checkpoint's state to half its size."""
  files = [p for p in (step_dir / "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


# Orbax's failed read of the truncated files can leave a TensorStore callback
# that fires after its event loop has closed: noise from the error path.
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncated data", "garbled progress",
                                    "missing state"])
def test_corrupt_checkpoint_falls_back_to_the_previous_one(
    tmp_path, caplog, damage):
  directory = tmp_path / "checkpoints"
  _two_steps(directory).close()
  if damage == "truncated data":
    _garble(directory / "2")
  elif damage == "garbled progress":
    (directory / "2" / "progress" / "metadata").write_text('{"histo')
  else:  # A partial copy: Orbax raises a KeyError, not a ValueError.
    shutil.rmtree(directory / "2" / "state")
  # And a save that a kill interrupted: Orbax's temporary folder.
  (directory / "3.orbax-checkpoint-tmp" / "state").mkdir(parents=True)

  ckpt = checkpoints.GenerationCheckpoints(directory)
  abstract = jax.eval_shape(_tiny_state)
  with caplog.at_level("WARNING"):
    step, state, progress = ckpt.restore_latest(abstract)
  assert step == 1 and progress == {"history": [1]}
  np.testing.assert_array_equal(state["params"]["w"], np.ones(64))
  assert f"Checkpoint {directory}/2 is unreadable" in caplog.text
  # Moved aside, so that training can write step 2 again.
  assert (directory / "2.unreadable").exists()
  ckpt.save(2, _tiny_state(5.0), {"history": [1, 2]})
  ckpt.close()
  assert ckpt.all_steps() == [1, 2]
  assert not (directory / "3.orbax-checkpoint-tmp").exists()


def test_a_step_set_aside_twice_replaces_the_older_copy(tmp_path):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory, max_to_keep=5)
  for value in (3.0, 4.0):  # Step 2 is written again, and is bad again.
    (directory / "2" / "progress" / "metadata").write_text("{")
    step, _, _ = ckpt.restore_latest(jax.eval_shape(_tiny_state))
    assert step == 1 and ckpt.all_steps() == [1]
    assert not (directory / "2").exists()
    ckpt.save(2, _tiny_state(value), {"history": [value]})
    ckpt.wait()
  ckpt.close()
  # The set-aside copy is the latest bad one (written with 3.0), whole.
  restored = ocp.StandardCheckpointer().restore(
      directory / "2.unreadable" / "state", jax.eval_shape(_tiny_state))
  np.testing.assert_array_equal(restored["params"]["w"], np.full(64, 3.0))


class _Process:
  """`jax` as process `index` of `count` sees it (for checkpoints only)."""

  def __init__(self, index, count):
    self._index, self._count = index, count

  def process_index(self):
    return self._index

  def process_count(self):
    return self._count

  def __getattr__(self, name):
    return getattr(jax, name)


@pytest.mark.parametrize("index", [0, 1])
def test_on_several_hosts_process_0_sets_aside_and_the_others_wait(
    tmp_path, monkeypatch, index):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory)
  (directory / "2" / "progress" / "metadata").write_text("{")
  syncs = []
  monkeypatch.setattr(checkpoints, "jax", _Process(index, 2))
  monkeypatch.setattr(
      checkpoints.multihost_utils, "sync_global_devices",
      lambda name: syncs.append((name, (directory / "2").exists(),
                                 (directory / "2.unreadable").exists())))
  step, _, _ = ckpt.restore_latest(jax.eval_shape(_tiny_state))
  ckpt.close()
  assert step == 1
  # All hosts meet once the rename is done (by process 0 only; the others
  # leave the shared folder alone), and only then re-list the steps.
  renamed = index == 0
  assert syncs == [(f"set_aside:{directory}", not renamed, renamed)]
  assert ckpt.all_steps() == ([1] if renamed else [1, 2])


def test_a_step_unreadable_on_another_host_is_skipped_here_too(
    tmp_path, monkeypatch):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory)
  # Both steps read fine here, on process 0; process 1 fails to read step 2.
  others_failed = iter([1, 0])
  gathered = []

  def allgather(failed_here):
    gathered.append(int(failed_here))
    return np.array([failed_here, next(others_failed)])

  monkeypatch.setattr(checkpoints, "jax", _Process(0, 2))
  monkeypatch.setattr(checkpoints.multihost_utils, "process_allgather",
                      allgather)
  monkeypatch.setattr(checkpoints.multihost_utils, "sync_global_devices",
                      lambda name: None)
  step, state, progress = ckpt.restore_latest(jax.eval_shape(_tiny_state))
  ckpt.close()
  # Step 2 is skipped on every host, so all of them resume from step 1.
  assert gathered == [0, 0]
  assert (step, progress) == (1, {"history": [1]})
  np.testing.assert_array_equal(state["params"]["w"], np.ones(64))
  assert ckpt.all_steps() == [1]
  assert (directory / "2.unreadable").is_dir()


def test_is_finite_finds_a_single_bad_value():
  good = {"w": jnp.ones((4, 4)), "step": jnp.array(3), "n": np.arange(3),
          "b": jnp.zeros(2, jnp.bfloat16)}
  assert checkpoints.is_finite(good)
  for bad in (np.array([1.0, np.inf, 2.0], np.float32),
              jnp.array([0.0, 1.0, np.nan], jnp.bfloat16)):
    assert not checkpoints.is_finite(dict(good, x=bad))


def test_default_keeps_the_two_latest_steps(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  for step in (1, 2, 3):
    ckpt.save(step, _tiny_state(step), {"history": [step]})
  ckpt.close()
  assert ckpt.all_steps() == [2, 3]
  assert sorted(p.name for p in (tmp_path / "gen_0").iterdir()) == ["2", "3"]


def test_wait_returns_with_the_step_on_disk(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  ckpt.save(1, {"w": jnp.ones((256, 256))}, {"history": [1]})
  ckpt.wait()
  assert [p.name for p in (tmp_path / "gen_0").iterdir()] == ["1"]
  assert (tmp_path / "gen_0" / "1" / "commit_success.txt").exists()
  ckpt.close()


def test_a_relative_directory_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoints.GenerationCheckpoints("run/gen_0")
  assert str(ckpt.directory) == str(tmp_path.resolve() / "run" / "gen_0")
  ckpt.save(1, _tiny_state(1.0), {"history": [1]})
  ckpt.close()
  monkeypatch.chdir("/")
  assert "run/gen_0/1;" in ckpt.last_good_message()
  step, _, progress = checkpoints.GenerationCheckpoints(
      tmp_path / "run" / "gen_0").restore_latest(jax.eval_shape(_tiny_state))
  assert step == 1 and progress == {"history": [1]}


def test_restore_places_the_state_as_the_abstract_state_says(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  ckpt.save(1, jax.device_put(_tiny_state(2.0), jax.devices()[3]), {})
  ckpt.close()
  mesh = parallel.make_mesh()
  sharding = parallel.replicated(mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      jax.eval_shape(_tiny_state))
  _, state, _ = checkpoints.GenerationCheckpoints(
      tmp_path / "gen_0").restore_latest(abstract)
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    assert len(leaf.addressable_shards) == 8
  np.testing.assert_array_equal(state["params"]["w"], np.full(64, 2.0))


# ------------------------------------------------------------ validation
