"""TensorBoard after a kill that fell between writing and recording: the event file has what the
process flushed, tracking.json says less; the resumed run's tracker must leave each event once. (Events
are written when flushed, so a writer abandoned after its flush is what a SIGKILL leaves.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from anymask.tracking.trackers import TensorBoardTracker, TrackedRun
from tracker_readback import tensorboard_scalars, tensorboard_texts

LAYERS = [{"layer": "fc", "shape": "2x5", "kept": 3, "total": 10, "density": 0.3}]


def open_tracker(folder: Path, state: dict[str, Any]) -> TensorBoardTracker:
    pytest.importorskip("tensorboard")
    run = TrackedRun(
        folder,
        "probe",
        {"sparsity": 0.9},
        "probe",
        None,
        state,
        first_epoch=state["epochs"] + 1,
        resumed="started" in state,
    )
    return TensorBoardTracker(run)


def send(tracker: TensorBoardTracker, state: dict[str, Any], last: int, summary: bool = False) -> None:
    """What the extension sends: the start and epochs the state lacks, each flushed, then recorded."""
    if not state.get("started"):
        tracker.start(LAYERS)
        tracker.flush()
        state["started"] = True
    for epoch in range(state["epochs"] + 1, last + 1):
        tracker.epoch(epoch, {"test_acc": epoch / 10})
        tracker.flush()
        state["epochs"] = epoch
    if summary and not state.get("summary"):
        tracker.summary({"final_test_acc": last / 10}, last)
        tracker.flush()
        state["summary"] = True


@pytest.mark.parametrize(
    ("wrote", "recorded"),
    [
        ((0, False), {"epochs": 0}),  # killed after writing the start, before recording it
        ((2, False), {"epochs": 0, "started": True}),  # ... after epochs 1-2, before recording them
        ((2, False), {"epochs": 1, "started": True}),  # ... after epoch 2, before recording it
        ((3, True), {"epochs": 3, "started": True}),  # ... after the summary, before recording it
    ],
)
def test_a_resumed_run_leaves_every_event_once(
    tmp_path: Path, wrote: tuple[int, bool], recorded: dict[str, Any]
) -> None:
    """A three-epoch run: the killed process wrote up to epoch `wrote[0]` (and the summary if
    `wrote[1]`), all flushed, but tracking.json says `recorded`; the resumed process finishes it."""
    written: dict[str, Any] = {"epochs": 0}
    send(open_tracker(tmp_path, written), written, wrote[0], summary=wrote[1])
    state = dict(recorded)
    resumed = open_tracker(tmp_path, state)
    send(resumed, state, 3, summary=True)
    resumed.close()
    assert tensorboard_scalars(tmp_path / "tensorboard")["test_acc"] == [
        (epoch, pytest.approx(epoch / 10)) for epoch in (1, 2, 3)
    ]
    assert tensorboard_texts(tmp_path / "tensorboard") == {
        "config/text_summary": [0],
        "mask/layers/text_summary": [0],
        "summary/text_summary": [3],
    }
