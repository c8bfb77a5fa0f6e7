"""Gathers downstream results (experiments.downstream) into one methods x tasks table + plot.

python -m experiments.leaderboard --runs=results/downstream,runs/gloria,runs/mgca \
    --output=results/downstream/leaderboard
--runs: result files, results folders, or run directories (their downstream/ or
results/downstream/). Writes <output>.md (table: per task and training fraction the task's
headline metric, mean ± sample std over seeds with the seed count) and <output>.png (grouped
bars). Thin: mmrl.evaluation.downstream.leaderboard.
"""
from __future__ import annotations

import pathlib
import shlex
import sys

from absl import app
from absl import flags

_RUNS = flags.DEFINE_list("runs", ["results/downstream"], "Result files / folders / run dirs.")
_OUTPUT = flags.DEFINE_string("output", "results/downstream/leaderboard",
                              "Output path without suffix (.md and .png are written).")


def main(argv):
  del argv
  from mmrl.evaluation.downstream import leaderboard  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.downstream import provenance  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.downstream import results  # pylint: disable=g-import-not-at-top
  files = leaderboard.find_result_files(_RUNS.value)
  if not files:
    sys.exit(f"leaderboard: no downstream result JSON under {_RUNS.value}")
  rows, columns = leaderboard.gather(files)
  out = pathlib.Path(_OUTPUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  table = leaderboard.render_markdown(rows, columns)
  png = leaderboard.plot(rows, columns, out.with_suffix(".png"))
  command = " ".join(["python -m experiments.leaderboard"] + [shlex.quote(a) for a in sys.argv[1:]])
  out.with_suffix(".md").write_text(
      "# Downstream leaderboard\n\n" + table + "\nEach cell: the task's headline metric, mean ± "
      "sample std (ddof 1) over n seeds; per-task details in <task>.md.\n\n"
      f"- sources: {', '.join(f'`{f}`' for f in files)}\n- command: `{command}`\n"
      f"- date: {results.now()}; machine: {provenance.machine()}\n"
      f"- plot: `{png.name}`\n")
  print(table)
  print(f"wrote {out.with_suffix('.md')} and {png}")


if __name__ == "__main__":
  app.run(main)
