"""One process of a W&B-tracked run, driven the way the tracking extension drives a tracker, without
training: `python wandb_process.py FOLDER LAST_EPOCH kill|finish [SECONDS]`.

It opens the W&B tracker on FOLDER (its state in FOLDER/state.json, as tracking.json keeps it), prints
that state as the tracker leaves it after looking at what W&B holds, sends the start and the epochs up
to LAST_EPOCH that the state does not record as sent (flushing and recording each), then waits SECONDS
and either SIGKILLs itself (as an OOM kill would) or sends the summary (unless recorded as sent) and
finishes the W&B run."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from anymask.tracking.trackers import TrackedRun, WandbTracker


def main(folder: Path, last_epoch: int, end: str, seconds: float) -> None:
    path = folder / "state.json"
    state = json.loads(path.read_text()) if path.is_file() else {"epochs": 0}

    def save() -> None:
        path.write_text(json.dumps(state))

    run = TrackedRun(
        folder,
        "probe",
        {"sparsity": 0.9},
        "probe",
        None,
        state,
        state["epochs"] + 1,
        "started" in state,
        save,
    )
    tracker = WandbTracker(run)
    save()
    print(json.dumps(state), flush=True)
    if not state.get("started"):
        tracker.start([{"layer": "fc", "kept": 3, "total": 10, "density": 0.3}])
        tracker.flush()
        state["started"] = True
        save()
    for epoch in range(state["epochs"] + 1, last_epoch + 1):
        tracker.epoch(epoch, {"test_acc": epoch / 10})
        tracker.flush()
        state["epochs"] = epoch
        save()
    time.sleep(seconds)
    if end == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if not state.get("summary"):
        tracker.summary({"final_test_acc": last_epoch / 10}, last_epoch)
        tracker.flush()
        state["summary"] = True
        save()
    tracker.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0)
