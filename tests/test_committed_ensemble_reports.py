"""Every committed ensemble report under docs/results is what `anymask ensemble-report` makes from the
ensemble.json files committed beside it, in the order the evidence scripts give them
(configs/ensembles/*.sh): the markdown byte for byte, the reliability diagrams with the same pixels.
After a change to the ensemble report, rerun the script's last line and look at the diff."""

from __future__ import annotations

import glob
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from anymask.ensembles.report import REPORT, write_ensemble_report

ROOT = Path(__file__).resolve().parents[1]
# report folder -> the folders its command names (shell globs, expanded in sorted order as bash does)
ENSEMBLE_REPORTS = {
    "docs/results/ensembles": (
        "docs/results/ensembles/runs/anti-random/parent-*",
        "docs/results/ensembles/runs/random-50/parent-*",
        "docs/results/ensembles/runs/five-epochs/parent-*",  # the arms chosen on validation, in the script's
        "docs/results/ensembles/runs/pair-15/parent-*",  # ARMS order, and pair-15's control
        "docs/results/ensembles/runs/tuned-parent-15/parent-*",
        "docs/results/ensembles/runs/deep-4",
    ),
    "docs/results/ensembles_search": ("docs/results/ensembles_search/runs/*",),
}


def test_every_committed_ensemble_report_has_its_command() -> None:
    found = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "docs" / "results").rglob(REPORT)}
    assert found == {name for name in ENSEMBLE_REPORTS if (ROOT / name / REPORT).is_file()}
    assert "docs/results/ensembles" in found


@pytest.mark.parametrize("name", list(ENSEMBLE_REPORTS))
def test_committed_ensemble_report_regenerates_identically(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (ROOT / name / REPORT).is_file():
        pytest.skip(f"{name} has no committed report yet")
    monkeypatch.chdir(ROOT)  # the report names each ensemble by the path it was given
    folders = [Path(f) for pattern in ENSEMBLE_REPORTS[name] for f in sorted(glob.glob(pattern))]
    write_ensemble_report(folders, tmp_path)
    assert (tmp_path / REPORT).read_text() == (ROOT / name / REPORT).read_text()
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn == sorted(p.name for p in (ROOT / name).glob("*.png"))
    for png in drawn:
        new, old = (matplotlib.image.imread(folder / png) for folder in (tmp_path, ROOT / name))
        assert new.shape == old.shape and np.abs(new - old).mean() < 0.002, f"{name}/{png}"
