"""W&B after a SIGKILL: a resumed run asks W&B what it holds (its offline files, or the resumed run's
step online) and sends exactly the epochs W&B lacks. Two real W&B processes (offline), no training: the
first loses all it sent (its service never writes its .wandb file before the kill), the second must
notice and send everything once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from anymask.tracking.wandb_files import Held, held_offline, held_online, records
from tracker_readback import tracker_env, wandb_history, wandb_summary

PROCESS = Path(__file__).with_name("wandb_process.py")


def run_process(folder: Path, last_epoch: int, end: str, env: dict[str, str]) -> tuple[int, dict]:
    """One wandb_process.py run: its exit code and the tracker state it found on opening."""
    done = subprocess.run(
        [sys.executable, str(PROCESS), str(folder), str(last_epoch), end],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.splitlines()
    assert lines, done.stderr
    return done.returncode, json.loads(lines[0])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb")
    folder, env = root / "run", tracker_env(root)
    folder.mkdir()
    # The first process's service writes its .wandb file only when a 32 KiB block fills or the run
    # finishes (flush interval of an hour): SIGKILLed after sending the table and 3 epochs, it has
    # written none of them, though its state records them as sent.
    killed = {**env, "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": "3600"}
    code, opened_first = run_process(folder, 3, "kill", killed)
    assert code == -signal.SIGKILL
    code, opened_second = run_process(folder, 5, "finish", env)
    assert code == 0
    return folder, opened_first, opened_second


def test_a_resumed_wandb_run_sends_exactly_what_a_sigkill_took(
    two_processes: tuple[Path, dict, dict],
) -> None:
    folder, opened_first, opened_second = two_processes
    run_id = opened_first["id"]
    assert opened_first == {"epochs": 0, "id": run_id}
    # The second process found the state saying "table and epochs 1-3 sent", W&B holding none of
    # them: it corrected the state, so the start and every epoch went to W&B again.
    assert json.loads((folder / "state.json").read_text())["epochs"] == 5
    assert opened_second == {"epochs": 0, "id": run_id}
    # The first process's folder holds no record (not even the run's), which would stop `wandb sync`:
    # the second process set it aside.
    (first,) = folder.glob(f"wandb/empty-offline-run-*-{run_id}")
    assert list(records(first / f"run-{run_id}.wandb")) == []
    (second,) = folder.glob(f"wandb/offline-run-*-{run_id}")
    rows = wandb_history(folder, [second])
    assert [(row["epoch"], row["_step"]) for row in rows] == [(e, e) for e in range(6)]
    assert [row["test_acc"] for row in rows[1:]] == [e / 10 for e in range(1, 6)]
    assert rows[0]["mask/layers/nrows"] == 1
    assert wandb_summary(folder)["final/final_test_acc"] == 0.5
    assert held_offline(folder / "wandb", run_id) == Held(set(range(6)), summary=True)
    assert held_offline(folder / "wandb", "another") == Held()


def test_a_third_process_sends_nothing_twice(two_processes: tuple[Path, dict, dict]) -> None:
    folder, opened_first, _ = two_processes
    env = tracker_env(folder.parent)
    code, opened = run_process(folder, 5, "finish", env)
    assert code == 0
    assert opened == {"epochs": 5, "id": opened_first["id"], "started": True, "summary": True}
    newest = sorted(folder.glob("wandb/offline-run-*"))[-1]
    assert wandb_history(folder, [newest]) == []


def test_the_reader_stops_at_the_last_whole_record_of_a_torn_file(
    two_processes: tuple[Path, dict, dict], tmp_path: Path
) -> None:
    folder, opened_first, _ = two_processes
    run_id = opened_first["id"]
    path = sorted(folder.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))[0]
    data = path.read_bytes()
    whole = [r.SerializeToString() for r in records(path)]
    assert len(whole) > 10
    torn = tmp_path / path.name
    for end in range(0, len(data), max(1, len(data) // 97)):  # the file cut anywhere, as a kill leaves it
        torn.write_bytes(data[:end])
        found = [r.SerializeToString() for r in records(torn)]
        assert found == whole[: len(found)]
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    torn.write_bytes(bytes(corrupt))
    found = [r.SerializeToString() for r in records(torn)]
    assert found == whole[: len(found)] and len(found) < len(whole)


def test_online_holdings_come_from_the_resumed_runs_step_and_summary() -> None:
    class Summary:
        def __init__(self, keys: list[str]) -> None:
            self._keys = keys

        def keys(self) -> list[str]:
            return self._keys

    resumed = SimpleNamespace(resumed=True, step=4, summary=Summary(["epoch", "test_acc"]))
    assert held_online(resumed) == Held({0, 1, 2, 3}) and held_online(resumed).last_epoch == 3
    finished = SimpleNamespace(resumed=True, step=9, summary=Summary(["final/final_test_acc"]))
    assert held_online(finished) == Held(set(range(9)), summary=True)
    empty = SimpleNamespace(resumed=True, step=0, summary=Summary([]))
    assert held_online(empty) == Held() and held_online(empty).last_epoch == 0
    new = SimpleNamespace(resumed=False, step=0, summary=Summary([]))
    assert held_online(new) == Held()
