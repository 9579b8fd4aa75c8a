"""`python -m ban_jax.tools.trace_summary` on a hand-written profiler trace."""

import gzip
import json
import os

import pytest

from ban_jax.tools import trace_summary

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
  assert trace_summary.kind_of("convolution.3") == "convolution"
  assert trace_summary.kind_of("fft_r2c_kernel") == "convolution"
  assert trace_summary.kind_of("dot.5") == "matmul"
  assert trace_summary.kind_of("MemsetD32") == "copy"


def test_device_processes():
  device_process = trace_summary._device_process  # pylint: disable=protected-access
  assert device_process("/device:TPU:0")
  assert device_process("TPU:0")
  assert not device_process("/host:CPU")


def _two_line_trace():
  """Events out of order, nested ops, an unnamed stream, an open event."""
  meta = _trace()["traceEvents"][:3]
  events = [
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 30, "dur": 6,
       "name": "MemsetD32"},
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 0, "dur": 20,
       "name": "fusion.1"},
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 2, "dur": 5,
       "name": "cutlass_gemm"},
      {"ph": "X", "pid": GPU, "tid": 3, "ts": 40, "name": "no_dur"},
      # A stream without a thread_name: named by its tid.
      {"ph": "X", "pid": GPU, "tid": 4, "ts": 0, "dur": 10,
       "name": "all-reduce.1"},
      {"ph": "X", "pid": GPU, "tid": 4, "ts": 2, "dur": 3, "name": "dot.5"},
  ]
  return {"traceEvents": meta + events}


def test_nested_and_unsorted_events():
  lines = trace_summary.device_lines(_two_line_trace())
  assert sorted(lines) == ["/device:GPU:0 / 4",
                           "/device:GPU:0 / Stream #14(Compute)"]
  compute = trace_summary.summarize_line(
      lines["/device:GPU:0 / Stream #14(Compute)"])
  # Sorted: [0,20] holds [2,7]; then [30,36]. The event without "dur" is
  # left out.
  assert (compute["events"], compute["busy_ms"], compute["span_ms"]) == (
      3, pytest.approx(0.026), pytest.approx(0.036))
  # By kind, the largest first.
  assert list(compute["by_kind_ms"].items()) == [
      ("other kernels", pytest.approx(0.020)), ("copy", pytest.approx(0.006)),
      ("matmul", pytest.approx(0.005))]
  other = trace_summary.summarize_line(lines["/device:GPU:0 / 4"])
  # The last event to start ends before the first one does.
  assert (other["busy_ms"], other["span_ms"]) == (pytest.approx(0.010),
                                                   pytest.approx(0.010))


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


def _write(directory, run, trace):
  path = directory / run / "plugins" / "profile" / "r1"
  os.makedirs(path)
  with gzip.open(path / "host.trace.json.gz", "wt") as f:
    json.dump(trace, f)


def test_summarize_dir_prints_every_line_and_the_top_15(tmp_path, capsys):
  _write(tmp_path, "a_cpu", {"traceEvents": _trace()["traceEvents"][1:2]
                             + _trace()["traceEvents"][-1:]})
  _write(tmp_path, "b_two_lines", _two_line_trace())
  long_name = "k" * 109 + "_end"
  kernels = [{"ph": "X", "pid": GPU, "tid": 3, "ts": 100 * i, "dur": 20 - i,
              "name": long_name if i == 0 else f"kernel_{i:02d}"}
             for i in range(16)]
  _write(tmp_path, "c_many", {"traceEvents": _trace()["traceEvents"][:3]
                              + kernels})
  trace_summary.main([str(tmp_path)])
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "== a_cpu: no device events (a CPU trace?)"
  titles = [line for line in out if line.startswith("==")]
  assert titles[1:] == ["== b_two_lines :: /device:GPU:0 / 4",
                        "== b_two_lines :: /device:GPU:0 / Stream #14(Compute)",
                        "== c_many :: /device:GPU:0 / Stream #14(Compute)"]
  assert ("   by kind: other kernels 0.020 ms, copy 0.006 ms, matmul 0.005 ms"
          in out)
  many = out[out.index(titles[-1]) + 3:]
  assert len(many) == 15  # --top's default; kernel_15 took the least time.
  assert many[0] == "       0.020 ms  x1      " + "k" * 109 + "_"
  assert many[-1].endswith(" kernel_14")


def test_a_missing_directory_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    trace_summary.main([str(tmp_path / "nope")])
  assert stop.value.code == 2
  assert f"{tmp_path / 'nope'} is not a directory" in capsys.readouterr().err
  (tmp_path / "a_file").write_text("")
  with pytest.raises(SystemExit) as stop:
    trace_summary.main([str(tmp_path / "a_file")])
  assert stop.value.code == 2
  assert f"{tmp_path / 'a_file'} is not a directory" in (
      capsys.readouterr().err)
