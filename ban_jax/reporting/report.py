"""Reports of a chain: results.json, the paper-style results.md, results.png.

`results` is the dict `pipeline.run` returns. Every seed's chain is in
`results["per_seed"]` (a list of {"seed", "generations", "ensembles"} and,
when the run trains it, "baseline"); `results["generations"]`,
`["baseline"]` and `["ensembles"]` repeat the first seed's, for readers of
single-seed runs. The report's columns are the teacher, the Baseline (the
students' network trained from labels alone, when there is one), the
born-again generations (BAN-1, ...), then the ensembles (Ens*2, ...); with
several seeds each cell is the mean +/- the sample standard deviation over
seeds. With `results["seed_scope"] == "students"` one teacher taught every
seed's students: its column is that one run, shown as one number. When the
config names a paper row, `results["paper"]` holds the paper's numbers by
the same column names (see `ban_jax/reporting/paper_results.py`) and,
under "mismatches", every way the run differs from the paper's setting and
recipe. With the DKPP loss, `results["dkpp"]` names the two choices the
paper leaves open: "anchor" ("label" or "argmax") and "permutation"
("example" or "step").
"""

import io
import json
from typing import Any

import numpy as np
from etils import epath

from ban_jax.runtime import files


# Column of the students' network trained from labels alone (Table 5).
BASELINE = "Baseline"


def generation_label(generation: int) -> str:
  return "Teacher" if generation == 0 else f"BAN-{generation}"


def chains(results: dict[str, Any]) -> list[dict[str, Any]]:
  """Each seed's chain; a results dict without `per_seed` is one chain."""
  return results.get("per_seed") or [results]


def columns(chain: dict[str, Any]) -> dict[str, float]:
  """Column name -> test error (%) of one chain, in report order."""
  teacher, *students = chain["generations"]
  # The Baseline beside the teacher, before the students it is compared to.
  baseline = [chain["baseline"]] if chain.get("baseline") else []
  return {x["name"]: x["test_error"]
          for x in [teacher] + baseline + students + chain["ensembles"]}


def _single_run(name: str, seed_scope: str) -> bool:
  """Whether a column is one run shared by all seeds (not one per seed)."""
  return seed_scope == "students" and name == generation_label(0)


def over_seeds(per_seed: list[dict[str, Any]],
               seed_scope: str = "chain") -> list[dict[str, Any]]:
  """Mean and sample standard deviation (ddof=1) of each column's error.

  One seed has a standard deviation of 0: there is no spread to estimate.
  With seed_scope "students" the teacher is one run that taught every seed:
  its column lists that run once (its seed's), std 0, not n copies of it.
  """
  names = list(columns(per_seed[0]))
  out = []
  for name in names:
    chains_of = per_seed[:1] if _single_run(name, seed_scope) else per_seed
    errors = np.array([columns(chain)[name] for chain in chains_of])
    out.append({
        "name": name,
        "test_error_mean": float(errors.mean()),
        "test_error_std": float(errors.std(ddof=1)) if len(errors) > 1
                          else 0.0,
        "test_errors": errors.tolist(),
        "seeds": [chain["seed"] for chain in chains_of],
    })
  return out


def loss_label(results: dict[str, Any]) -> str:
  """The loss's name; for DKPP with the two choices the paper leaves open,
  e.g. 'dkpp: max at the label, one permutation per example'."""
  loss = results["loss"]
  dkpp = results.get("dkpp")
  if loss != "dkpp" or not dkpp:
    return loss
  anchor = {"label": "max at the label",
            "argmax": "max at the teacher's argmax"}[dkpp["anchor"]]
  permutation = {"example": "one permutation per example",
                 "step": "new permutations every step"}[dkpp["permutation"]]
  return f"{loss}: {anchor}, {permutation}"


def _model_label(results: dict[str, Any]) -> str:
  gens = results["generations"]
  teacher = gens[0]["model"]
  student = gens[-1]["model"] if len(gens) > 1 else teacher
  model = teacher if student == teacher else f"{teacher} -> {student}"
  return f"{model} ({results['dataset']}, {loss_label(results)})"


