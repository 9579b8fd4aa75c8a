"""`python -m ban_jax.trace_summary` on a hand-written profiler trace."""

import gzip
import json
import os

import pytest

from ban_jax import trace_summary

GPU, HOST = 7, 1


def _trace():
  meta = [
      {"ph": "M", "pid": GPU, "name": "process_name",
       "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": HOST, "name": "process_name",
       "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": GPU, "tid": 3, "name": "thread_name",
       "args": {"name": "Stream #14(Compute)"}},
  ]
  events = [
      # Two overlapping kernels (busy 0-15 us), then a gap, then a copy.
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 0, "dur": 10,
       "name": "sm90_xmma_fprop_implicit_gemm_bf16"},
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 5, "dur": 10,
       "name": "loop_add_fusion"},
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 20, "dur": 5,
       "name": "MemcpyD2D"},
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 30, "dur": 2,
       "name": "loop_add_fusion"},
      # Host events are not device time.
      {"ph": "X", "pid": HOST, "tid": 9, "ts": 0, "dur": 1000,
       "name": "PjitFunction(run)"},
  ]
  return {"displayTimeUnit": "ns", "traceEvents": meta + events}


def test_kinds():
  assert trace_summary.kind_of("sm90_xmma_wgrad_indexed") == "convolution"
  assert trace_summary.kind_of("nvjet_gemm_tn") == "matmul"
  assert trace_summary.kind_of("ncclDevKernel_AllReduce") == "collective"
  assert trace_summary.kind_of("input_transpose_fusion_6") == "copy"
  assert trace_summary.kind_of("input_reduce_fusion_41") == "other kernels"


def test_summary_of_one_line():
  lines = trace_summary.device_lines(_trace())
  assert list(lines) == ["/device:GPU:0 / Stream #14(Compute)"]
  summary = trace_summary.summarize_line(next(iter(lines.values())),
                                         top=2, steps=2)
  assert summary["events"] == 4
  # Busy: union of [0,15], [20,25], [30,32] = 22 us; span 32 us; per step
  # (2 steps) and in ms.
  assert summary["busy_ms"] == pytest.approx(0.011)
  assert summary["span_ms"] == pytest.approx(0.016)
  assert summary["by_kind_ms"] == pytest.approx(
      {"other kernels": 0.006, "convolution": 0.005, "copy": 0.0025})
  # Per step: loop_add_fusion ran twice in 2 steps.
  assert summary["top"] == [("loop_add_fusion", pytest.approx(0.006), 1.0),
                            ("sm90_xmma_fprop_implicit_gemm_bf16",
                             pytest.approx(0.005), 0.5)]


def test_summarize_dir_reads_traces_under_it(tmp_path, capsys):
  run = tmp_path / "resnet18_b128_bare_x1" / "plugins" / "profile" / "r1"
  os.makedirs(run)
  with gzip.open(run / "host.trace.json.gz", "wt") as f:
    json.dump(_trace(), f)
  trace_summary.main([str(tmp_path), "--steps=2"])
  out = capsys.readouterr().out
  assert out.startswith("== resnet18_b128_bare_x1 :: /device:GPU:0")
  assert ("4 events in all; per step: busy 0.011 ms of a 0.016 ms span "
          "(69%)") in out
  assert "0.006 ms  x1      loop_add_fusion" in out
  assert "No *.trace.json.gz" in trace_summary.summarize_dir(
      str(tmp_path / "empty"))


def test_a_missing_directory_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    trace_summary.main([str(tmp_path / "nope")])
  assert stop.value.code == 2
  assert f"{tmp_path / 'nope'} is not a directory" in capsys.readouterr().err
