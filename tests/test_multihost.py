"""Two JAX processes on this machine train like one: multi-host, on CPU.

`test_two_processes_match_one` starts two worker processes (2 CPU devices
each) that find each other through a coordinator on 127.0.0.1, exactly as
two hosts of a cluster would (the `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` variables of
`launch/local_multiprocess.sh`), and one reference process with 4 devices.
Each runs the born-again pipeline (teacher + one generation) on the same
toy data, the workers each loading only their half of the train split as
the CIFAR loader does on two hosts. The workers must end with identical
parameters, equal to the reference's up to float summation order; only
process 0 may write the report; the Orbax checkpoints they wrote together
must restore on both, and a rerun must load the finished generations
instead of training again. The same processes then train seeds 0 and 1
side by side (config.parallel_seeds=2; on two hosts, one seed a host),
which must match the reference's seeds side by side and, for seed 0, the
run alone. The processes run under a hard timeout, so a hung collective
fails the test instead of blocking it.

This file is also the worker: `python tests/test_multihost.py WORKDIR OUT`.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from ban_jax.runtime import distributed
from tests import run_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240
NUM_TRAIN, NUM_TEST = 64, 16


# ------------------------------------------------------------ the worker


def _toy_dataset():
  """64 train + 16 test 8x8 images; mean/std fixed so hosts agree."""
  from ban_jax.data import Dataset  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  n = NUM_TRAIN + NUM_TEST
  images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, (n,), dtype=np.int32)
  return Dataset(name="toy", train_images=images[:NUM_TRAIN],
                 train_labels=labels[:NUM_TRAIN],
                 test_images=images[NUM_TRAIN:],
                 test_labels=labels[NUM_TRAIN:], num_classes=10,
                 mean=(120.0,), std=(70.0,))


def _host_block(dataset, index, count):
  """What the CIFAR loader gives host `index` of `count`: its train block."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  per_host = len(dataset.train_labels) // count
  rows = slice(index * per_host, (index + 1) * per_host)
  return dataclasses.replace(dataset,
                             train_images=dataset.train_images[rows],
                             train_labels=dataset.train_labels[rows])


def _config():
  sys.path.insert(0, REPO)
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  config.model.name = "wrn10_1"
  config.model.dtype = "float32"
  config.num_generations = 1
  config.num_epochs = 1
  config.optim.lr_decay_epochs = ()
  config.batch_size = 16
  config.eval_batch_size = 16
  config.data.augment = True
  config.data.crop_padding = 2
  # A checkpoint in mid-epoch as well as at its end.
  config.checkpoint_every_steps = 2
  return config


