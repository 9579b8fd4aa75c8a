"""Reports of a chain: results.json and the paper-style results.md."""

import json
from typing import Any

from etils import epath


def generation_label(generation: int) -> str:
  return "Teacher" if generation == 0 else f"BAN-{generation}"


def markdown_table(results: dict[str, Any]) -> str:
  """Test error (%) of every generation and ensemble, one row per chain."""
  gens = results["generations"]
  ens = results["ensembles"]
  header = ["Model"] + [generation_label(g["generation"]) for g in gens] + [
      e["name"] for e in ens]
  teacher = gens[0]["model"]
  student = gens[-1]["model"] if len(gens) > 1 else teacher
  model = teacher if student == teacher else f"{teacher} -> {student}"
  row = [f"{model} ({results['dataset']}, {results['loss']})"] + [
      f"{x['test_error']:.2f}" for x in gens + ens]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header),
           "| " + " | ".join(row) + " |"]
  return "\n".join(lines)


def write(workdir: epath.Path, results: dict[str, Any]) -> None:
  workdir = epath.Path(workdir)
  (workdir / "results.json").write_text(
      json.dumps(results, indent=2, default=_jsonable) + "\n")
  text = ("# Results: test error (%)\n\n" + markdown_table(results) + "\n")
  (workdir / "results.md").write_text(text)


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")
