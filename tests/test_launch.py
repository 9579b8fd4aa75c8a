"""The scripts of launch/, run against fake gcloud, sbatch, srun, nvidia-smi.

Each fake (and a fake `python3`) records its call as one JSON line: its
arguments, working directory and the launch-related environment. `gcloud
... ssh --worker=all --command=CMD` runs CMD under `bash -c` once per fake
TPU worker, each with its own home directory, and `scp` copies into those
homes; `sbatch` runs the script from a spool copy with a batch step's SLURM
variables, and `srun` runs its command once per task with the task's.
What each process would see is then checked: its exact arguments, and that
`ban_jax.runtime.distributed.detect` (and JAX, for SLURM) finds the right process
layout. Nothing here needs a network, a GPU, gcloud or SLURM.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from ban_jax.runtime import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
NUM_WORKERS = 2  # Fake TPU VM workers behind --worker=all.

_FAKE = r'''#!{python}
"""Stand-in for a tool of launch/: records its call in $FAKE_LOG."""
import json, os, shutil, subprocess, sys, tempfile, time

NAME = os.path.basename(sys.argv[0])
ARGS = sys.argv[1:]
ENV_PREFIXES = ("JAX_", "SLURM_", "SRUN_", "BAN_JAX_", "CUDA_VISIBLE_DEVICES",
                "XLA_FLAGS", "HOME", "FAKE_WORKER")


def record():
  env = {{k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}}
  line = json.dumps({{"tool": NAME, "argv": ARGS, "cwd": os.getcwd(),
                      "env": env}})
  with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(line + "\n")


def run_each(envs, command):
  """Runs command once per env; the first failure's exit code."""
  rc = 0
  for env in envs:
    code = subprocess.call(command, env={{**os.environ, **env}})
    rc = rc or code
  return rc


def gcloud():
  homes = os.environ["FAKE_HOMES"]
  workers = [os.path.join(homes, f"worker{{i}}") for i in range({workers})]
  if ARGS[3] == "scp":
    source, dest = ARGS[4], ARGS[5].split(":", 1)[1]
    dest = dest[2:] if dest.startswith("~/") else dest
    for home in workers:
      target = os.path.join(home, dest)
      if dest.endswith("/"):
        target = os.path.join(target, os.path.basename(source))
      shutil.copy(source, target)
    return 0
  command = [a for a in ARGS if a.startswith("--command=")][0]
  return run_each([{{"HOME": home, "FAKE_WORKER": str(i)}}
                   for i, home in enumerate(workers)],
                  ["bash", "-c", command[len("--command="):]])


