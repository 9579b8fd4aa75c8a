r"""Where a traced step spends device time: a text summary of profiler traces.

`python -m ban_jax.tools.bench --profile_dir=DIR` writes a `jax.profiler` trace per
timed mode; this reads the `*.trace.json.gz` files under DIR and prints, per
device line of each trace (GPU streams, "XLA Ops"), the busy time, the
span from first start to last end, and the events that took the most
time, each sorted into a kind (convolution, matmul, collective, copy, other
kernels). No TensorBoard or xprof needed, so it runs where the trace was
taken:

  python -m ban_jax.tools.trace_summary DIR [--top=15] [--steps=3]

`--steps` divides the times by the number of traced steps.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Iterable

# Substrings of kernel or op names, tried in order; the first match wins.
KINDS = (
    ("convolution", ("conv", "xmma", "implicit_gemm", "fprop", "dgrad",
                     "wgrad", "cudnn", "winograd", "fft")),
    ("matmul", ("gemm", "cublas", "cutlass", "dot", "matmul")),
    ("collective", ("nccl", "all-reduce", "all_reduce", "allreduce",
                    "all-gather", "reduce-scatter", "collective")),
    ("copy", ("memcpy", "memset", "copy", "transpose")),
)


def kind_of(name: str) -> str:
  lowered = name.lower()
  for kind, needles in KINDS:
    if any(needle in lowered for needle in needles):
      return kind
  return "other kernels"


def _device_process(name: str) -> bool:
  return bool(re.search(r"/device:(GPU|TPU)|gpu|tpu", name, re.IGNORECASE))


def device_lines(trace: dict[str, Any]
                 ) -> dict[str, list[dict[str, Any]]]:
  """Complete ('X') events of device processes, by '<process> / <thread>'."""
  processes, threads = {}, {}
  for event in trace.get("traceEvents", []):
    if event.get("ph") != "M":
      continue
    name = event.get("args", {}).get("name", "")
    if event.get("name") == "process_name":
      processes[event.get("pid")] = name
    elif event.get("name") == "thread_name":
      threads[(event.get("pid"), event.get("tid"))] = name
  lines = collections.defaultdict(list)
  for event in trace.get("traceEvents", []):
    if event.get("ph") != "X" or "dur" not in event:
      continue
    process = processes.get(event.get("pid"), "")
    if not _device_process(process):
      continue
    thread = threads.get((event.get("pid"), event.get("tid")),
                         str(event.get("tid")))
    lines[f"{process} / {thread}"].append(event)
  return dict(lines)


def summarize_line(events: Iterable[dict[str, Any]], top: int = 15,
                   steps: int = 1) -> dict[str, Any]:
  """Busy time, span, time by kind and the top events of one line.

  Times are in ms and, like the top events' counts, per step.

  Busy time is the union of the events' intervals, so nested events (an
  op and the kernels under it) are not counted twice.
  """
  events = sorted(events, key=lambda e: float(e["ts"]))
  busy_us, end = 0.0, None
  by_name = collections.defaultdict(float)
  counts = collections.Counter()
  for event in events:
    start, dur = float(event["ts"]), float(event["dur"])
    by_name[event.get("name", "?")] += dur
    counts[event.get("name", "?")] += 1
    if end is None or start >= end:
      busy_us += dur
      end = start + dur
    elif start + dur > end:
      busy_us += start + dur - end
      end = start + dur
  span_us = (max(float(e["ts"]) + float(e["dur"]) for e in events)
             - float(events[0]["ts"])) if events else 0.0
  by_kind = collections.defaultdict(float)
  for name, dur in by_name.items():
    by_kind[kind_of(name)] += dur
  ranked = sorted(by_name.items(), key=lambda item: -item[1])[:top]
  per_step = 1e3 * max(1, steps)
  return {
      "events": len(events),
      "busy_ms": busy_us / per_step,
      "span_ms": span_us / per_step,
      "by_kind_ms": {k: v / per_step for k, v in
                     sorted(by_kind.items(), key=lambda item: -item[1])},
      "top": [(name, dur / per_step, counts[name] / max(1, steps))
              for name, dur in ranked],
  }


def format_summary(title: str, line: str, summary: dict[str, Any]) -> str:
  busy, span = summary["busy_ms"], summary["span_ms"]
  out = [f"== {title} :: {line}",
         f"   {summary['events']} events in all; per step: busy {busy:.3f} "
         f"ms of a "
         f"{span:.3f} ms span ({100 * busy / span if span else 0:.0f}%)",
         "   by kind: " + ", ".join(f"{k} {v:.3f} ms"
                                   for k, v in summary["by_kind_ms"].items())]
  for name, ms, count in summary["top"]:
    out.append(f"   {ms:9.3f} ms  x{count:<6g} {name[:110]}")
  return "\n".join(out)


def summarize_dir(directory: str, top: int = 15, steps: int = 1) -> str:
  paths = sorted(glob.glob(os.path.join(directory, "**", "*.trace.json.gz"),
                           recursive=True))
  if not paths:
    return f"No *.trace.json.gz under {directory}."
  texts = []
  for path in paths:
    with gzip.open(path, "rt") as f:
      trace = json.load(f)
    title = os.path.relpath(path, directory).split(os.sep)[0]
    lines = device_lines(trace)
    if not lines:
      texts.append(f"== {title}: no device events (a CPU trace?)")
    for line, events in sorted(lines.items()):
      texts.append(format_summary(title, line,
                                  summarize_line(events, top, steps)))
  return "\n".join(texts)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("directory")
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--steps", type=int, default=1,
                      help="traced steps per trace; times are divided by it")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.directory):
    parser.error(f"{args.directory} is not a directory; pass the "
                 "--profile_dir of a `python -m ban_jax.tools.bench` run.")
  print(summarize_dir(args.directory, args.top, args.steps))


if __name__ == "__main__":
  main()
