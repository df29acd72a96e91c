"""The committed reports under docs/results and how each is made (docs/results/reports.toml), for
tests/test_committed_reports.py and for rewriting them all after a change to the report:

    python tests/committed_reports.py            # every report, into docs/results/<name>
    python tests/committed_reports.py dst ...    # only these
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
COMMANDS = RESULTS / "reports.toml"
# What the report writes and a committed folder keeps besides its kept runs.
TEXT_FILES = ("report.md", "results.csv", "timings.csv")


@dataclass(frozen=True)
class CommittedReport:
    name: str  # the folder under docs/results
    dirs: tuple[str, ...]  # relative to the repository root
    only: tuple[str, ...]
    metric: str

    def write(self, out: Path) -> list[Path]:
        """Regenerate the report into `out` (quietly: the tables are not printed)."""
        from anymask.experiments.report import write_report

        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # runs kept in two folders are read once: said, not wrong
            return write_report([ROOT / d for d in self.dirs], out, only=list(self.only), metric=self.metric)

    @property
    def folder(self) -> Path:
        return RESULTS / self.name

    def command(self) -> str:
        only = " ".join(f"--only {o}" for o in self.only)
        metric = f" --metric {self.metric}" if self.metric != "test" else ""
        return f"anymask report {' '.join(self.dirs)} {only}{metric} --out docs/results/{self.name}"


def committed_reports() -> list[CommittedReport]:
    table = tomllib.loads(COMMANDS.read_text())
    return [
        CommittedReport(name, tuple(spec["dirs"]), tuple(spec.get("only", ())), spec.get("metric", "test"))
        for name, spec in table.items()
    ]


def main(names: list[str]) -> None:
    for report in committed_reports():
        if names and report.name not in names:
            continue
        for old in report.folder.glob("*.png"):  # figures the new report no longer draws
            old.unlink()
        report.write(report.folder)
        print(f"{report.name}: {report.command()}")


if __name__ == "__main__":
    main(sys.argv[1:])