def _worker(workdir: str, out_dir: str) -> None:
  launch = distributed.initialize()
  # pylint: disable=g-import-not-at-top
  import jax
  from etils import epath
  from ban_jax.runtime import checkpoints
  from ban_jax.runtime import parallel
  from ban_jax import pipeline
  from ban_jax.reporting import report
  from ban_jax import train
  # pylint: enable=g-import-not-at-top
  index, count = jax.process_index(), jax.process_count()
  dataset = _host_block(_toy_dataset(), index, count)
  pipeline.load_dataset = lambda data_config: dataset
  report_calls = []
  write = report.write

  def recording_write(*args, **kwargs):
    report_calls.append(index)
    return write(*args, **kwargs)

  report.write = recording_write
  config = _config()
  results = pipeline.run(config, workdir)
  # A rerun loads both finished generations from the shared checkpoints.
  fit_calls = []
  fit = train.fit
  train.fit = lambda *a, **k: fit_calls.append(1) or fit(*a, **k)
  rerun = pipeline.run(config, workdir)
  train.fit = fit

  mesh = parallel.make_mesh()
  data = train.put_dataset(dataset, mesh, config.eval_batch_size)
  trainer = pipeline._trainer({}, config, config.model.name, None, False,
                              data, mesh)
  ckpt = checkpoints.GenerationCheckpoints(
      epath.Path(workdir) / f"seed_{config.seed}" / "gen_1" / "checkpoints")
  step, state, _ = ckpt.restore_latest(trainer.abstract_state())
  ckpt.close()
  params = parallel.fetch(state.variables)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(os.path.join(out_dir, f"params_{index}.npz"), **flat)
  # The train split on the devices is the hosts' blocks, in process order.
  whole = parallel.fetch(data.train_labels)

  cache = jax.config.jax_compilation_cache_dir  # The workdir's, as yet.
  cache_files = len(os.listdir(cache))

  # Seeds 0 and 1 side by side: on two hosts, each seed on one host's two
  # devices, the train split gathered whole onto every device. A rerun
  # loads both seeds' generations.
  seeds_config = _config()
  seeds_config.seeds = (0, 1)
  seeds_config.parallel_seeds = 2
  seeds_dir = os.path.join(out_dir, "seeds_workdir")
  together = pipeline.run(seeds_config, seeds_dir)
  together_again = pipeline.run(seeds_config, seeds_dir)
  with open(os.path.join(out_dir, f"facts_{index}.json"), "w") as f:
    json.dump({
        "launch": launch.kind, "process_count": count,
        "device_count": jax.device_count(),
        "mesh": dict(mesh.shape), "step": step,
        "train_labels_ok": bool(np.array_equal(
            whole, _toy_dataset().train_labels)),
        "report_calls": report_calls, "fit_calls_on_rerun": len(fit_calls),
        "same_rerun": _scores(results) == _scores(rerun),
        "generations": _scores(results),
        "seed_mesh": dict(parallel.make_seed_mesh(2).shape),
        "seeds": [_scores(chain) for chain in together["per_seed"]],
        "same_seeds_rerun": [_scores(chain) for chain in
                             together_again["per_seed"]] == [
                                 _scores(chain) for chain in
                                 together["per_seed"]],
        "compile_cache": cache, "compile_cache_files": cache_files,
    }, f)


def _scores(results):
  """What a run computed, less wall-clock timings."""
  timings = ("images_per_second", "seconds_left", "seconds",
             "chain_seconds_left")
  return [[g["test_accuracy"],
           [{k: v for k, v in r.items() if k not in timings}
            for r in g["history"]]] for g in results["generations"]]


