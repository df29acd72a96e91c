"""The commands above single runs: sweeps, reports with tables and plots, the demo, and the mask tools.

- `anymask.experiments.sweep`: expand a sweep file into runs, run them N at a time, resume what is left.
- `anymask.experiments.report`: collect finished run folders into results.csv, report.md and figures
  (a package, one module per job: reading runs, statistics, pairing, markdown, CSV, figures, writing).
- `anymask.experiments.demo`: a small sweep on digits and its report, in minutes on a laptop CPU.
- `anymask.experiments.masking`: the mask commands (`anymask prune`, `inspect`, `compare`).

Modules are imported on demand: matplotlib and the training stack are slow to import.
"""