def markdown_table(results: dict[str, Any]) -> str:
  """Test error (%) of every generation and ensemble, and the paper's.

  One row for our chain (mean +/- std over seeds when there are several)
  and, when the config names a paper row, one row with the paper's numbers
  under the columns it has.
  """
  per_seed = chains(results)
  names = list(columns(per_seed[0]))
  if len(per_seed) > 1:
    scope = results.get("seed_scope", "chain")
    summary = {c["name"]: c for c in over_seeds(per_seed, scope)}
    # A column that is one run shows its number, with no ± to misread.
    cells = [f"{summary[n]['test_error_mean']:.2f} (one run)"
             if _single_run(n, scope) else
             f"{summary[n]['test_error_mean']:.2f} ± "
             f"{summary[n]['test_error_std']:.2f}" for n in names]
  else:
    cells = [f"{e:.2f}" for e in columns(per_seed[0]).values()]
  rows = [[_model_label(results)] + cells]
  paper = results.get("paper")
  if paper:
    rows.append([f"Paper, {paper['table']} (`{paper['row']}`)"] + [
        f"{paper['test_error'][n]:.2f}" if n in paper["test_error"] else "–"
        for n in names])
  lines = ["| " + " | ".join(["Model"] + names) + " |",
           "|" + "---|" * (len(names) + 1)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def per_seed_table(results: dict[str, Any]) -> str:
  """One row per seed: the numbers behind the mean and std."""
  per_seed = chains(results)
  names = list(columns(per_seed[0]))
  lines = ["| " + " | ".join(["Seed"] + names) + " |",
           "|" + "---|" * (len(names) + 1)]
  for chain in per_seed:
    lines.append("| " + " | ".join(
        [str(chain["seed"])] + [f"{e:.2f}" for e in columns(chain).values()])
                 + " |")
  return "\n".join(lines)


def _scope_note(results: dict[str, Any]) -> str:
  """What the spread over seeds measures (config.seed_scope)."""
  if results.get("seed_scope", "chain") == "students":
    teacher = chains(results)[0]["generations"][0]
    return (f"Seed scope `students`: one teacher, trained once with seed "
            f"{teacher.get('seed', chains(results)[0]['seed'])}, taught "
            "every seed's students; its column is that one run (repeated in "
            "each row below), and the ± of the other columns is the "
            "students' spread alone (their initialisation, data order and "
            "dropout) under that teacher.")
  return ("Seed scope `chain`: each seed trained its own teacher, so the ± "
          "of the students' columns mixes the teachers' spread with the "
          "students' (`config.seed_scope=students` separates them).")


def markdown(results: dict[str, Any]) -> str:
  """The whole of results.md."""
  per_seed = chains(results)
  parts = ["# Results: test error (%)", "", markdown_table(results), ""]
  if len(per_seed) > 1:
    parts += [f"Mean ± sample standard deviation over {len(per_seed)} seeds "
              f"({', '.join(str(c['seed']) for c in per_seed)}). A single "
              "run proves little: the paper's two runs of one recipe "
              "differed by 0.66 points.", "", _scope_note(results), "",
              "## Per seed", "", per_seed_table(results), ""]
  paper = results.get("paper")
  if paper:
    parts += [f"Paper: {paper['table']}, {paper['setting']}.", ""]
    if paper.get("note"):
      parts += [paper["note"], ""]
    if paper.get("mismatches"):
      parts += ["This run differs from the paper's setting and recipe:", ""]
      parts += [f"- {mismatch}" for mismatch in paper["mismatches"]] + [""]
  parts += ["Test error per generation: results.png.", ""]
  return "\n".join(parts)


def plot(results: dict[str, Any]) -> bytes:
  """PNG of test error per generation, with the ensembles and the paper's."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  per_seed = chains(results)
  gens = [g["name"] for g in per_seed[0]["generations"]]
  ens = [e["name"] for e in per_seed[0]["ensembles"]]
  names = list(columns(per_seed[0]))
  errors = np.array([list(columns(c).values()) for c in per_seed])
  mean = dict(zip(names, errors.mean(0)))
  std = dict(zip(names, errors.std(0, ddof=1) if len(per_seed) > 1
                 else np.zeros(len(names))))
  x = np.arange(len(gens))
  # Ens*k sits just right of BAN-k, the last generation it averages.
  ens_x = np.array([int(name.split("*")[1]) + 0.15 for name in ens])
  # The Baseline just left of BAN-1, the student trained like it but from
  # the teacher.
  baseline = [n for n in names if n == BASELINE]
  baseline_x = np.array([0.85] * len(baseline))

  def values(of, names):
    return [of[n] for n in names]

  fig = Figure(figsize=(6.4, 4.2), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  label = "ours" if len(per_seed) == 1 else (
      f"ours, mean ± std of {len(per_seed)} seeds")
  ax.errorbar(x, values(mean, gens), yerr=values(std, gens), marker="o",
              capsize=3, label=label)
  if len(per_seed) > 1:
    for row in errors:
      by_name = dict(zip(names, row))
      ax.plot(x, values(by_name, gens), color="C0", alpha=0.25,
              linewidth=0.8)
  if ens:
    ax.errorbar(ens_x, values(mean, ens), yerr=values(std, ens), marker="D",
                linestyle="--", capsize=3, color="C1",
                label="born-again ensemble Ens*k (by BAN-k)")
    for name, xy in zip(ens, zip(ens_x, values(mean, ens))):
      ax.annotate(name, xy, textcoords="offset points", xytext=(6, 4),
                  fontsize="small", color="C1")
  if baseline:
    ax.errorbar(baseline_x, values(mean, baseline),
                yerr=values(std, baseline), marker="s", linestyle="none",
                capsize=3, color="C2",
                label="Baseline: the student from labels alone")
  paper = results.get("paper")
  if paper:
    positions = {name: i for i, name in enumerate(gens)}
    positions.update(zip(ens, ens_x))
    positions.update(zip(baseline, baseline_x))
    points = [(positions[n], v) for n, v in paper["test_error"].items()
              if n in positions]
    if points:
      px, py = zip(*points)
      ax.scatter(px, py, marker="x", color="0.3", zorder=3,
                 label=f"paper, {paper['table']}")
  ax.set_xticks(x, gens)
  ax.set_xlabel("generation")
  ax.set_ylabel("test error (%)")
  ax.set_title(_model_label(results))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  return buffer.getvalue()


def write(workdir: epath.Path, results: dict[str, Any]) -> None:
  """results.json, results.md and results.png in `workdir`."""
  workdir = epath.Path(workdir)
  files.write_atomically(workdir / "results.json",
                   json.dumps(results, indent=2, default=_jsonable) + "\n")
  files.write_atomically(workdir / "results.md", markdown(results))
  files.write_atomically(workdir / "results.png", plot(results))


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")
