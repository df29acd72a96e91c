"""What a W&B run already holds, so a resumed run sends W&B exactly the epochs it lacks.

W&B's service writes what a run logs to the run's `.wandb` file (its transaction log) in blocks and
uploads it in batches; a process killed by SIGKILL (an OOM kill, a lost node) takes what the service had
not yet written or uploaded with it: always the last records, never ones in the middle. So a resumed run
asks W&B itself, not `tracking.json`:

- offline, the `.wandb` files of the run's earlier offline folders (`wandb/offline-run-*-<id>`): every
  whole record of each, read with W&B's own protobuf messages;
- online, the resumed run's step counter: W&B starts a resumed run at the step after the last one the
  server holds, and anymask logs epoch N at step N (the mask table at step 0), so it is the first epoch
  the server lacks; the summary W&B restores on resume says whether the final summary arrived.

The `.wandb` file is a LevelDB log (W&B's core writes it with golang/leveldb's record writer): a 7-byte
header, then 32 KiB blocks of chunks, each a CRC-32 of its type and payload, a little-endian length, a
type (full, first, middle, last) and the payload. wandb (0.31) ships no Python reader for it; this one
reads whole, checksummed chunks only, so a file a killed process left ends at its last good record.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = b":W&B"
HEADER_SIZE, CHUNK_HEADER, BLOCK = 7, 7, 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
SUMMARY_PREFIX = "final/"


@dataclass
class Held:
    """What a W&B run holds: the epochs it has a row for (0: the start row with the mask table) and
    whether the final summary arrived."""

    epochs: set[int] = field(default_factory=set)
    summary: bool = False

    @property
    def last_epoch(self) -> int:
        """The last epoch it holds (0 if none past the start row): the run resumes after it."""
        return max(self.epochs, default=0)


def chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each whole chunk, in order, until the data ends or a chunk is torn or corrupt."""
    pos = HEADER_SIZE
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # a block's tail too short for a header is zero padding
            pos += left_in_block
            continue
        checksum = int.from_bytes(data[pos : pos + 4], "little")
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        end = pos + CHUNK_HEADER + length
        if checksum == length == kind == 0:  # the writer's zero fill: the rest of this block is empty
            pos += left_in_block
            continue
        if end > len(data) or end - pos > left_in_block or zlib.crc32(data[pos + 6 : end]) != checksum:
            return  # torn by the kill, or never written whole
        yield kind, data[pos + CHUNK_HEADER : end]
        pos = end


def records(path: Path) -> Iterator[Any]:
    """Every whole record of one `.wandb` file, as W&B's `Record` protobuf messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != HEADER:
        return
    pending = b""
    for kind, payload in chunks(data):
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def held_offline(wandb_dir: Path, run_id: str) -> Held:
    """What the earlier offline folders of W&B run `run_id` under `wandb_dir` hold."""
    held = Held()
    for path in sorted(wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {item_key(item): item.value_json for item in record.history.item}
                if "epoch" in row:
                    held.epochs.add(int(json.loads(row["epoch"])))
            elif kind == "summary":
                keys = [item_key(item) for item in record.summary.update]
                held.summary |= any(key.startswith(SUMMARY_PREFIX) for key in keys)
    return held


def set_aside_empty(wandb_dir: Path, run_id: str) -> list[Path]:
    """Rename each earlier offline folder of run `run_id` whose `.wandb` file holds no whole run record
    (its process was killed before the service wrote one) to `empty-<name>`, and return the new paths.
    Such a file holds nothing to upload, and `wandb sync` of a set of folders that includes it stops
    ("error getting next record: EOF"); `wandb sync <wandb dir>` skips folders not named offline-*."""
    moved = []
    for folder in sorted(wandb_dir.glob(f"offline-run-*-{run_id}")):
        path = folder / f"run-{run_id}.wandb"
        if path.is_file() and not any(r.WhichOneof("record_type") == "run" for r in records(path)):
            moved.append(folder.rename(folder.with_name(f"empty-{folder.name}")))
    return moved


def held_online(handle: Any) -> Held:
    """What the server holds of a resumed online W&B run (`handle`: the run wandb.init returned)."""
    if not handle.resumed:
        return Held()
    first_missing = handle.step  # the step after the server's last one
    summary = any(key.startswith(SUMMARY_PREFIX) for key in list(handle.summary.keys()))  # no __iter__
    return Held(set(range(first_missing)), summary)
