"""Hand-made finished run folders for report and figure tests: what anymask.train.run leaves, without
weights (a report never reads them)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from anymask.config import RunConfig, save_config


def write_records(folder: Path, records: list[dict[str, object]]) -> None:
    """The run's per-epoch records, one JSON object a line, as the trainer writes metrics.jsonl."""
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run(
    root: Path,
    mask: str,
    sparsity: float,
    recipe: str,
    seed: int,
    final: float,
    best: float,
    **settings: object,
) -> Path:
    """A finished run folder as anymask.train.run leaves it (no weights: the report never reads them)."""
    config = RunConfig.from_flat(
        {"mask_method": mask, "sparsity": sparsity, "recipe": recipe, "seed": seed, "epochs": 3, **settings}
    )
    folder = root / config.hash()
    folder.mkdir(parents=True)
    save_config(config, folder / "config.json")
    curve = [final / 2, best, final]
    records = [{"epoch": e + 1, "test_acc": acc, "seconds": 1.0} for e, acc in enumerate(curve)]
    write_records(folder, records)
    summary = {
        "model": "cnn",
        "data": "digits",
        "mask_method": mask,
        "sparsity": sparsity,
        "recipe": recipe,
        "seed": seed,
        "epochs": 3,
        "final_test_acc": final,
        "best_test_acc": best,
        "best_test_epoch": 2,
        "mask_kept": 10,
        "mask_total": 100,
        "mask_density": 1 - sparsity,
        "nonzero_weights": 10,
        "train_seconds": 3.0 + seed,
        "config_hash": config.hash(),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def tables_cells(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table in the text, as rows of stripped cells."""
    tables: list[list[list[str]]] = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|") and not in_table:
            tables.append([])
        in_table = line.startswith("|")
        if in_table:
            tables[-1].append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


def table_cells(markdown: str) -> list[list[str]]:
    return tables_cells(markdown)[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))
