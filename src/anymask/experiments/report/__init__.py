"""Reports: finished run folders -> report.md, results.csv, timings.csv and figures (`anymask report`).

One module per job, each using only those above it (no import circle):

- `runs`: reading run folders (summary, settings, per-epoch curve, mask densities), `--only` filters,
  keeping a run's small files for a committed report.
- `stats`: mean ± std over seeds, paired gains with their 95% Student-t interval.
- `groups`: pairing: runs into groups (all but the seed equal) and tables (model, data, other
  settings), paired and pooled gains, variants of a model and data.
- `markdown`: the report's text (tables, cells, notes, the variants table).
- `csv_tables`: results.csv and timings.csv.
- `figures`: the PNG figures (matplotlib, imported only when figures are drawn).
- `writing`: `write_report`, which runs all of the above into one folder.

report.md and results.csv hold only what a run's config determines (accuracies, sparsities, counts),
never wall times or paths: the same runs give byte-identical files however they were scheduled or
resumed. Train times go to timings.csv.
"""

from anymask.experiments.report.groups import Group, Table, build_tables
from anymask.experiments.report.markdown import collapse_note, markdown_table, table_markdown
from anymask.experiments.report.runs import Run, collect_runs, keep_run_files, read_run
from anymask.experiments.report.stats import Gain, paired_gain
from anymask.experiments.report.writing import write_report

__all__ = [
    "Gain",
    "Group",
    "Run",
    "Table",
    "build_tables",
    "collapse_note",
    "collect_runs",
    "keep_run_files",
    "markdown_table",
    "paired_gain",
    "read_run",
    "table_markdown",
    "write_report",
]
