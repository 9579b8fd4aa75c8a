"""Helpers shared by the end-to-end tests."""

# Wall-clock entries of a history record: they differ between any two runs.
TIMINGS = ("images_per_second", "seconds_left")


def scores(results):
  """Everything a run computed, less the wall-clock timings."""
  return ([(g["generation"], g["test_accuracy"], g["test_metrics"],
            [{k: v for k, v in record.items() if k not in TIMINGS}
             for record in g["history"]])
           for g in results["generations"]],
          [(e["name"], e["test_accuracy"]) for e in results["ensembles"]])