def srun():
  command = ARGS[[i for i, a in enumerate(ARGS) if not a.startswith("-")][0]:]
  tasks = int(os.environ["SLURM_NTASKS"])
  per_node = tasks // int(os.environ["SLURM_JOB_NUM_NODES"])
  step = {{"SLURM_STEP_NODELIST": os.environ["SLURM_JOB_NODELIST"],
           "SLURM_STEP_NUM_NODES": os.environ["SLURM_JOB_NUM_NODES"]}}
  return run_each([dict(step, SLURM_PROCID=str(i),
                        SLURM_LOCALID=str(i % per_node),
                        SLURM_NODEID=str(i // per_node))
                   for i in range(tasks)], command)


def sbatch():
  """Runs the job now (not queued); returns the batch script's exit code."""
  options = {{}}
  i = 0
  while ARGS[i].startswith("-"):
    key, value = ARGS[i][2:].split("=", 1)
    options.setdefault(key, value)
    i += 1
  script, args = ARGS[i], ARGS[i + 1:]
  with open(script) as f:
    for line in f.read().splitlines()[1:]:
      if not line.startswith("#"):
        break
      if line.startswith("#SBATCH --"):
        key, value = line[len("#SBATCH --"):].split("=", 1)
        options.setdefault(key, value)
  nodes = int(options["nodes"])
  env = {{"SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": os.getcwd(),
          "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
          "SLURM_NTASKS": str(nodes * int(options["ntasks-per-node"])),
          "SLURM_JOB_NODELIST": (f"node[001-{{nodes:03d}}]" if nodes > 1
                                 else "node001"),
          "SLURM_GPUS_ON_NODE": options["gpus-per-node"],
          "SLURM_CPUS_PER_TASK": options["cpus-per-task"]}}
  with tempfile.TemporaryDirectory() as spool:  # sbatch runs a copy.
    shutil.copy(script, os.path.join(spool, "slurm_script"))
    return run_each([env], ["bash", os.path.join(spool, "slurm_script"),
                            *args])


def nvidia_smi():
  for i in range(int(os.environ.get("FAKE_GPUS", "4"))):
    print(f"GPU {{i}}: NVIDIA H200 (UUID: GPU-{{i}})")
  return 0


def python3():
  if ARGS[:1] == ["-c"] and "torch" in ARGS[1]:  # bench_gpu.sh's versions
    print("jax 0 flax 0 torch 0")
    return 0
  if ARGS and ARGS[0] in ("-c", "-"):  # Small helpers run for real.
    os.execv(sys.executable, [sys.executable, *ARGS])
  me = "proc={{}} ".format(os.environ.get("JAX_PROCESS_ID",
                                          os.environ.get("SLURM_PROCID", "")))
  me += " ".join(ARGS)
  if os.environ.get("FAKE_FAIL_IF") and os.environ["FAKE_FAIL_IF"] in me:
    print("fake failure: " + me, file=sys.stderr)
    return 3
  if os.environ.get("FAKE_SLEEP_IF") and os.environ["FAKE_SLEEP_IF"] in me:
    time.sleep(60)
  models = [a.split("=", 1)[1] if "=" in a else ARGS[ARGS.index(a) + 1]
            for a in ARGS if a.startswith("--models")]
  if models:  # ban_jax.tools.bench or the peer: one result row.
    impl = "torch" if ARGS[0].endswith("peer_torch.py") else "ban_jax"
    print(json.dumps({{"impl": impl, "model": models[0].split(",")[0],
                       "mode": "step", "batch": 128, "img_per_s": 10.0}}))
  return 0


if __name__ == "__main__":
  if not (NAME == "python3" and ARGS[:1] in (["-c"], ["-"])):
    record()  # Not the helper snippets the scripts run with python3.
  sys.exit({{"gcloud": gcloud, "srun": srun, "sbatch": sbatch,
            "nvidia-smi": nvidia_smi, "python3": python3}}[NAME]())
'''


@pytest.fixture
def fakes(tmp_path):
  """Runs a launch command with the fakes on PATH; returns what they saw."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  code = _FAKE.format(python=sys.executable, workers=NUM_WORKERS)
  for name in ("gcloud", "srun", "sbatch", "nvidia-smi", "python3"):
    (bin_dir / name).write_text(code)
    (bin_dir / name).chmod(0o755)
  homes = tmp_path / "homes"
  for i in range(NUM_WORKERS):  # As `tpu_pod.sh setup` leaves them.
    (homes / f"worker{i}" / "ban_jax").mkdir(parents=True)
  log = tmp_path / "calls.jsonl"

  def run(command, cwd=REPO, **env):
    """command: argv list or a shell line; env: extra variables."""
    if isinstance(command, str):
      command = ["bash", "-c", command]
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}",
            "HOME": str(tmp_path), "FAKE_LOG": str(log),
            "FAKE_HOMES": str(homes), "LC_ALL": "C"}
    if log.exists():
      log.unlink()
    start = time.time()
    proc = subprocess.run(command, cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=60)
    proc.wall_s = time.time() - start
    proc.calls = ([json.loads(l) for l in log.read_text().splitlines()]
                  if log.exists() else [])
    return proc

  run.homes = homes
  run.tmp = tmp_path
  return run


def _calls(proc, tool):
  return [c for c in proc.calls if c["tool"] == tool]


def _python_argv(proc):
  return [c["argv"] for c in _calls(proc, "python3")]


# Arguments the remote and local shells must pass through unchanged.
AWKWARD = ["--config=configs/cifar100.py", "--config.paper_row=a b",
           "it's", 'say "hi"', "$HOME", "*", "a\\b", ""]


# ------------------------------------------------------------ tpu_pod.sh


TPU_ENV = {"TPU_NAME": "ban-v4-32", "ZONE": "us-central2-b"}


def test_tpu_run_passes_arguments_to_every_worker_unchanged(fakes):
  proc = fakes([f"{LAUNCH}/tpu_pod.sh", "run", *AWKWARD], PROJECT="p",
               **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  (gcloud,) = _calls(proc, "gcloud")
  assert gcloud["argv"][:8] == [
      "compute", "tpus", "tpu-vm", "ssh", "ban-v4-32",
      "--zone=us-central2-b", "--project=p", "--worker=all"]
  assert gcloud["argv"][8].startswith(
      "--command=cd ~/ban_jax && BAN_JAX_DISTRIBUTED=1 python3 -m "
      "ban_jax.main ")
  runs = _calls(proc, "python3")
  assert [r["argv"] for r in runs] == [["-m", "ban_jax.main", *AWKWARD]] * 2
  for i, r in enumerate(runs):
    home = str(fakes.homes / f"worker{i}")
    assert r["env"]["HOME"] == home and r["env"]["FAKE_WORKER"] == str(i)
    assert r["cwd"] == os.path.join(home, "ban_jax")
    # JAX then reads the pod's layout from the TPU metadata.
    assert distributed.detect(r["env"]) == distributed.Launch("forced")


def test_tpu_run_without_arguments_passes_none(fakes):
  # printf '%q ' with no arguments printed '': one empty argument.
  for i in range(NUM_WORKERS):
    (fakes.homes / f"worker{i}" / "src").mkdir()
  proc = fakes([f"{LAUNCH}/tpu_pod.sh", "run"], MODULE="ban_jax.tools.bench",
               REMOTE_DIR="src", **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  assert _python_argv(proc) == [["-m", "ban_jax.tools.bench"]] * NUM_WORKERS
  assert _calls(proc, "python3")[0]["cwd"] == str(
      fakes.homes / "worker0" / "src")


def test_tpu_run_detached(fakes):
  proc = fakes([f"{LAUNCH}/tpu_pod.sh", "run", *AWKWARD], DETACH="1",
               **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  command = _calls(proc, "gcloud")[0]["argv"][-1]
  assert command.startswith("--command=nohup bash -c ")
  assert command.endswith(" > ~/ban_jax.log 2>&1 < /dev/null &")
  log = fakes.tmp / "calls.jsonl"
  deadline = time.time() + 20
  while time.time() < deadline:  # The runs go on in the background.
    runs = [json.loads(l) for l in log.read_text().splitlines()
            if '"python3"' in l]
    if len(runs) == NUM_WORKERS:
      break
    time.sleep(0.1)
  assert sorted(r["env"]["FAKE_WORKER"] for r in runs) == ["0", "1"]
  assert [r["argv"] for r in runs] == [["-m", "ban_jax.main", *AWKWARD]] * 2
  for i in range(NUM_WORKERS):
    assert (fakes.homes / f"worker{i}" / "ban_jax.log").exists()


def test_tpu_run_detach_0_stays_attached(fakes):
  proc = fakes([f"{LAUNCH}/tpu_pod.sh", "run", "--x=1"], DETACH="0",
               **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  assert "nohup" not in _calls(proc, "gcloud")[0]["argv"][-1]
  assert _python_argv(proc) == [["-m", "ban_jax.main", "--x=1"]] * 2


def test_tpu_run_exit_code_is_gclouds(fakes):
  proc = fakes([f"{LAUNCH}/tpu_pod.sh", "run", "--x=1"],
               FAKE_FAIL_IF="--x=1", **TPU_ENV)
  assert proc.returncode == 3


def _git(repo, *args):
  subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                  "user.email=t@t", *args], check=True, capture_output=True)


def test_tpu_setup_copies_this_checkout_from_anywhere(fakes):
  # A small checkout with the script, a tracked file edited and one deleted
  # (not committed), and an untracked one.
  repo = fakes.tmp / "checkout"
  (repo / "launch").mkdir(parents=True)
  shutil.copy(f"{LAUNCH}/tpu_pod.sh", repo / "launch")
  (repo / "requirements.txt").write_text("numpy==2.0\njax==1.2.3\n")
  (repo / "edited.py").write_text("old\n")
  (repo / "dir with space").mkdir()
  (repo / "dir with space" / "deleted.py").write_text("x\n")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  _git(repo, "commit", "-qm", "x")
  (repo / "edited.py").write_text("new\n")
  (repo / "dir with space" / "deleted.py").unlink()
  (repo / "untracked.py").write_text("x\n")
  # Run from another git repository: its files must not be the ones sent.
  elsewhere = fakes.tmp / "elsewhere"
  elsewhere.mkdir()
  _git(elsewhere, "init", "-q")
  proc = fakes([str(repo / "launch" / "tpu_pod.sh"), "setup"],
               cwd=elsewhere, **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  scp, ssh = _calls(proc, "gcloud")
  assert scp["argv"][:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp["argv"][5:] == ["ban-v4-32:ban_jax_src.tgz",
                             "--zone=us-central2-b", "--worker=all"]
  assert ssh["argv"][3] == "ssh"
  assert _python_argv(proc) == [
      ["-m", "pip", "install", "-q", "-r", "requirements.txt", "-e", ".",
       "gcsfs"],
      ["-m", "pip", "install", "-q", "jax[tpu]==1.2.3"]] * NUM_WORKERS
  for i in range(NUM_WORKERS):
    remote = fakes.homes / f"worker{i}" / "ban_jax"
    files = sorted(str(p.relative_to(remote)) for p in remote.rglob("*")
                   if p.is_file())
    assert files == ["edited.py", "launch/tpu_pod.sh", "requirements.txt"]
    assert (remote / "edited.py").read_text() == "new\n"


def test_tpu_setup_needs_the_jax_version(fakes):
  repo = fakes.tmp / "checkout"
  (repo / "launch").mkdir(parents=True)
  shutil.copy(f"{LAUNCH}/tpu_pod.sh", repo / "launch")
  (repo / "requirements.txt").write_text("jax>=1\n")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  proc = fakes([str(repo / "launch" / "tpu_pod.sh"), "setup"], **TPU_ENV)
  assert proc.returncode == 1
  assert f"no jax==VERSION line in {repo}/requirements.txt" in proc.stderr
  assert not proc.calls


def test_tpu_copy_puts_the_file_in_data_on_every_worker(fakes):
  (fakes.tmp / "c100.tgz").write_text("data")
  proc = fakes([f"{LAUNCH}/tpu_pod.sh", "copy", "c100.tgz"], cwd=fakes.tmp,
               **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  ssh, scp = _calls(proc, "gcloud")
  assert ssh["argv"][-1] == "--command=mkdir -p ~/data"
  assert scp["argv"][4:] == ["c100.tgz", "ban-v4-32:data/",
                             "--zone=us-central2-b", "--worker=all"]
  for i in range(NUM_WORKERS):
    assert (fakes.homes / f"worker{i}" / "data" / "c100.tgz").read_text() == (
        "data")


@pytest.mark.parametrize("args, env, message, code", [
    (["copy"], TPU_ENV, "copy needs a file", 1),
    (["copy", "nope.tgz"], TPU_ENV, "copy: no file nope.tgz", 2),
    ([], TPU_ENV, "usage: tpu_pod.sh setup | copy FILE | run ARGS", 1),
    (["start"], TPU_ENV, "unknown command start", 2),
    (["run"], {"ZONE": "z"}, "set TPU_NAME to the TPU VM name", 1),
    (["run"], {"TPU_NAME": "t", "ZONE": ""}, "set ZONE to its zone", 1),
])
def test_tpu_mistakes_stop_before_gcloud(fakes, args, env, message, code):
  proc = fakes([f"{LAUNCH}/tpu_pod.sh", *args], cwd=fakes.tmp, **env)
  assert proc.returncode == code
  assert message in proc.stderr
  assert not proc.calls


# ------------------------------------------------- slurm_multinode.sbatch


def test_sbatch_script_directives_come_before_any_command():
  # sbatch stops reading #SBATCH lines at the first command.
  with open(f"{LAUNCH}/slurm_multinode.sbatch") as f:
    lines = f.read().splitlines()
  first_command = next(i for i, l in enumerate(lines[1:], 1)
                       if l.strip() and not l.startswith("#"))
  directives = [i for i, l in enumerate(lines) if l.startswith("#SBATCH")]
  assert directives and max(directives) < first_command


def test_slurm_every_task_sees_its_place_in_the_job(fakes, monkeypatch):
  proc = fakes(["sbatch", "--nodes=3", f"{LAUNCH}/slurm_multinode.sbatch",
                *AWKWARD])
  assert proc.returncode == 0, proc.stderr
  assert "ban_jax: 3 nodes x 8 GPUs, nodes node[001-003]" in proc.stderr
  (srun,) = _calls(proc, "srun")
  assert srun["argv"] == ["--kill-on-bad-exit=1", "python3", "-m",
                          "ban_jax.main", *AWKWARD]
  assert srun["cwd"] == REPO
  assert srun["env"]["SRUN_CPUS_PER_TASK"] == "16"
  tasks = _calls(proc, "python3")
  assert [t["argv"] for t in tasks] == [["-m", "ban_jax.main", *AWKWARD]] * 3
  assert not _calls(proc, "nvidia-smi")
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  for i, task in enumerate(tasks):
    env = task["env"]
    assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"
    assert distributed.detect(env) == distributed.Launch("slurm")
    # What jax.distributed.initialize() then works out (JAX's own reader).
    for name in list(os.environ):
      if name.startswith(("SLURM_", "JAX_COORDINATOR")):
        monkeypatch.delenv(name)
    for name, value in env.items():
      if name.startswith("SLURM_"):
        monkeypatch.setenv(name, value)
    ids = [int(d) for d in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    assert clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, ids, "slurm", 300) == (
            "node001:61586", 3, i, ids)  # Port: 61440 + 4242 % 4096.


def test_slurm_counts_gpus_with_nvidia_smi_when_slurm_does_not(fakes):
  proc = fakes(["bash", f"{LAUNCH}/slurm_multinode.sbatch", "--x=1"],
               SLURM_JOB_ID="7", SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="2",
               SLURM_JOB_NODELIST="n[1-2]", SLURM_SUBMIT_DIR=REPO,
               FAKE_GPUS="4")
  assert proc.returncode == 0, proc.stderr
  assert [c["argv"] for c in _calls(proc, "nvidia-smi")] == [["-L"]]
  assert [t["env"]["JAX_LOCAL_DEVICE_IDS"] for t in _calls(proc, "python3")
          ] == ["0,1,2,3"] * 2


def test_slurm_exit_code_is_the_failed_tasks(fakes):
  proc = fakes(["sbatch", f"{LAUNCH}/slurm_multinode.sbatch", "--x=1"],
               FAKE_FAIL_IF="proc=1 ")
  assert proc.returncode == 3
  assert len(_calls(proc, "python3")) == 2


def test_slurm_outside_a_job_says_so(fakes):
  proc = fakes(["bash", f"{LAUNCH}/slurm_multinode.sbatch"])
  assert proc.returncode == 1
  assert "submit this script with sbatch" in proc.stderr
  assert not proc.calls


# --------------------------------------------------------- single_node.sh


def test_single_node_is_one_process_even_in_a_slurm_step(fakes):
  proc = fakes([f"{LAUNCH}/single_node.sh", *AWKWARD], GPUS="0,1",
               SLURM_NTASKS="4", SLURM_STEP_NODELIST="n1")
  assert proc.returncode == 0, proc.stderr
  (run,) = _calls(proc, "python3")
  assert run["argv"] == ["-m", "ban_jax.main", *AWKWARD]
  assert run["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
  assert distributed.detect(run["env"]) == distributed.Launch("single")
  failed = fakes([f"{LAUNCH}/single_node.sh", "--x=1"], FAKE_FAIL_IF="--x")
  assert failed.returncode == 3
  assert "CUDA_VISIBLE_DEVICES" not in _calls(failed, "python3")[0]["env"]


# -------------------------------------------------- local_multiprocess.sh


def test_local_processes_find_each_other(fakes):
  proc = fakes([f"{LAUNCH}/local_multiprocess.sh", *AWKWARD], NPROC="3",
               PER_GPU="1", LOG_DIR=str(fakes.tmp / "logs"))
  assert proc.returncode == 0, proc.stderr
  runs = sorted(_calls(proc, "python3"),
                key=lambda r: r["env"]["JAX_PROCESS_ID"])
  assert [r["argv"] for r in runs] == [["-m", "ban_jax.main", *AWKWARD]] * 3
  port = re.search(r"coordinator 127\.0\.0\.1:(\d+)", proc.stderr).group(1)
  for i, run in enumerate(runs):
    assert run["env"]["JAX_LOCAL_DEVICE_IDS"] == str(i)
    assert distributed.detect(run["env"]) == distributed.Launch(
        "explicit", f"127.0.0.1:{port}", 3, i)
  assert sorted(os.listdir(fakes.tmp / "logs")) == ["process_1.log",
                                                    "process_2.log"]


def test_local_cpu_rehearsal_settings(fakes):
  proc = fakes([f"{LAUNCH}/local_multiprocess.sh", "--x=1"], NPROC="2",
               CPU_DEVICES="2", PER_GPU="0", PORT="4321",
               MODULE="ban_jax.tools.bench")
  assert proc.returncode == 0, proc.stderr
  for run in _calls(proc, "python3"):
    assert run["argv"] == ["-m", "ban_jax.tools.bench", "--x=1"]
    assert run["env"]["JAX_PLATFORMS"] == "cpu"
    assert run["env"]["XLA_FLAGS"] == (
        " --xla_force_host_platform_device_count=2")
    assert run["env"]["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:4321"
    assert "JAX_LOCAL_DEVICE_IDS" not in run["env"]  # PER_GPU=0 is off.


def test_local_failure_stops_the_others_with_its_exit_code(fakes):
  proc = fakes([f"{LAUNCH}/local_multiprocess.sh", "--x=1"], NPROC="3",
               PORT="4321", FAKE_FAIL_IF="proc=2 ", FAKE_SLEEP_IF="--x=1",
               LOG_DIR=str(fakes.tmp / "logs"))
  assert proc.returncode == 3
  assert proc.wall_s < 30  # Not the 60 s the others sleep.
  assert "A process failed (exit code 3)" in proc.stderr
  assert "fake failure: proc=2" in (fakes.tmp / "logs" /
                                    "process_2.log").read_text()


@pytest.mark.parametrize("nproc", ["0", "two", "-1"])
def test_local_bad_process_count(fakes, nproc):
  proc = fakes([f"{LAUNCH}/local_multiprocess.sh"], NPROC=nproc, PORT="1")
  assert proc.returncode == 2
  assert f"NPROC={nproc}: set it to the number of processes" in proc.stderr
  assert not proc.calls


# ----------------------------------------------------------- bench_gpu.sh


def _noting_limits(fakes):
  """A `timeout` that notes each stage's limit in the returned file and
  runs the stage."""
  limits = fakes.tmp / "limits"
  (fakes.tmp / "bin" / "timeout").write_text(
      f'#!/bin/bash\necho "$1" >> {limits}\nshift\nexec "$@"\n')
  (fakes.tmp / "bin" / "timeout").chmod(0o755)
  return limits


def test_bench_gpu_runs_every_stage_and_reports_failures(fakes):
  out = fakes.tmp / "out"
  limits = _noting_limits(fakes)
  proc = fakes(["bash", f"{LAUNCH}/bench_gpu.sh"], cwd=fakes.tmp,
               PYTHONPATH=REPO, OUT=str(out),
               BENCH_ARGS="--steps=2  --warmup=1",
               FAKE_FAIL_IF="densenet100_12")
  assert proc.returncode == 1
  assert ("Failed: ban_jax densenet100_12 at 128,64 (exit code 3)"
          in proc.stderr)
  bench = ["-m", "ban_jax.tools.bench"]
  assert _python_argv(proc) == [
      [".peer/peer_torch.py", "--models", "resnet18,densenet_bc100",
       "--modes", "fp32,bf16"],
      [".peer/peer_torch.py", "--models", "densenet_bc112_33",
       "--modes", "fp32,bf16"],
      [".peer/peer_torch.py", "--models", "wrn28_10", "--modes", "compile"],
      [*bench, "--models=resnet18,wrn28_10", "--batch_sizes=128",
       "--modes=step+aug,epoch", "--steps=2", "--warmup=1"],
      [*bench, "--models=densenet100_12", "--batch_sizes=128,64",
       "--modes=step+aug", "--steps=2", "--warmup=1"],
      [*bench, "--models=densenet112_33", "--batch_sizes=128,64",
       "--modes=step+aug", "--steps=2", "--warmup=1"]]
  # One device call is 10 minutes: the stages' limits leave 30 s spare.
  stage_limits = [int(x) for x in limits.read_text().split()]
  assert stage_limits == [100, 60, 110, 70, 115, 110]
  assert sum(stage_limits) < 9.5 * 60
  table = (out / "table.md").read_text()
  assert "| ban_jax | resnet18 | step | 128 | 10.0 |" in table
  assert "| torch | resnet18 | step | 128 | 10.0 |" in table
  # The fake's rows are at batch 128: the peer's DenseNet-BC-112-33 pairs
  # with ours through bench.PEER_NAMES.
  assert "| torch | densenet_bc112_33 | step | 128 | 10.0 |" in table
  good = fakes(["bash", f"{LAUNCH}/bench_gpu.sh"], cwd=fakes.tmp,
               PYTHONPATH=REPO, OUT=str(out), MODELS="resnet18",
               PEER_EAGER="", PEER_COMPILE="")
  assert good.returncode == 0, good.stderr
  assert _python_argv(good) == [[*bench, "--models=resnet18",
                                 "--batch_sizes=128"]]
  # PART=2: the scanned DenseNets alone, no peer, into a folder of its own.
  (fakes.tmp / "limits").unlink()
  part2 = fakes(["bash", f"{LAUNCH}/bench_gpu.sh"], cwd=fakes.tmp,
                PYTHONPATH=REPO, PART="2")
  assert part2.returncode == 0, part2.stderr
  assert _python_argv(part2) == [
      [*bench, f"--models={model}", "--batch_sizes=128", "--modes=step+aug",
       "--layers_per_scan=8"]
      for model in ("densenet100_12", "densenet112_33")]
  assert [int(x) for x in limits.read_text().split()] == [115, 110]
  assert (fakes.tmp / "bench_out_part2" / "table.md").exists()
  bad = fakes(["bash", f"{LAUNCH}/bench_gpu.sh"], cwd=fakes.tmp,
              PYTHONPATH=REPO, PART="4")
  assert bad.returncode == 2
  assert ("PART=4: use 1 (the table against the peer), 2 (scanned "
          "DenseNets) or 3 (seeds side by side)." in bad.stderr)


def test_bench_gpu_times_seeds_side_by_side(fakes):
  out = fakes.tmp / "out"
  limits = _noting_limits(fakes)
  proc = fakes(["bash", f"{LAUNCH}/bench_gpu.sh"], cwd=fakes.tmp,
               PYTHONPATH=REPO, OUT=str(out), PART="3")
  assert proc.returncode == 0, proc.stderr
  bench = ["-m", "ban_jax.tools.bench"]
  assert _python_argv(proc) == [
      [*bench, f"--models={model}", "--batch_sizes=128", "--modes=step+aug",
       f"--seeds={seeds}"]
      for model in ("resnet20", "wrn16_2", "wrn28_1", "wrn28_10")
      for seeds in (1, 4, 8)]
  stage_limits = [int(x) for x in limits.read_text().split()]
  assert stage_limits == [35] * 9 + [60, 70, 80]
  assert sum(stage_limits) < 9 * 60


# ----------------------------------------------------- the README's commands


def _readme_commands():
  with open(f"{LAUNCH}/README.md") as f:
    text = " ".join(f.read().split())
  spans = re.findall(r"`([^`]*)`", text)
  exports = dict(re.findall(r"(\w+)=(\S+)",
                            next(s for s in spans if s.startswith("export "))))
  commands = [s for s in spans
              if re.match(r"([A-Z_]+=\S+ )*(sbatch (-\S+ )*)?launch/\S+ ",
                          s + " ") and "bench_gpu.sh" not in s]
  return exports, commands


def test_readme_commands_run_as_written(fakes):
  exports, commands = _readme_commands()
  assert len(commands) >= 9, commands
  # A working directory with the README's relative paths.
  os.symlink(LAUNCH, fakes.tmp / "launch")
  (fakes.tmp / "cifar-100-python.tar.gz").write_text("x")
  for command in commands:
    words = shlex.split(command)
    settings = dict(w.split("=", 1) for w in words
                    if re.fullmatch(r"[A-Z_]+=.*", w))
    script = next(w for w in words if w.startswith("launch/"))
    with open(os.path.join(fakes.tmp, script)) as f:
      source = f.read()
    for name in settings:  # Every variable the README sets is read.
      assert re.search(r"\$\{?" + name + r"\b", source), (name, script)
    proc = fakes(command, cwd=fakes.tmp, **exports)
    assert proc.returncode == 0, (command, proc.stderr)
    args = words[words.index(script) + 1:]
    if args[:1] in (["setup"], ["copy"]):
      assert _calls(proc, "gcloud"), command
      continue
    args = args[1:] if args[:1] == ["run"] else args
    module = settings.get("MODULE", "ban_jax.main")
    count = {"launch/tpu_pod.sh": NUM_WORKERS,
             "launch/slurm_multinode.sbatch": 2,
             "launch/local_multiprocess.sh": int(settings.get("NPROC", 2))
             }.get(script, 1)
    assert _python_argv(proc) == [["-m", module, *args]] * count, command


def test_scripts_parse_and_pass_shellcheck():
  scripts = [os.path.join(LAUNCH, n) for n in sorted(os.listdir(LAUNCH))
             if n.endswith((".sh", ".sbatch"))]
  for script in scripts:
    subprocess.run(["bash", "-n", script], check=True)
  # The `[test]` extra installs it beside the interpreter, which need not
  # be on PATH (a virtualenv that is not activated, pyenv's shims).
  shellcheck = shutil.which("shellcheck", path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
  if not shellcheck:
    pytest.skip("shellcheck is not installed")
  proc = subprocess.run([shellcheck, *scripts], capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout
