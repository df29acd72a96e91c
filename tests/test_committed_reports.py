"""Every committed report under docs/results is what its command (docs/results/reports.toml) makes
from the run files committed beside it: markdown and CSV byte for byte, the same figures with the same
pixels. A change to the report code that changes a committed report fails here until the reports are
regenerated (`python tests/committed_reports.py`) and the change is seen in the diff."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from committed_reports import TEXT_FILES, CommittedReport, committed_reports

REPORTS = committed_reports()


def test_every_committed_report_has_its_command() -> None:
    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    folders = {p.parent for p in results.rglob("report.md")}
    assert folders == {report.folder for report in REPORTS}


@pytest.mark.slow
@pytest.mark.parametrize("report", REPORTS, ids=[r.name for r in REPORTS])
def test_committed_report_regenerates_identically(report: CommittedReport, tmp_path: Path) -> None:
    report.write(tmp_path)
    for name in TEXT_FILES:
        assert (tmp_path / name).read_bytes() == (report.folder / name).read_bytes(), (
            f"{report.name}/{name} differs from what `{report.command()}` writes"
        )
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn == sorted(p.name for p in report.folder.glob("*.png"))
    for name in drawn:
        new, old = (matplotlib.image.imread(folder / name) for folder in (tmp_path, report.folder))
        assert new.shape == old.shape, f"{report.name}/{name}: another size"
        # Same matplotlib and fonts draw the same pixels; another FreeType may move antialiasing a little.
        assert np.abs(new - old).mean() < 0.002, f"{report.name}/{name}: other content"