# ------------------------------------------------------------- the tests


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(args, env_extra, devices, log_path, script=__file__):
  """Starts `python [script] args`: this file's worker, or a module (-m)."""
  env = dict(os.environ)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID", "BAN_JAX_DISTRIBUTED"):
    env.pop(name, None)
  env.update(env_extra)
  env["JAX_PLATFORMS"] = "cpu"
  # Unoptimised XLA code compiles twice as fast; this test is about which
  # numbers come out, not how fast, and every process uses the same flags.
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  # Every compiled program goes to the cache, however fast it compiled.
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  script = [os.path.abspath(script)] if script else []
  return subprocess.Popen(
      [sys.executable, *script, *args], env=env,
      stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log


def _tail(path, lines=30):
  with open(path) as f:
    return "".join(f.readlines()[-lines:])


def _exit_codes(runs, logs, meanwhile=lambda: None) -> list[int]:
  """The processes' exit codes, after `meanwhile()`; a hang fails the test."""
  try:
    meanwhile()
    return [proc.wait(timeout=TIMEOUT_S) for proc, _ in runs]
  except subprocess.TimeoutExpired:
    pytest.fail(f"A process hung for {TIMEOUT_S} s; last lines:\n" +
                "\n".join(f"--- {log.name}\n{_tail(log)}" for log in logs))
  finally:
    for proc, log in runs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()


def test_two_processes_match_one(tmp_path):
  port = _free_port()
  multi, single = tmp_path / "multi", tmp_path / "single"
  multi.mkdir()
  single.mkdir()
  runs = []
  for pid in range(2):
    runs.append(_start(
        [str(multi / "workdir"), str(multi)],
        {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
         "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid)}, 2,
        tmp_path / f"worker_{pid}.log"))
  runs.append(_start([str(single / "workdir"), str(single)], {}, 4,
                     tmp_path / "reference.log"))
  logs = [tmp_path / "worker_0.log", tmp_path / "worker_1.log",
          tmp_path / "reference.log"]
  for code, log in zip(_exit_codes(runs, logs), logs):
    assert code == 0, f"{log.name} exited with {code}:\n{_tail(log)}"

  facts = [json.loads((multi / f"facts_{i}.json").read_text())
           for i in range(2)]
  reference = json.loads((single / "facts_0.json").read_text())
  assert reference["process_count"] == 1 and reference["launch"] == "single"
  assert reference["compile_cache"] == str(single / "workdir" /
                                           "compile_cache")
  for i, fact in enumerate(facts):
    assert fact["launch"] == "explicit"
    assert fact["process_count"] == 2 and fact["device_count"] == 4
    assert fact["mesh"] == {"process": 2, "device": 2}
    assert fact["train_labels_ok"], "global train split != hosts' blocks"
    assert fact["step"] == NUM_TRAIN // 16
    assert fact["fit_calls_on_rerun"] == 0 and fact["same_rerun"]
    # Process 0 writes the reports of the four runs (two, and their
    # reruns), process 1 none.
    assert fact["report_calls"] == ([0] * 4 if i == 0 else [])
    # One cache in the shared workdir: process 0 writes, both read.
    assert fact["compile_cache"] == str(multi / "workdir" / "compile_cache")
    assert fact["compile_cache_files"] > 0
  assert facts[0]["generations"] == facts[1]["generations"]
  assert (multi / "workdir" / "results.json").exists()

  params = [dict(np.load(multi / f"params_{i}.npz")) for i in range(2)]
  expected = dict(np.load(single / "params_0.npz"))
  assert sorted(params[0]) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(params[0][name], params[1][name])
    np.testing.assert_allclose(params[0][name], value, rtol=1e-4, atol=1e-5,
                               err_msg=name)
  # Train losses per epoch, as logged: the same steps were taken.
  for got, want in zip(facts[0]["generations"], reference["generations"]):
    np.testing.assert_allclose(
        [r["train_loss"] for r in got[1]], [r["train_loss"] for r in want[1]],
        rtol=1e-4)

  # Seeds side by side on two hosts: one seed a host, as on one.
  assert facts[0]["seed_mesh"] == {"seed": 2, "process": 1, "device": 2}
  assert facts[0]["seeds"] == facts[1]["seeds"]
  assert all(fact["same_seeds_rerun"] for fact in facts + [reference])
  seed_0_alone = facts[0]["generations"]
  for got, want in [*zip(facts[0]["seeds"], reference["seeds"]),
                    (facts[0]["seeds"][0], seed_0_alone)]:
    for (got_accuracy, got_history), (accuracy, history) in zip(
        got, want, strict=True):
      assert got_accuracy == pytest.approx(accuracy, abs=100 / NUM_TEST)
      np.testing.assert_allclose([r["train_loss"] for r in got_history],
                                 [r["train_loss"] for r in history],
                                 rtol=1e-4)
  assert facts[0]["seeds"][0] != facts[0]["seeds"][1]  # Two networks.


def test_sigterm_to_one_host_stops_both_at_the_same_checkpointed_step(
    tmp_path):
  """A preemption notice reaches one host; JAX's service tells the other."""
  port = _free_port()
  workdir = tmp_path / "workdir"
  command = ["-m", "ban_jax.main", "--config=configs/digits.py",
             f"--workdir={workdir}", "--config.model.name=wrn10_1",
             "--config.num_generations=1", "--config.num_epochs=30",
             # Several steps per call: every host must see every step id.
             "--config.steps_per_call=2"]
  runs = [_start(command, {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                           "JAX_NUM_PROCESSES": "2",
                           "JAX_PROCESS_ID": str(pid)}, 1,
                 tmp_path / f"worker_{pid}.log", script=None)
          for pid in range(2)]
  logs = [tmp_path / "worker_0.log", tmp_path / "worker_1.log"]

  def signal_host_1_in_epoch_2():
    run_results.wait_until(
        lambda: "gen 0 epoch 1/30" in logs[0].read_text(),
        [proc for proc, _ in runs], logs[0], "epoch 1 of generation 0",
        timeout=TIMEOUT_S)
    runs[1][0].send_signal(signal.SIGTERM)

  codes = _exit_codes(runs, logs, signal_host_1_in_epoch_2)
  assert codes == [143, 143], [_tail(log) for log in logs]
  last_lines = [log.read_text().strip().splitlines()[-1] for log in logs]
  assert last_lines[0] == last_lines[1]  # The same step on both hosts.
  stopped = re.fullmatch(r"STOPPED: Stopped by SIGTERM in generation 0 at "
                         r"step (\d+), checkpointed in (.*)\. Rerun .*",
                         last_lines[0])
  assert stopped, last_lines
  step = int(stopped[1])
  assert 21 < step < 30 * 21
  assert stopped[2] == f"{workdir}/seed_0/gen_0/checkpoints/{step}"
  assert (workdir / "seed_0" / "gen_0" / "checkpoints" / str(step)).is_dir()


# ------------------------------------------------ start-up detection


def test_detect_single_process_by_default():
  assert not distributed.detect({}).multi_process
  assert not distributed.detect({"SLURM_NTASKS": "1",
                                 "SLURM_STEP_NODELIST": "n1"}).multi_process
  # An sbatch script's own shell (no srun step) is one process.
  assert not distributed.detect({"SLURM_NTASKS": "8"}).multi_process


def test_detect_explicit_settings():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
         "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.detect(env) == distributed.Launch(
      "explicit", "10.0.0.1:1234", 4, 3)
  # Arguments win over the environment.
  assert distributed.detect(env, coordinator_address="h:1", num_processes=2,
                            process_id=0).num_processes == 2
  assert not distributed.detect(dict(env, JAX_NUM_PROCESSES="1",
                                     JAX_PROCESS_ID="0")).multi_process
  with pytest.raises(ValueError, match="together"):
    distributed.detect({"JAX_COORDINATOR_ADDRESS": "h:1"})
  with pytest.raises(ValueError, match="not in"):
    distributed.detect(dict(env, JAX_PROCESS_ID="4"))


def test_detect_cluster_environments():
  assert distributed.detect({"SLURM_NTASKS": "16", "SLURM_STEP_NODELIST":
                             "gpu[01-02]"}).kind == "slurm"
  assert distributed.detect({"OMPI_MCA_orte_hnp_uri": "x",
                             "OMPI_COMM_WORLD_SIZE": "2"}).kind == "openmpi"
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "a,b"}).kind == "tpu"
  assert not distributed.detect({"TPU_WORKER_HOSTNAMES": "a"}).multi_process
  slurm = {"SLURM_NTASKS": "16", "SLURM_STEP_NODELIST": "gpu01"}
  assert not distributed.detect(dict(slurm, BAN_JAX_DISTRIBUTED="0")
                                ).multi_process
  assert distributed.detect({"BAN_JAX_DISTRIBUTED": "1"}).kind == "forced"
  with pytest.raises(ValueError, match="BAN_JAX_DISTRIBUTED"):
    distributed.detect({"BAN_JAX_DISTRIBUTED": "maybe"})


