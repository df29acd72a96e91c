"""Writing a report: collect the runs, build the tables, and write report.md, results.csv, timings.csv and
the figures into one folder; the one entry point (`write_report`) that `anymask report` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anymask.errors import AnymaskError
from anymask.experiments.report.csv_tables import results_csv, timings_csv
from anymask.experiments.report.groups import Table, build_tables, by_model_and_data
from anymask.experiments.report.markdown import table_markdown, variants_markdown
from anymask.experiments.report.runs import (
    METRICS_READ,
    SUMMARY,
    collect_runs,
    keep_matching,
    keep_run_files,
    parse_filters,
)
from anymask.io import atomic_write_text, check_output_folder


def write_report(
    dirs: Sequence[Path],
    out: Path,
    *,
    keep_runs: bool = False,
    only: Sequence[str] = (),
    metric: str = "test",
) -> list[Path]:
    """Write report.md, results.csv, timings.csv and the plots into `out`; print the tables and paths.

    `keep_runs` also copies each run's small files (config, per-epoch metrics, summary) into
    `out/runs/<hash>/`: a report folder that can be committed and rebuilt from itself, without the
    weights and checkpoints the run folders hold. `metric` "val" reports validation accuracy instead of
    test accuracy (runs trained with a validation split), for choosing settings; "train" reports
    training accuracy, to tell a recipe that fits better from one that generalises better.
    """
    if metric not in METRICS_READ:
        raise AnymaskError(f"unknown --metric '{metric}'; use {', '.join(METRICS_READ)}")
    filters = parse_filters(only)
    check_output_folder(out)
    runs = keep_matching(collect_runs(dirs, metric), filters)
    if not runs:
        which = f" matching {' '.join(f'--only {o}' for o in only)}" if only else ""
        raise AnymaskError(
            f"no finished runs (folders with {SUMMARY}){which} under {', '.join(map(str, dirs))}"
        )
    tables = build_tables(runs, metric)
    out.mkdir(parents=True, exist_ok=True)
    if keep_runs:
        keep_run_files(runs, out / "runs")
    parts = _sections(tables, out)  # (markdown, the plots written for it)
    sections = [text + "".join(f"\n![{p.stem}]({p.name})\n" for p in paths) for text, paths in parts]
    which = {
        "test": "",
        "val": " Accuracies are on the validation split; no test accuracy is shown.",
        "train": " Accuracies are training accuracies (each epoch's training batches, as trained); no test"
        " accuracy is shown.",
    }[metric]
    markdown = f"# anymask report\n\n{len(runs)} finished runs.{which}\n\n" + "\n".join(sections)
    written = {
        out / "report.md": markdown,
        out / "results.csv": results_csv(tables),
        out / "timings.csv": timings_csv(tables),
    }
    for path, text in written.items():
        atomic_write_text(path, text)
    print("\n".join(text for text, _ in parts))
    files = [*written, *(p for _, paths in parts for p in paths)]
    print("wrote:\n" + "\n".join(f"  {path}" for path in files))
    return files


def _sections(tables: Sequence[Table], out: Path) -> list[tuple[str, list[Path]]]:
    """Each model and data's variants table (when it has several tables) before its tables, each with the
    plots written for it."""
    from anymask.experiments.report import figures  # matplotlib is slow to import: only here

    parts = []
    for same in by_model_and_data(tables):
        if len(same) > 1:
            parts.append((variants_markdown(same), figures.plot_variants(same, out)))
        parts += [(table_markdown(table), figures.plot_table(table, out)) for table in same]
    return parts