_EXPLICIT = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
             "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}


def test_detect_explicit_settings_come_in_one_piece():
  # Some arguments: the environment does not fill in the others.
  with pytest.raises(ValueError, match="together"):
    distributed.detect(_EXPLICIT, num_processes=2)
  # An empty variable is an unset one.
  with pytest.raises(ValueError, match="together"):
    distributed.detect(dict(_EXPLICIT, JAX_COORDINATOR_ADDRESS=""))
  with pytest.raises(ValueError, match="not in"):
    distributed.detect(dict(_EXPLICIT, JAX_PROCESS_ID="-1"))
  with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES='four' is not"):
    distributed.detect(dict(_EXPLICIT, JAX_NUM_PROCESSES="four"))
  with pytest.raises(ValueError, match=r"\$SLURM_NTASKS='x' is not"):
    distributed.detect({"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "x"})
  # Explicit settings come before the on/off switch.
  assert distributed.detect(dict(_EXPLICIT, BAN_JAX_DISTRIBUTED="0")) == (
      distributed.Launch("explicit", "10.0.0.1:1234", 4, 3))


@pytest.mark.parametrize("switch", ["0", "false", "off", "no", " Off ", "NO"])
def test_detect_switch_off(switch):
  slurm = {"SLURM_NTASKS": "16", "SLURM_STEP_NODELIST": "gpu01"}
  assert distributed.detect(dict(slurm, BAN_JAX_DISTRIBUTED=switch)) == (
      distributed.Launch("single"))


@pytest.mark.parametrize("switch", ["1", "true", "on", "yes", "True "])
def test_detect_switch_on(switch):
  assert distributed.detect({"BAN_JAX_DISTRIBUTED": switch}) == (
      distributed.Launch("forced"))


def test_detect_switch_auto_looks_at_the_cluster():
  slurm = {"SLURM_NTASKS": "16", "SLURM_STEP_NODELIST": "gpu01"}
  for switch in ("", "auto", "AUTO"):
    assert distributed.detect(dict(slurm, BAN_JAX_DISTRIBUTED=switch)).kind == (
        "slurm")
    assert not distributed.detect({"BAN_JAX_DISTRIBUTED": switch}
                                  ).multi_process


def test_detect_cluster_environments_need_more_than_one_process():
  # An srun step that does not say how many tasks it has is one.
  assert not distributed.detect({"SLURM_STEP_NODELIST": "n1"}).multi_process
  assert not distributed.detect({"OMPI_MCA_orte_hnp_uri": "x",
                                 "OMPI_COMM_WORLD_SIZE": "1"}).multi_process
  # The size alone, without mpirun's URI, is not an Open MPI job.
  assert not distributed.detect({"OMPI_COMM_WORLD_SIZE": "2"}).multi_process
  assert not distributed.detect({"TPU_WORKER_HOSTNAMES": "a, "}).multi_process
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "a, b"}).kind == "tpu"


@pytest.fixture
def fake_runtime(monkeypatch):
  """jax.distributed.initialize recorded, not run; an empty environment."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID", "BAN_JAX_DISTRIBUTED", "SLURM_NTASKS",
               "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri",
               "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *args: calls.append(args))
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  yield calls
  logging.set_verbosity(verbosity)


def test_initialize_single_process_does_nothing(fake_runtime):
  assert distributed.initialize() == distributed.Launch("single")
  assert distributed.initialize("h:1", 1, 0) == distributed.Launch("single")
  assert not fake_runtime


@pytest.mark.parametrize("process_id", [0, 1])
def test_initialize_passes_the_explicit_settings(fake_runtime, monkeypatch,
                                                 process_id):
  from absl import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_index", lambda: process_id)
  launch = distributed.initialize("h:1", 2, process_id)
  assert launch == distributed.Launch("explicit", "h:1", 2, process_id)
  assert fake_runtime == [("h:1", 2, process_id)]
  # Only process 0 logs below warnings.
  assert logging.get_verbosity() == (logging.INFO if process_id == 0
                                     else logging.WARNING)


def test_initialize_lets_jax_find_a_cluster(fake_runtime, monkeypatch):
  monkeypatch.setenv("BAN_JAX_DISTRIBUTED", "1")
  assert distributed.initialize().kind == "forced"
  assert fake_runtime == [()]


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2])
